// m2det::Detector — run M2Det on BGR images from C++, through one of two backends:
//   TensorRT: a plan built by m2det-build from an NMS graph (TensorRT 10 and 11, a CUDA GPU);
//   OpenVINO: an ONNX file written by m2det-export (raw graph: soft-NMS on the host by the C++
//             reference of plugins/soft_nms, bit-identical to m2det.nms; or an onnx-hard NMS graph),
//             on the CPU.
//
// Preprocessing is the project's one definition: resize to SxS (bilinear, as cv::resize
// INTER_LINEAR; no letterbox), BGR float32 0-255, NCHW. Mean subtraction is inside the model.
// Detections come back in pixels of the original image.
// Tensor names, the plugin's name and the metadata keys are those of m2det/contract.h
// (M2DET_INPUT_NAME, M2DET_NMS_OUTPUT_*, M2DET_PLUGIN_NAME, ...), the C++ mirror of
// m2det/contract.py.
#pragma once

#include "m2det/contract.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef M2DET_WITH_OPENCV
#include <opencv2/core.hpp>
#endif

namespace m2det
{

//! Every failure (missing file, TensorRT or CUDA error, bad input) is reported as this exception;
//! what() is one line that says what went wrong.
class Error : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};

//! One detection, box corners in pixels of the original image.
struct Detection
{
    float x1{0.F};
    float y1{0.F};
    float x2{0.F};
    float y2{0.F};
    float score{0.F};
    int32_t classId{0}; //!< contiguous foreground label (0 = first non-background class)
};

//! A borrowed BGR 8-bit image: rows of `width * 3` bytes, `stride` bytes apart.
struct ImageView
{
    uint8_t const* data{nullptr};
    int32_t width{0};
    int32_t height{0};
    std::size_t stride{0}; //!< bytes per row; 0 means width * 3
};

//! What runs the model file.
enum class Backend : int32_t
{
    kAuto = 0,     //!< by the file name: ".onnx" -> kOpenVINO, anything else (a plan) -> kTensorRT
    kTensorRT = 1, //!< a TensorRT plan of an NMS graph, on a CUDA GPU
    kOpenVINO = 2, //!< an exported ONNX file (raw or onnx-hard NMS graph), on the CPU
};

//! Soft-NMS of a raw graph's boxes and scores on the host (OpenVINO backend). The defaults are
//! the `official` preset of m2det.nms (what m2det-detect and the Python runners use by default);
//! the fields are the M2DET_ATTR_* attributes of m2det/contract.h, semantics in
//! plugins/soft_nms/README.md.
struct NmsOptions
{
    float scoreThreshold{0.1F}; //!< candidates need score > scoreThreshold
    float iouThreshold{0.3F};   //!< Nt of hard and linear soft-NMS
    float sigma{0.45F};         //!< gaussian: w = exp(-iou^2 / sigma)
    float minScore{0.001F};     //!< a decayed candidate is dropped below this
    int32_t method{1};          //!< 0 hard, 1 linear, 2 gaussian
    int32_t maxCandidates{M2DET_MAX_CANDIDATES}; //!< top-k per (image, class) before NMS
    int32_t keepPerClass{50};   //!< emissions per (image, class); <= 0: no limit
    int32_t maxDetections{0};   //!< per image after the class merge; 0: no cap
};

struct DetectorOptions
{
    //! Which backend runs the file (default: by its name).
    Backend backend{Backend::kAuto};

    // ----- TensorRT
    //! The soft-NMS plugin library (libm2det_plugins.so). Empty: the plugin must already be
    //! registered, or serialized into a version-compatible plan.
    std::string pluginLibrary;
    //! CUDA device to run on.
    int32_t device{0};
    //! Allow a version-compatible plan's embedded lean runtime / plugin code to run.
    bool allowEngineHostCode{false};

    // ----- OpenVINO
    //! Inference precision of what the file leaves in floating point: "f32" (results equal ONNX
    //! Runtime's), "bf16", or "auto" (OpenVINO's choice: bf16 on CPUs with bf16 instructions).
    std::string inferencePrecision{"f32"};
    //! CPU threads; 0: OpenVINO's default (all cores).
    int32_t threads{0};
    //! Host soft-NMS of a raw graph (an NMS graph uses the NMS it was exported with).
    NmsOptions nms;
};

class DetectorBackend;

//! Loads a plan or ONNX file once; detect() may be called repeatedly (not concurrently from
//! several threads). A moved-from Detector holds nothing: every method except destruction and
//! assignment throws std::logic_error.
class Detector
{
public:
    //! `modelPath`: a TensorRT plan or an ONNX file (options.backend, by default by its name).
    explicit Detector(std::string const& modelPath, DetectorOptions const& options = {});
    ~Detector();
    Detector(Detector&&) noexcept;
    Detector& operator=(Detector&&) noexcept;
    Detector(Detector const&) = delete;
    Detector& operator=(Detector const&) = delete;

    //! One image -> its detections (sorted by score, descending).
    std::vector<Detection> detect(ImageView const& image);
    //! A batch (size within minBatch()..maxBatch()) -> detections per image.
    std::vector<std::vector<Detection>> detect(std::vector<ImageView> const& images);

#ifdef M2DET_WITH_OPENCV
    //! `image` must be CV_8UC3 (BGR); resized with cv::resize INTER_LINEAR like the Python side.
    std::vector<Detection> detect(cv::Mat const& image);
    std::vector<std::vector<Detection>> detect(std::vector<cv::Mat> const& images);
#endif

    int32_t inputSize() const;   //!< S of the [B,3,S,S] input
    int32_t minBatch() const;    //!< the plan's optimization profile; the ONNX file's batch
    int32_t maxBatch() const;
    int32_t maxDetections() const; //!< K of the NMS outputs (raw graph: most an image can get)
    //! What runs the model, e.g. "tensorrt", "openvino-f32", "openvino-auto(bf16)".
    std::string backendName() const;

private:
    //! The loaded model; throws std::logic_error naming `method` when this Detector was moved from.
    DetectorBackend& impl(char const* method) const;
    std::unique_ptr<DetectorBackend> mImpl;
};

//! Bilinear resize of a BGR 8-bit image to SxS followed by HWC->CHW float conversion, written to
//! `out` (3*S*S floats). With OpenCV: cv::resize INTER_LINEAR itself. Without: the same
//! arithmetic (11-bit fixed-point weights, OpenCV's vectorized vertical rounding), equal to
//! OpenCV's result bit for bit (checked against the opencv-python of m2det.preprocess).
void preprocessBgr(ImageView const& image, int32_t size, float* out);

} // namespace m2det
