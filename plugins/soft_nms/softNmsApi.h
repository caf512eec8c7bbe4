/*
 * C ABI of the soft-NMS kernel and its C++ reference, independent of TensorRT (for ctypes, the
 * benchmarks and the C++ runner).  Layouts (row-major, EfficientNMS convention):
 *   boxes  [B,A,4] float32 x1,y1,x2,y2      scores [B,A,C] float32 or float16 (scoresIsHalf)
 *   num    [B]     int32                    outBoxes [B,K,4] float32
 *   outScores [B,K] float32                 outClasses [B,K] int32      K = params->max_detections
 * Entries past num[b] are zero.
 *
 * libm2det_softnms_cpu.so exports the m2det_soft_nms_check / _workspace_size / _cpu / _last_error
 * functions and needs no CUDA at load time; libm2det_softnms.so exports all of them plus
 * m2det_soft_nms_cuda.
 *
 * Errors: no function lets a C++ exception escape.  A failing call returns its error value (below)
 * and leaves a one-line message for m2det_soft_nms_last_error() on the calling thread.
 */
#ifndef M2DET_SOFT_NMS_API_H
#define M2DET_SOFT_NMS_API_H

#include "softNmsParams.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes of m2det_soft_nms_cpu. */
#define M2DET_SOFT_NMS_OK 0
#define M2DET_SOFT_NMS_INVALID_ARGUMENT 1
#define M2DET_SOFT_NMS_INTERNAL_ERROR 2

/* The message of the last failed call of this API on the calling thread ("" if none failed yet).
 * Valid until the next failing call on this thread. */
const char* m2det_soft_nms_last_error(void);

/* NULL when `params` can run on A anchors and C classes, else a static one-line reason.
 * forCuda != 0 adds the kernel's limits. */
const char* m2det_soft_nms_check(const M2DetSoftNmsParams* params, int64_t A, int64_t C, int forCuda);

/* Workspace bytes m2det_soft_nms_cuda needs for this problem; 0 (never a valid size) when the
 * arguments are invalid or the size does not fit in size_t. */
size_t m2det_soft_nms_workspace_size(int64_t B, int64_t A, int64_t C, const M2DetSoftNmsParams* params);

/* The C++ reference on host memory.  Returns M2DET_SOFT_NMS_OK, M2DET_SOFT_NMS_INVALID_ARGUMENT
 * (NULL pointers, B < 1, parameters m2det_soft_nms_check rejects) or M2DET_SOFT_NMS_INTERNAL_ERROR
 * (an exception inside, e.g. out of memory). */
int m2det_soft_nms_cpu(const void* boxes, const void* scores, int scoresIsHalf, int B, int A, int C,
    const M2DetSoftNmsParams* params, int32_t* num, float* outBoxes, float* outScores, int32_t* outClasses);

/* The CUDA kernel on device memory, enqueued on `stream` (a cudaStream_t; NULL = legacy default
 * stream) without synchronising.  `workspace` holds at least m2det_soft_nms_workspace_size bytes.
 * Returns a cudaError_t code: 0 = success, cudaErrorInvalidValue for invalid arguments,
 * cudaErrorUnknown for an exception inside, else the launch status. */
int m2det_soft_nms_cuda(const void* boxes, const void* scores, int scoresIsHalf, int B, int A, int C,
    const M2DetSoftNmsParams* params, void* workspace, size_t wsBytes, int32_t* num, float* outBoxes,
    float* outScores, int32_t* outClasses, void* stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* M2DET_SOFT_NMS_API_H */
