// Stand-ins for the backends this build of the library leaves out (CMake options
// M2DET_WITH_TENSORRT / M2DET_WITH_OPENVINO): asking for one is a one-line m2det::Error.
#include "backend.h"

namespace m2det
{

#ifndef M2DET_HAVE_TENSORRT
std::unique_ptr<DetectorBackend> makeTensorRTBackend(std::string const& planPath, DetectorOptions const&)
{
    throw Error("m2det: " + planPath + ": this build of m2det_runtime has no TensorRT backend "
        "(configure with -DM2DET_WITH_TENSORRT=ON)");
}
#endif

#ifndef M2DET_HAVE_OPENVINO
std::unique_ptr<DetectorBackend> makeOpenVINOBackend(std::string const& onnxPath, DetectorOptions const&)
{
    throw Error("m2det: " + onnxPath + ": this build of m2det_runtime has no OpenVINO backend "
        "(configure with -DM2DET_WITH_OPENVINO=ON)");
}
#endif

} // namespace m2det
