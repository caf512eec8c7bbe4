#include "softNmsPlugin.h"
#include "softNmsKernel.h"

#include <cstring>
#include <exception>
#include <limits>

using namespace nvinfer1;

namespace m2det
{
namespace
{

constexpr char const* kPluginName = M2DET_PLUGIN_NAME;
constexpr char const* kPluginVersion = M2DET_PLUGIN_VERSION;
constexpr char const* kPluginNamespace = M2DET_PLUGIN_NAMESPACE;
constexpr int32_t kNbInputs = 2;
constexpr int32_t kNbOutputs = 4;

ILoggerFinder* gLoggerFinder = nullptr;

//! Logs "<plugin name>: <what>" as an error; called from noexcept methods, so it never throws.
void logError(char const* what) noexcept
{
    ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
    if (logger == nullptr)
        return;
    try
    {
        std::string const message = std::string(kPluginName) + ": " + what;
        logger->log(ILogger::Severity::kERROR, message.c_str());
    }
    catch (...)
    {
        logger->log(ILogger::Severity::kERROR, what); // no memory for the prefix
    }
}

//! Reads one numeric field (any int or float width TensorRT or the ONNX parser may pass) as T.
template <typename T>
bool readField(PluginField const& f, T& value)
{
    if (f.data == nullptr || f.length != 1)
        return false;
    switch (f.type)
    {
    case PluginFieldType::kFLOAT32: value = static_cast<T>(*static_cast<float const*>(f.data)); return true;
    case PluginFieldType::kFLOAT64: value = static_cast<T>(*static_cast<double const*>(f.data)); return true;
    case PluginFieldType::kINT32: value = static_cast<T>(*static_cast<int32_t const*>(f.data)); return true;
    case PluginFieldType::kINT64: value = static_cast<T>(*static_cast<int64_t const*>(f.data)); return true;
    default: return false;
    }
}

//! Field layout shared by the creator's field names and the plugin's serialization.
std::vector<PluginField> paramFields(SoftNmsParams const* p)
{
    auto ptr = [p](auto const& member) -> void const* { return p != nullptr ? &member : nullptr; };
    SoftNmsParams const dummy{};
    SoftNmsParams const& v = p != nullptr ? *p : dummy;
    return {
        PluginField(M2DET_ATTR_SCORE_THRESHOLD, ptr(v.score_threshold), PluginFieldType::kFLOAT32, 1),
        PluginField(M2DET_ATTR_IOU_THRESHOLD, ptr(v.iou_threshold), PluginFieldType::kFLOAT32, 1),
        PluginField(M2DET_ATTR_SIGMA, ptr(v.sigma), PluginFieldType::kFLOAT32, 1),
        PluginField(M2DET_ATTR_MIN_SCORE, ptr(v.min_score), PluginFieldType::kFLOAT32, 1),
        PluginField(M2DET_ATTR_METHOD, ptr(v.method), PluginFieldType::kINT32, 1),
        PluginField(M2DET_ATTR_MAX_CANDIDATES, ptr(v.max_candidates), PluginFieldType::kINT32, 1),
        PluginField(M2DET_ATTR_KEEP_PER_CLASS, ptr(v.keep_per_class), PluginFieldType::kINT32, 1),
        PluginField(M2DET_ATTR_MAX_DETECTIONS, ptr(v.max_detections), PluginFieldType::kINT32, 1),
    };
}

bool fitsInt32(int64_t v)
{
    return v >= 0 && v <= std::numeric_limits<int32_t>::max();
}

} // namespace

std::string softNmsParamsFromFields(PluginFieldCollection const* fc, SoftNmsParams& params)
{
    params = softNmsDefaultParams();
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        std::string const name = f.name != nullptr ? f.name : "";
        bool ok = true;
        if (name == M2DET_ATTR_SCORE_THRESHOLD)
            ok = readField(f, params.score_threshold);
        else if (name == M2DET_ATTR_IOU_THRESHOLD)
            ok = readField(f, params.iou_threshold);
        else if (name == M2DET_ATTR_SIGMA)
            ok = readField(f, params.sigma);
        else if (name == M2DET_ATTR_MIN_SCORE)
            ok = readField(f, params.min_score);
        else if (name == M2DET_ATTR_METHOD)
            ok = readField(f, params.method);
        else if (name == M2DET_ATTR_MAX_CANDIDATES)
            ok = readField(f, params.max_candidates);
        else if (name == M2DET_ATTR_KEEP_PER_CLASS)
            ok = readField(f, params.keep_per_class);
        else if (name == M2DET_ATTR_MAX_DETECTIONS)
            ok = readField(f, params.max_detections);
        else
            return "unknown attribute '" + name + "'";
        if (!ok)
            return "attribute '" + name + "' must be one int or float";
    }
    char const* why = softNmsCheck(params, 1, 1, true);
    return why != nullptr ? why : "";
}

SoftNmsPlugin::SoftNmsPlugin(SoftNmsParams const& params)
    : mParams(params)
{
}

SoftNmsPlugin::SoftNmsPlugin(SoftNmsPlugin const& other)
    : IPluginV3(other)
    , IPluginV3OneCore(other)
    , IPluginV3OneBuild(other)
    , IPluginV3OneRuntime(other)
    , mParams(other.mParams)
{
}

IPluginCapability* SoftNmsPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* SoftNmsPlugin::clone() noexcept
{
    try
    {
        return new SoftNmsPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(e.what());
        return nullptr;
    }
}

char const* SoftNmsPlugin::getPluginName() const noexcept
{
    return kPluginName;
}

