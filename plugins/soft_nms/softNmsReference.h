/*
 * C++ CPU reference of the soft-NMS plugin: plain loops, exactly the spec in README.md.  The CUDA
 * kernel is tested against it; it needs no CUDA and no TensorRT.
 */
#ifndef M2DET_SOFT_NMS_REFERENCE_H
#define M2DET_SOFT_NMS_REFERENCE_H

#include "softNmsMath.h"

#include <cstdint>
#include <vector>

namespace m2det
{

//! One detection of one image.
struct Detection
{
    float score;
    int32_t classId;
    int32_t anchor;
};

//! Soft-NMS of one class of one image: boxes [A] and scores [A] (this class's column).  Returns the
//! emitted (anchor, score) pairs in emission order.
std::vector<Detection> softNmsClass(Box const* boxes, float const* scores, int32_t numAnchors, int32_t classId,
    SoftNmsParams const& p);

//! Soft-NMS of one image: boxes [A,4], scores [A,C] (row-major).  Per-class soft-NMS, then the
//! merge: score descending, ties by class then anchor ascending, at most max_detections.
std::vector<Detection> softNmsImage(
    float const* boxes, float const* scores, int32_t numAnchors, int32_t numClasses, SoftNmsParams const& p);

} // namespace m2det

#endif // M2DET_SOFT_NMS_REFERENCE_H
