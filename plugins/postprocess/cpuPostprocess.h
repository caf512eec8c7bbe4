/*
 * CPU post-processing of M2Det outputs for a batch: optional box decoding, score threshold, per-class
 * top-k candidates, soft-NMS and the class merge, on a thread pool.  The semantics are those of the
 * C++ reference (softNmsReference.h) and of m2det/nms.py, with the same per-pair arithmetic
 * (softNmsMath.h): hard and linear give the same detections bit for bit, gaussian differs only by
 * the expf implementation.
 *
 * Speed: the emission loop runs over a compact structure-of-arrays copy of a class's candidates,
 * ascending anchor order; one pass per emission decays every remaining candidate (vectorised) and
 * records each block's highest score, so the next argmax reads the block maxima, not the scores.
 */
#ifndef M2DET_CPU_POSTPROCESS_H
#define M2DET_CPU_POSTPROCESS_H

#include "softNmsMath.h"
#include "softNmsParams.h"
#include "softNmsReference.h"

#include <cstdint>
#include <vector>

namespace m2det
{

//! A float32 tensor [B, A, W] whose last axis is contiguous: element (b, a, w) is
//! data[b * strideB + a * strideA + w] (strides in elements).
struct Tensor3View
{
    float const* data = nullptr;
    int64_t strideB = 0;
    int64_t strideA = 0;
};

//! One batch of network outputs.
struct PostprocessInput
{
    int32_t batch = 0;
    int32_t numAnchors = 0;
    int32_t numClasses = 0;
    Tensor3View scores; //!< [B, A, C], C scores per anchor (no background column)
    Tensor3View boxes;  //!< [B, A, 4]: x1,y1,x2,y2, or loc offsets when `priors` is set
    float const* priors = nullptr; //!< [A, 4] cx,cy,w,h (contiguous): decode `boxes` as loc offsets
    float variance[2] = {0.1F, 0.2F}; //!< decode: centre and size variances
};

//! The detections of one image in merged order (score desc, class asc, anchor asc) and their boxes.
struct ImageDetections
{
    std::vector<SoftNmsCandidate> detections;
    std::vector<Box> boxes;
};

//! Decoded box of loc offsets `loc` [4] against prior `prior` [4] (cx,cy,w,h), float32 in the order of
//! m2det.box_utils.decode: c = p.c + (l.c * v0) * p.wh; wh = p.wh * exp(l.wh * v1); x1y1 = c - wh / 2;
//! x2y2 = x1y1 + wh.
Box decodeBox(float const* loc, float const* prior, float variance0, float variance1);

//! Steps 1-3 of the spec for every image of `in` on up to `threads` threads (<= 1: the caller's
//! only).  `p.max_detections <= 0` means no cap (only here: the plugin's K is >= 1);
//! `p.max_candidates` is not limited to the CUDA kernel's 4096.  Inputs must be finite, and
//! `p.score_threshold` >= 0 (the emission loop orders scores by their bits, valid for floats >= 0).
std::vector<ImageDetections> postprocessBatch(PostprocessInput const& in, SoftNmsParams const& p, int threads);

} // namespace m2det

#endif // M2DET_CPU_POSTPROCESS_H
