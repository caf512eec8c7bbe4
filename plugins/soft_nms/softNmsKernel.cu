// softNmsLaunch: the workspace layout and the two kernel launches (kernels: softNmsKernels.cuh).
#include "softNmsKernel.h"
#include "softNmsKernels.cuh"

namespace m2det
{

cudaError_t softNmsLaunch(void const* boxes, void const* scores, bool scoresHalf, int32_t B, int32_t A, int32_t C,
    SoftNmsParams const& p, void* workspace, size_t workspaceBytes, int32_t* num, float* outBoxes,
    float* outScores, int32_t* outClasses, cudaStream_t stream)
{
    if (boxes == nullptr || scores == nullptr || num == nullptr || outBoxes == nullptr || outScores == nullptr
        || outClasses == nullptr || B < 1 || softNmsCheck(p, A, C, true) != nullptr)
        return cudaErrorInvalidValue;
    size_t const needed = softNmsWorkspaceSize(B, A, C, p);
    if (workspace == nullptr || workspaceBytes < needed)
        return cudaErrorInvalidValue;

    kernels::ClassLists lists{};
    lists.keepCap = static_cast<int32_t>(softNmsKeepCapacity(p, A));
    size_t const entries = static_cast<size_t>(B) * C * lists.keepCap;
    auto* ws = static_cast<char*>(workspace);
    lists.scores = reinterpret_cast<float*>(ws);
    ws += softNmsAlign(entries * sizeof(float));
    lists.anchors = reinterpret_cast<int32_t*>(ws);
    ws += softNmsAlign(entries * sizeof(int32_t));
    lists.counts = reinterpret_cast<int32_t*>(ws);

    int32_t const maxCand = p.max_candidates < A ? p.max_candidates : A;
    auto const* boxData = static_cast<float const*>(boxes);
    dim3 const classGrid(static_cast<unsigned>(B) * static_cast<unsigned>(C));
    dim3 const classBlock(static_cast<unsigned>(kernels::classThreads(maxCand)));
    if (scoresHalf)
        kernels::softNmsClassKernel<true><<<classGrid, classBlock, 0, stream>>>(boxData, scores, A, C, p, maxCand, lists);
    else
        kernels::softNmsClassKernel<false><<<classGrid, classBlock, 0, stream>>>(boxData, scores, A, C, p, maxCand, lists);
    kernels::softNmsMergeKernel<<<B, kernels::kMergeThreads, 0, stream>>>(
        boxData, A, C, p.max_detections, lists, num, outBoxes, outScores, outClasses);
    return cudaGetLastError();
}

} // namespace m2det
