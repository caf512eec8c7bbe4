/*
 * Soft-NMS parameters: the 8 attributes of the plugin's node (M2DET_PLUGIN_NAME; also the C ABI
 * struct), their defaults, their validation and the workspace the CUDA path needs.  Plain C/C++:
 * no CUDA, no TensorRT.  Names, limits and defaults: m2det/contract.h.
 */
#ifndef M2DET_SOFT_NMS_PARAMS_H
#define M2DET_SOFT_NMS_PARAMS_H

#include "m2det/contract.h"

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

/* The node attributes, in the order of m2det/contract.h (float attributes, then int ones).
 * Semantics: plugins/soft_nms/README.md and docs/design.md §2. */
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

//! The values the plugin uses for attributes a node leaves out (M2DET_DEFAULT_* of contract.h).
inline SoftNmsParams softNmsDefaultParams()
{
    SoftNmsParams p{};
    p.score_threshold = M2DET_DEFAULT_SCORE_THRESHOLD;
    p.iou_threshold = M2DET_DEFAULT_IOU_THRESHOLD;
    p.sigma = M2DET_DEFAULT_SIGMA;
    p.min_score = M2DET_DEFAULT_MIN_SCORE;
    p.method = M2DET_DEFAULT_METHOD;
    p.max_candidates = M2DET_DEFAULT_MAX_CANDIDATES;
    p.keep_per_class = M2DET_DEFAULT_KEEP_PER_CLASS;
    p.max_detections = M2DET_DEFAULT_MAX_DETECTIONS;
    return p;
}

//! Why `p` cannot run on boxes [B,A,4] / scores [B,A,C], or nullptr when it can (a static string).
//! `forCuda` adds the kernel's limits (M2DET_MAX_CANDIDATES, M2DET_MAX_DETECTIONS).
inline char const* softNmsCheck(SoftNmsParams const& p, int64_t numAnchors, int64_t numClasses, bool forCuda)
{
    if (p.method < M2DET_SOFT_NMS_HARD || p.method > M2DET_SOFT_NMS_GAUSSIAN)
        return M2DET_ATTR_METHOD " must be 0 (hard), 1 (linear) or 2 (gaussian)";
    if (!std::isfinite(p.score_threshold) || !std::isfinite(p.iou_threshold) || !std::isfinite(p.min_score))
        return M2DET_ATTR_SCORE_THRESHOLD ", " M2DET_ATTR_IOU_THRESHOLD " and " M2DET_ATTR_MIN_SCORE " must be finite";
    if (p.method == M2DET_SOFT_NMS_GAUSSIAN && !(p.sigma > 0.0F && std::isfinite(p.sigma)))
        return "gaussian soft-NMS needs a finite " M2DET_ATTR_SIGMA " > 0";
    if (p.max_candidates < 1)
        return M2DET_ATTR_MAX_CANDIDATES " must be >= 1";
    if (p.max_detections < 1)
        return M2DET_ATTR_MAX_DETECTIONS " must be >= 1";
    if (forCuda && p.max_candidates > M2DET_MAX_CANDIDATES)
        return M2DET_ATTR_MAX_CANDIDATES " must be <= " M2DET_STRINGIFY(M2DET_MAX_CANDIDATES) " for the CUDA kernel";
    if (forCuda && p.max_detections > M2DET_MAX_DETECTIONS)
        return M2DET_ATTR_MAX_DETECTIONS " must be <= " M2DET_STRINGIFY(M2DET_MAX_DETECTIONS) " for the CUDA kernel";
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

//! Whether softNmsWorkspaceSize(batch, A, C, p) is representable in size_t (with a margin), for
//! batch >= 1 and `p`, A, C that softNmsCheck accepts.
inline bool softNmsWorkspaceFits(int64_t batch, int64_t numAnchors, int64_t numClasses, SoftNmsParams const& p)
{
    // 8 bytes per entry + 4 per list + 3 * 255 alignment stay below SIZE_MAX when the entries do
    // not exceed SIZE_MAX / 16 (lists <= entries).
    uint64_t const limit = static_cast<uint64_t>(SIZE_MAX) / 16U;
    auto const b = static_cast<uint64_t>(batch);
    auto const c = static_cast<uint64_t>(numClasses);
    auto const cap = static_cast<uint64_t>(softNmsKeepCapacity(p, numAnchors));
    return batch >= 1 && numClasses >= 1 && cap >= 1 && b <= limit / c && b * c <= limit / cap;
}

//! Workspace of the CUDA path for boxes [B,A,4] / scores [B,A,C]: per (image, class) the emitted
//! (score, anchor) pairs and their count.  Needs softNmsWorkspaceFits.
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
