// CUDA part of the C ABI: m2det_soft_nms_cuda checks its arguments (reasons go to
// m2det_soft_nms_last_error) and forwards to softNmsLaunch, inside the exception boundary.
#include "softNmsApi.h"
#include "softNmsApiBoundary.h"
#include "softNmsKernel.h"

#include <string>

extern "C" int m2det_soft_nms_cuda(const void* boxes, const void* scores, int scoresIsHalf, int B, int A, int C,
    const M2DetSoftNmsParams* params, void* workspace, size_t wsBytes, int32_t* num, float* outBoxes,
    float* outScores, int32_t* outClasses, void* stream)
{
    char const* const function = __func__;
    auto const invalid = static_cast<int>(cudaErrorInvalidValue);
    return m2det::apiGuard<int>(function, static_cast<int>(cudaErrorUnknown), [&]() -> int {
        if (boxes == nullptr || scores == nullptr || num == nullptr || outBoxes == nullptr || outScores == nullptr
            || outClasses == nullptr || params == nullptr)
            return m2det::apiFail(function, "a pointer argument is NULL", invalid);
        if (B < 1)
            return m2det::apiFail(function, "the batch must be >= 1", invalid);
        if (char const* why = m2det::softNmsCheck(*params, A, C, true))
            return m2det::apiFail(function, why, invalid);
        if (!m2det::softNmsWorkspaceFits(B, A, C, *params))
            return m2det::apiFail(function, "the workspace for this batch does not fit in size_t", invalid);
        size_t const needed = m2det::softNmsWorkspaceSize(B, A, C, *params);
        if (workspace == nullptr || wsBytes < needed)
        {
            std::string const why = "the workspace needs " + std::to_string(needed) + " bytes, got "
                + (workspace == nullptr ? std::string("NULL") : std::to_string(wsBytes));
            return m2det::apiFail(function, why.c_str(), invalid);
        }
        cudaError_t const status = m2det::softNmsLaunch(boxes, scores, scoresIsHalf != 0, B, A, C, *params,
            workspace, wsBytes, num, outBoxes, outScores, outClasses, static_cast<cudaStream_t>(stream));
        if (status != cudaSuccess)
            return m2det::apiFail(function, cudaGetErrorString(status), static_cast<int>(status));
        return 0;
    });
}
