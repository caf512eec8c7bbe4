// CUDA part of the C ABI: m2det_soft_nms_cuda forwards to softNmsLaunch.
#include "softNmsApi.h"
#include "softNmsKernel.h"

extern "C" int m2det_soft_nms_cuda(const void* boxes, const void* scores, int scoresIsHalf, int B, int A, int C,
    const M2DetSoftNmsParams* params, void* workspace, size_t wsBytes, int32_t* num, float* outBoxes,
    float* outScores, int32_t* outClasses, void* stream)
{
    if (params == nullptr)
        return static_cast<int>(cudaErrorInvalidValue);
    return static_cast<int>(m2det::softNmsLaunch(boxes, scores, scoresIsHalf != 0, B, A, C, *params, workspace,
        wsBytes, num, outBoxes, outScores, outClasses, static_cast<cudaStream_t>(stream)));
}
