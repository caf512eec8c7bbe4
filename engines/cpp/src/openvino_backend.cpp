// The OpenVINO backend of m2det::Detector: an ONNX file written by m2det-export, compiled for the
// CPU. A raw graph's boxes [B,A,4] and scores [B,A,C] go through the C++ soft-NMS reference of
// plugins/soft_nms (bit-identical to m2det.nms, which the Python runners use); an onnx-hard NMS
// graph's outputs (m2det/contract.h, EfficientNMS layout) are read as they are. A plugin NMS graph
// needs TensorRT and is refused. Every failure throws m2det::Error with one line.
#include "backend.h"
#include "m2det/contract.h"
#include "m2det/detector.h"
#include "softNmsReference.h"

#include <openvino/openvino.hpp>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

namespace m2det
{
namespace
{

//! The first line of an OpenVINO exception message (they run to several lines of context).
std::string firstLine(std::exception const& e)
{
    std::string const text = e.what();
    std::size_t start = 0;
    while (start < text.size())
    {
        std::size_t end = text.find('\n', start);
        end = end == std::string::npos ? text.size() : end;
        std::string line = text.substr(start, end - start);
        bool const context = line.rfind("Exception from", 0) == 0 || line.rfind("Check '", 0) == 0;
        if (!line.empty() && !context)
        {
            return line.substr(0, 300);
        }
        start = end + 1;
    }
    return text.substr(0, 300);
}

//! The file's m2det.<key> metadata (OpenVINO keeps ONNX metadata_props in rt_info "framework").
std::string metadata(ov::Model const& model, char const* key, std::string const& fallback = {})
{
    std::string const name = std::string(M2DET_META_PREFIX) + key;
    if (!model.has_rt_info("framework", name))
    {
        return fallback;
    }
    return model.get_rt_info<std::string>("framework", name);
}

ov::element::Type precisionType(std::string const& precision)
{
    if (precision == "f32")
    {
        return ov::element::f32;
    }
    if (precision == "bf16")
    {
        return ov::element::bf16;
    }
    throw Error("m2det: unknown OpenVINO inference precision '" + precision + "' (f32, bf16 or auto)");
}

SoftNmsParams softNmsParams(NmsOptions const& o, int32_t numAnchors, int32_t numClasses)
{
    SoftNmsParams p{o.scoreThreshold, o.iouThreshold, o.sigma, o.minScore, o.method, o.maxCandidates,
        o.keepPerClass, o.maxDetections};
    if (p.max_detections == 0) // no cap: the most an image can emit (m2det.nms's convention)
    {
        p.max_detections = static_cast<int32_t>(numClasses * softNmsKeepCapacity(p, numAnchors));
    }
    if (char const* why = softNmsCheck(p, numAnchors, numClasses, false))
    {
        throw Error(std::string("m2det: invalid NMS options: ") + why);
    }
    return p;
}

class OpenVINOBackend final : public DetectorBackend
{
public:
    OpenVINOBackend(std::string const& path, DetectorOptions const& options)
        : mOptions(options)
    {
        if (!std::ifstream(path).good())
        {
            throw Error("m2det: ONNX file not found: " + path);
        }
        if (options.threads < 0)
        {
            throw Error("m2det: threads must be >= 0 (0: OpenVINO's default)");
        }
        if (options.inferencePrecision != "auto")
        {
            precisionType(options.inferencePrecision); // an unknown name fails before loading
        }
        std::shared_ptr<ov::Model> model;
        try
        {
            model = mCore.read_model(path);
        }
        catch (std::exception const& e)
        {
            if (std::string(e.what()).find(M2DET_PLUGIN_NAME) != std::string::npos)
            {
                throw Error("m2det: " + path + " contains the TensorRT plugin op " M2DET_PLUGIN_NAME
                            ", which OpenVINO cannot run: export with --nms-graph none or onnx-hard");
            }
            throw Error("m2det: OpenVINO cannot read " + path + ": " + firstLine(e));
        }
        inspect(*model, path);
        ov::AnyMap props{ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
        if (options.threads > 0)
        {
            props.emplace(ov::inference_num_threads(options.threads));
        }
        if (options.inferencePrecision != "auto")
        {
            props.emplace(ov::hint::inference_precision(precisionType(options.inferencePrecision)));
        }
        try
        {
            mCompiled = mCore.compile_model(model, "CPU", props);
            mUsedPrecision = mCompiled.get_property(ov::hint::inference_precision).get_type_name();
            mRequest = mCompiled.create_infer_request();
        }
        catch (std::exception const& e)
        {
            throw Error("m2det: OpenVINO cannot compile " + path + ": " + firstLine(e));
        }
        mInput.resize(static_cast<std::size_t>(std::min(mMaxBatch, kBufferedBatch)) * imageFloats());
    }

    int32_t inputSize() const override
    {
        return mSize;
    }
    int32_t minBatch() const override
    {
        return mMinBatch;
    }
    int32_t maxBatch() const override
    {
        return mMaxBatch;
    }
    int32_t maxDetections() const override
    {
        return mMaxDetections;
    }
    std::string name() const override
    {
        std::string const& asked = mOptions.inferencePrecision;
        bool const differs = asked == "auto" || mUsedPrecision != asked;
        return "openvino-" + asked + (differs ? "(" + mUsedPrecision + ")" : std::string());
    }
    void checkBatch(std::size_t n) const override
    {
        if (n < static_cast<std::size_t>(mMinBatch) || n > static_cast<std::size_t>(mMaxBatch))
        {
            throw Error("m2det: batch " + std::to_string(n) + " is outside the ONNX file's batch "
                + std::to_string(mMinBatch) + ".." + std::to_string(mMaxBatch));
        }
    }
    float* inputHost(int32_t b) override
    {
        std::size_t const need = (static_cast<std::size_t>(b) + 1U) * imageFloats();
        if (mInput.size() < need)
        {
            mInput.resize(need);
        }
        return mInput.data() + static_cast<std::size_t>(b) * imageFloats();
    }

    std::vector<std::vector<Detection>> run(std::vector<std::array<float, 2>> const& sizes) override
    {
        auto const batch = sizes.size();
        try
        {
            ov::Tensor input(ov::element::f32, ov::Shape{batch, 3, static_cast<std::size_t>(mSize),
                static_cast<std::size_t>(mSize)}, mInput.data());
            mRequest.set_tensor(M2DET_INPUT_NAME, input);
            mRequest.infer();
        }
        catch (std::exception const& e)
        {
            throw Error("m2det: OpenVINO inference failed: " + firstLine(e));
        }
        return mRaw ? hostNms(sizes) : nmsOutputs(sizes);
    }

private:
    //! Batches up to this size get their input buffer at load time; larger ones grow it on use.
    static constexpr int32_t kBufferedBatch = 8;

    std::size_t imageFloats() const
    {
        return 3U * static_cast<std::size_t>(mSize) * static_cast<std::size_t>(mSize);
    }

    //! Graph kind, input size and batch from the file (its outputs, input shape and metadata).
    void inspect(ov::Model const& model, std::string const& path)
    {
        if (metadata(model, M2DET_META_CONFIG).empty())
        {
            throw Error("m2det: " + path + " has no m2det metadata (not written by m2det-export)");
        }
        std::vector<std::string> names;
        for (auto const& output : model.outputs())
        {
            names.push_back(output.get_any_name());
        }
        std::vector<std::string> const raw{M2DET_RAW_OUTPUT_BOXES, M2DET_RAW_OUTPUT_SCORES};
        std::vector<std::string> const nms{
            M2DET_NMS_OUTPUT_NUM, M2DET_NMS_OUTPUT_BOXES, M2DET_NMS_OUTPUT_SCORES, M2DET_NMS_OUTPUT_CLASSES};
        if (names != raw && names != nms)
        {
            throw Error("m2det: " + path + ": unexpected outputs (not a raw or onnx-hard NMS graph)");
        }
        mRaw = names == raw;
        if (model.inputs().size() != 1 || model.input().get_any_name() != M2DET_INPUT_NAME)
        {
            throw Error("m2det: " + path + ": expected one input '" M2DET_INPUT_NAME "'");
        }
        ov::PartialShape const in = model.input().get_partial_shape();
        if (in.rank().is_dynamic() || in.rank().get_length() != 4 || in[2].is_dynamic() || in[3].is_dynamic()
            || in[2].get_length() != in[3].get_length() || in[1] != ov::Dimension(3))
        {
            throw Error("m2det: " + path + ": input '" M2DET_INPUT_NAME "' is not [B,3,S,S]");
        }
        mSize = static_cast<int32_t>(in[2].get_length());
        if (in[0].is_static())
        {
            mMinBatch = mMaxBatch = static_cast<int32_t>(in[0].get_length());
        }
        if (mRaw)
        {
            // OpenVINO's own shape inference may leave A of the scores dynamic: take A from
            // whichever output has it static, C from the scores; both are checked on every run.
            ov::PartialShape const scores = model.output(M2DET_RAW_OUTPUT_SCORES).get_partial_shape();
            ov::PartialShape const boxes = model.output(M2DET_RAW_OUTPUT_BOXES).get_partial_shape();
            if (scores.rank().is_dynamic() || scores.rank().get_length() != 3 || scores[2].is_dynamic()
                || boxes.rank().is_dynamic() || boxes.rank().get_length() != 3 || boxes[2] != ov::Dimension(4))
            {
                throw Error("m2det: " + path + ": outputs are not boxes [B,A,4] and scores [B,A,C]");
            }
            ov::Dimension const anchors = boxes[1].is_static() ? boxes[1] : scores[1];
            if (anchors.is_dynamic())
            {
                throw Error("m2det: " + path + ": the number of anchors A is not static");
            }
            mAnchors = static_cast<int32_t>(anchors.get_length());
            mClasses = static_cast<int32_t>(scores[2].get_length());
            mNms = softNmsParams(mOptions.nms, mAnchors, mClasses);
            mMaxDetections = mNms.max_detections;
        }
        else
        {
            ov::PartialShape const k = model.output(M2DET_NMS_OUTPUT_SCORES).get_partial_shape();
            if (k.rank().is_dynamic() || k.rank().get_length() != 2 || k[1].is_dynamic())
            {
                throw Error("m2det: " + path + ": " M2DET_NMS_OUTPUT_SCORES " is not [B,K]");
            }
            mMaxDetections = static_cast<int32_t>(k[1].get_length());
        }
    }

    std::vector<std::vector<Detection>> hostNms(std::vector<std::array<float, 2>> const& sizes)
    {
        ov::Tensor const boxes = mRequest.get_tensor(M2DET_RAW_OUTPUT_BOXES);
        ov::Tensor const scores = mRequest.get_tensor(M2DET_RAW_OUTPUT_SCORES);
        auto const batch = sizes.size();
        auto const anchors = static_cast<std::size_t>(mAnchors);
        if (boxes.get_shape() != ov::Shape{batch, anchors, 4}
            || scores.get_shape() != ov::Shape{batch, anchors, static_cast<std::size_t>(mClasses)})
        {
            throw Error("m2det: unexpected output shapes " + boxes.get_shape().to_string() + " and "
                + scores.get_shape().to_string());
        }
        auto const perBoxes = static_cast<std::size_t>(mAnchors) * 4U;
        auto const perScores = static_cast<std::size_t>(mAnchors) * static_cast<std::size_t>(mClasses);
        std::vector<std::vector<Detection>> out(sizes.size());
        for (std::size_t b = 0; b < sizes.size(); ++b)
        {
            float const* bx = boxes.data<float const>() + b * perBoxes;
            float const* sc = scores.data<float const>() + b * perScores;
            float const w = sizes[b][0];
            float const h = sizes[b][1];
            for (SoftNmsCandidate const& c : softNmsImage(bx, sc, mAnchors, mClasses, mNms))
            {
                float const* box = bx + static_cast<std::size_t>(c.anchor) * 4U;
                out[b].push_back(Detection{box[0] * w, box[1] * h, box[2] * w, box[3] * h, c.score, c.classId});
            }
        }
        return out;
    }

    std::vector<std::vector<Detection>> nmsOutputs(std::vector<std::array<float, 2>> const& sizes)
    {
        ov::Tensor const num = mRequest.get_tensor(M2DET_NMS_OUTPUT_NUM);
        ov::Tensor const boxes = mRequest.get_tensor(M2DET_NMS_OUTPUT_BOXES);
        ov::Tensor const scores = mRequest.get_tensor(M2DET_NMS_OUTPUT_SCORES);
        ov::Tensor const classes = mRequest.get_tensor(M2DET_NMS_OUTPUT_CLASSES);
        auto const k = static_cast<std::size_t>(mMaxDetections);
        std::vector<std::vector<Detection>> out(sizes.size());
        for (std::size_t b = 0; b < sizes.size(); ++b)
        {
            auto const n = static_cast<std::size_t>(std::clamp(num.data<int32_t const>()[b], 0, mMaxDetections));
            float const w = sizes[b][0];
            float const h = sizes[b][1];
            for (std::size_t j = 0; j < n; ++j)
            {
                float const* box = boxes.data<float const>() + (b * k + j) * 4U;
                out[b].push_back(Detection{box[0] * w, box[1] * h, box[2] * w, box[3] * h,
                    scores.data<float const>()[b * k + j], classes.data<int32_t const>()[b * k + j]});
            }
        }
        return out;
    }

    DetectorOptions mOptions;
    ov::Core mCore;
    ov::CompiledModel mCompiled;
    ov::InferRequest mRequest;
    std::string mUsedPrecision;
    std::vector<float> mInput;
    bool mRaw{true};
    int32_t mSize{0};
    int32_t mMinBatch{1};
    int32_t mMaxBatch{std::numeric_limits<int32_t>::max()};
    int32_t mMaxDetections{0};
    int32_t mAnchors{0};
    int32_t mClasses{0};
    SoftNmsParams mNms{};
};

} // namespace

std::unique_ptr<DetectorBackend> makeOpenVINOBackend(std::string const& onnxPath, DetectorOptions const& options)
{
    return std::make_unique<OpenVINOBackend>(onnxPath, options);
}

} // namespace m2det
