/*
 * TensorRT IPluginV3 plugin M2DET_PLUGIN_NAME, version M2DET_PLUGIN_VERSION, namespace
 * M2DET_PLUGIN_NAMESPACE (m2det/contract.h): soft-NMS of boxes [B,A,4] float32 and scores [B,A,C]
 * float32|float16 into the NMS graph's EfficientNMS-style outputs [B,1] int32, [B,K,4] float32,
 * [B,K] float32, [B,K] int32 (K = max_detections).  Attributes: README.md; semantics:
 * docs/design.md §2.
 */
#ifndef M2DET_SOFT_NMS_PLUGIN_H
#define M2DET_SOFT_NMS_PLUGIN_H

#include "softNmsParams.h"

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace m2det
{

class SoftNmsPlugin : public nvinfer1::IPluginV3,
                      public nvinfer1::IPluginV3OneCore,
                      public nvinfer1::IPluginV3OneBuild,
                      public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit SoftNmsPlugin(SoftNmsParams const& params);
    SoftNmsPlugin(SoftNmsPlugin const& other);
    SoftNmsPlugin& operator=(SoftNmsPlugin const&) = delete;
    ~SoftNmsPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    SoftNmsParams mParams;
    std::vector<nvinfer1::PluginField> mFields; // views of mParams, rebuilt by getFieldsToSerialize
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class SoftNmsPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    SoftNmsPluginCreator();

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! Reads the 8 attributes from `fc` over softNmsDefaultParams() (softNmsParams.h); returns an
//! error message or "" when valid.
std::string softNmsParamsFromFields(nvinfer1::PluginFieldCollection const* fc, SoftNmsParams& params);

} // namespace m2det

#endif // M2DET_SOFT_NMS_PLUGIN_H
