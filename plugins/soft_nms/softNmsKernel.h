/*
 * CUDA soft-NMS: per (image, class) candidate selection and the emission loop, then the class
 * merge into EfficientNMS-style outputs.  Design: README.md, "Kernel design".
 */
#ifndef M2DET_SOFT_NMS_KERNEL_H
#define M2DET_SOFT_NMS_KERNEL_H

#include "softNmsParams.h"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace m2det
{

//! Enqueue soft-NMS of boxes [B,A,4] float32 and scores [B,A,C] (float32, or float16 when
//! `scoresHalf`) on `stream`, writing num [B] int32, outBoxes [B,K,4], outScores [B,K] float32 and
//! outClasses [B,K] int32 (K = p.max_detections; padding zeroed).  All pointers are device memory;
//! `workspace` holds softNmsWorkspaceSize(B, A, C, p) bytes.  Never synchronises.  Returns
//! cudaErrorInvalidValue for arguments softNmsCheck(…, forCuda=true) rejects, else the launch status.
cudaError_t softNmsLaunch(void const* boxes, void const* scores, bool scoresHalf, int32_t B, int32_t A, int32_t C,
    SoftNmsParams const& p, void* workspace, size_t workspaceBytes, int32_t* num, float* outBoxes,
    float* outScores, int32_t* outClasses, cudaStream_t stream);

} // namespace m2det

#endif // M2DET_SOFT_NMS_KERNEL_H