char const* SoftNmsPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* SoftNmsPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t SoftNmsPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || in[0].desc.dims.nbDims != 3
        || in[1].desc.dims.nbDims != 3)
    {
        logError("expects inputs boxes [B,A,4] and scores [B,A,C] and 4 outputs");
        return 1;
    }
    return 0;
}

int32_t SoftNmsPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* /*inputTypes*/, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
        return 1;
    outputTypes[0] = DataType::kINT32;
    outputTypes[1] = DataType::kFLOAT;
    outputTypes[2] = DataType::kFLOAT;
    outputTypes[3] = DataType::kINT32;
    return 0;
}

int32_t SoftNmsPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || inputs[0].nbDims != 3 || inputs[1].nbDims != 3)
    {
        logError("expects inputs boxes [B,A,4] and scores [B,A,C]");
        return 1;
    }
    IDimensionExpr const* batch = inputs[0].d[0];
    IDimensionExpr const* k = exprBuilder.constant(mParams.max_detections);
    outputs[0].nbDims = 2;
    outputs[0].d[0] = batch;
    outputs[0].d[1] = exprBuilder.constant(1);
    outputs[1].nbDims = 3;
    outputs[1].d[0] = batch;
    outputs[1].d[1] = k;
    outputs[1].d[2] = exprBuilder.constant(4);
    for (int32_t i = 2; i < 4; ++i)
    {
        outputs[i].nbDims = 2;
        outputs[i].d[0] = batch;
        outputs[i].d[1] = k;
    }
    return 0;
}

bool SoftNmsPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0 || pos >= kNbInputs + kNbOutputs)
        return false;
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
        return false;
    switch (pos)
    {
    case 1: return d.type == DataType::kFLOAT || d.type == DataType::kHALF; // scores
    case 2:                                                                 // num_detections
    case 5: return d.type == DataType::kINT32;                              // detection_classes
    default: return d.type == DataType::kFLOAT; // boxes, detection_boxes, detection_scores
    }
}

int32_t SoftNmsPlugin::getNbOutputs() const noexcept
{
    return kNbOutputs;
}

size_t SoftNmsPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    if (nbInputs != kNbInputs || inputs[1].max.nbDims != 3)
        return 0;
    Dims const& s = inputs[1].max;
    return softNmsWorkspaceSize(s.d[0], s.d[1], s.d[2], mParams);
}

int32_t SoftNmsPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || in[0].dims.nbDims != 3 || in[1].dims.nbDims != 3)
    {
        logError("expects inputs boxes [B,A,4] and scores [B,A,C]");
        return 1;
    }
    Dims const& boxes = in[0].dims;
    Dims const& scores = in[1].dims;
    if (boxes.d[2] != 4 || boxes.d[0] != scores.d[0] || boxes.d[1] != scores.d[1] || !fitsInt32(scores.d[0])
        || !fitsInt32(scores.d[1]) || !fitsInt32(scores.d[2]))
    {
        logError("boxes must be [B,A,4] and scores [B,A,C] with the same B and A");
        return 1;
    }
    char const* why = softNmsCheck(mParams, scores.d[1], scores.d[2], true);
    if (why != nullptr)
    {
        logError(why);
        return 1;
    }
    return 0;
}

int32_t SoftNmsPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    Dims const& scores = inputDesc[1].dims;
    auto const B = static_cast<int32_t>(scores.d[0]);
    auto const A = static_cast<int32_t>(scores.d[1]);
    auto const C = static_cast<int32_t>(scores.d[2]);
    if (B == 0)
        return 0;
    cudaError_t const status = softNmsLaunch(inputs[0], inputs[1], inputDesc[1].type == DataType::kHALF, B, A, C,
        mParams, workspace, softNmsWorkspaceSize(B, A, C, mParams), static_cast<int32_t*>(outputs[0]),
        static_cast<float*>(outputs[1]), static_cast<float*>(outputs[2]), static_cast<int32_t*>(outputs[3]), stream);
    if (status != cudaSuccess)
    {
        logError(cudaGetErrorString(status));
        return 1;
    }
    return 0;
}

IPluginV3* SoftNmsPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

PluginFieldCollection const* SoftNmsPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mFields = paramFields(&mParams);
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
        return &mFieldCollection;
    }
    catch (std::exception const& e)
    {
        logError(e.what());
        return nullptr;
    }
}

SoftNmsPluginCreator::SoftNmsPluginCreator()
    : mFields(paramFields(nullptr))
{
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

IPluginV3* SoftNmsPluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        SoftNmsParams params{};
        std::string const why = softNmsParamsFromFields(fc, params);
        if (!why.empty())
        {
            logError(why.c_str());
            return nullptr;
        }
        return new SoftNmsPlugin(params);
    }
    catch (std::exception const& e)
    {
        logError(e.what());
        return nullptr;
    }
}

PluginFieldCollection const* SoftNmsPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

char const* SoftNmsPluginCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* SoftNmsPluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* SoftNmsPluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

} // namespace m2det

// Entry points TensorRT looks up when it loads a plugin library (IPluginRegistry::loadLibrary,
// trtexec --dynamicPlugins, BuilderConfig plugins_to_serialize).
extern "C" TENSORRTAPI void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    m2det::gLoggerFinder = finder;
}

// No exception may leave these C entry points: a failure to construct the creator (allocation)
// reports no creators.
extern "C" TENSORRTAPI nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    nbCreators = 0;
    try
    {
        static m2det::SoftNmsPluginCreator creator;
        static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
        nbCreators = 1;
        return creators;
    }
    catch (...)
    {
        return nullptr;
    }
}
