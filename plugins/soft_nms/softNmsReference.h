/*
 * C++ CPU reference of the soft-NMS plugin: plain loops, exactly the spec in README.md
 * (docs/design.md §2).  The CUDA kernel is tested against it; it needs no CUDA and no TensorRT.
 */
#ifndef M2DET_SOFT_NMS_REFERENCE_H
#define M2DET_SOFT_NMS_REFERENCE_H

#include "softNmsMath.h"

#include <cstdint>
#include <vector>

namespace m2det
{

//! A soft-NMS candidate of one image: the anchor (row of boxes [A,4]), its class (column of
//! scores [A,C]) and its current score.  The reference emits these; the box is looked up by
//! anchor.  (Not m2det::Detection of the C++ runtime, which carries box corners in pixels.)
struct SoftNmsCandidate
{
    float score;
    int32_t classId;
    int32_t anchor;
};

//! Soft-NMS of one class of one image: boxes [A] and scores [A] (this class's column).  Returns the
//! emitted (anchor, score) pairs in emission order.
std::vector<SoftNmsCandidate> softNmsClass(Box const* boxes, float const* scores, int32_t numAnchors, int32_t classId,
    SoftNmsParams const& p);

//! Soft-NMS of one image: boxes [A,4], scores [A,C] (row-major).  Per-class soft-NMS, then the
//! merge: score descending, ties by class then anchor ascending, at most max_detections.
std::vector<SoftNmsCandidate> softNmsImage(
    float const* boxes, float const* scores, int32_t numAnchors, int32_t numClasses, SoftNmsParams const& p);

} // namespace m2det

#endif // M2DET_SOFT_NMS_REFERENCE_H
