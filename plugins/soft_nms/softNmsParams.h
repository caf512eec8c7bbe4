/*
 * Soft-NMS parameters: the 8 attributes of the M2Det_SoftNMS_TRT node (also the C ABI struct),
 * their validation and the workspace the CUDA path needs.  Plain C/C++: no CUDA, no TensorRT.
 */
#ifndef M2DET_SOFT_NMS_PARAMS_H
#define M2DET_SOFT_NMS_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Method codes of the `method` attribute. */
enum M2DetSoftNmsMethod
{
    M2DET_SOFT_NMS_HARD = 0,
    M2DET_SOFT_NMS_LINEAR = 1,
    M2DET_SOFT_NMS_GAUSSIAN = 2
};

/* Largest max_candidates / max_detections the CUDA kernel (and so the plugin) accepts. */
#define M2DET_SOFT_NMS_MAX_CANDIDATES 4096
#define M2DET_SOFT_NMS_MAX_DETECTIONS 4096

/* The node attributes.  Semantics: plugins/soft_nms/README.md. */
typedef struct M2DetSoftNmsParams
{
    float score_threshold; /* candidates need score > score_threshold (strict) */
    float iou_threshold;   /* Nt of hard and linear */
    float sigma;           /* gaussian: w = exp(-iou^2 / sigma) */
    float min_score;       /* a decayed candidate is dropped when its score < min_score */
    int32_t method;        /* M2DetSoftNmsMethod */
    int32_t max_candidates; /* top-k per (image, class) before NMS, >= 1 */
    int32_t keep_per_class; /* emissions per (image, class); <= 0: no limit */
    int32_t max_detections; /* K, detections per image after the class merge, >= 1 */
} M2DetSoftNmsParams;

#ifdef __cplusplus
} /* extern "C" */

#include <cmath>

namespace m2det
{

using SoftNmsParams = M2DetSoftNmsParams;

//! Why `p` cannot run on boxes [B,A,4] / scores [B,A,C], or nullptr when it can.  `forCuda` adds the
//! kernel's limits (max_candidates and max_detections <= 4096).
inline char const* softNmsCheck(SoftNmsParams const& p, int64_t numAnchors, int64_t numClasses, bool forCuda)
{
    if (p.method < M2DET_SOFT_NMS_HARD || p.method > M2DET_SOFT_NMS_GAUSSIAN)
        return "method must be 0 (hard), 1 (linear) or 2 (gaussian)";
    if (!std::isfinite(p.score_threshold) || !std::isfinite(p.iou_threshold) || !std::isfinite(p.min_score))
        return "score_threshold, iou_threshold and min_score must be finite";
    if (p.method == M2DET_SOFT_NMS_GAUSSIAN && !(p.sigma > 0.0F && std::isfinite(p.sigma)))
        return "gaussian soft-NMS needs a finite sigma > 0";
    if (p.max_candidates < 1)
        return "max_candidates must be >= 1";
    if (p.max_detections < 1)
        return "max_detections must be >= 1";
    if (forCuda && p.max_candidates > M2DET_SOFT_NMS_MAX_CANDIDATES)
        return "max_candidates must be <= 4096 for the CUDA kernel";
    if (forCuda && p.max_detections > M2DET_SOFT_NMS_MAX_DETECTIONS)
        return "max_detections must be <= 4096 for the CUDA kernel";
    if (numAnchors < 1 || numClasses < 1)
        return "boxes/scores need at least one anchor and one class";
    if (numAnchors * numClasses > int64_t{0x7FFFFFFF})
        return "numAnchors * numClasses must be < 2^31";
    return nullptr;
}

//! Most emissions one (image, class) can produce: min(keep_per_class (if > 0), max_candidates, A).
inline int64_t softNmsKeepCapacity(SoftNmsParams const& p, int64_t numAnchors)
{
    int64_t cap = p.max_candidates < numAnchors ? p.max_candidates : numAnchors;
    if (p.keep_per_class > 0 && p.keep_per_class < cap)
        cap = p.keep_per_class;
    return cap;
}

//! Bytes rounded up to the 256-byte alignment every workspace section gets.
inline size_t softNmsAlign(size_t bytes)
{
    return (bytes + 255U) & ~size_t{255U};
}

//! Workspace of the CUDA path for boxes [B,A,4] / scores [B,A,C]: per (image, class) the emitted
//! (score, anchor) pairs and their count.
inline size_t softNmsWorkspaceSize(int64_t batch, int64_t numAnchors, int64_t numClasses, SoftNmsParams const& p)
{
    auto const lists = static_cast<size_t>(batch * numClasses);
    auto const entries = lists * static_cast<size_t>(softNmsKeepCapacity(p, numAnchors));
    return softNmsAlign(entries * sizeof(float)) + softNmsAlign(entries * sizeof(int32_t))
        + softNmsAlign(lists * sizeof(int32_t));
}

} // namespace m2det
#endif /* __cplusplus */

#endif /* M2DET_SOFT_NMS_PARAMS_H */
