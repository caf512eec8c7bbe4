/*
 * Per-pair soft-NMS arithmetic shared by the CUDA kernel and the C++ reference, so both run the
 * same float32 operations in the same order (see README.md, "Exact arithmetic").  Compiles with
 * nvcc and with a plain C++ compiler.
 */
#ifndef M2DET_SOFT_NMS_MATH_H
#define M2DET_SOFT_NMS_MATH_H

#include "softNmsParams.h"

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define M2DET_HD __host__ __device__ __forceinline__
#else
#include <cmath>
#define M2DET_HD inline
#endif

namespace m2det
{

struct Box
{
    float x1, y1, x2, y2;
};

//! (x2 - x1) * (y2 - y1); zero or negative for degenerate boxes, used as computed.
M2DET_HD float boxArea(Box const& b)
{
    return (b.x2 - b.x1) * (b.y2 - b.y1);
}

//! min and max as selects: for the finite inputs the spec assumes they give the value fminf/fmaxf
//! give (only a zero's sign may differ, and no result depends on it), and loops over them vectorise.
M2DET_HD float minOf(float a, float b)
{
    return a < b ? a : b;
}

M2DET_HD float maxOf(float a, float b)
{
    return a > b ? a : b;
}

//! The smallest positive float32 (a subnormal): every positive float is >= it.
constexpr float kSmallestPositive = 1.40129846e-45F;

//! IoU of the emitted box `a` (area `areaA`) and the candidate `b` (area `areaB`):
//! iw = min(a.x2, b.x2) - max(a.x1, b.x1) (ih alike); inter = iw > 0 && ih > 0 ? iw * ih : 0;
//! union = (areaA + areaB) - inter; iou = union > 0 ? inter / union : 0.  Written without branches
//! (the CPU path vectorises it): inter > 0 implies union > 0 (inter <= both areas), and where
//! union <= 0 inter is 0, so inter / max(union, smallest positive) is that value exactly.
M2DET_HD float boxIou(Box const& a, float areaA, Box const& b, float areaB)
{
    float const iw = minOf(a.x2, b.x2) - maxOf(a.x1, b.x1);
    float const ih = minOf(a.y2, b.y2) - maxOf(a.y1, b.y1);
    float const inter = ((iw > 0.0F) & (ih > 0.0F)) ? iw * ih : 0.0F;
    float const uni = (areaA + areaB) - inter;
    return inter / maxOf(uni, kSmallestPositive);
}

//! Decay factor of a candidate with overlap `iou` with the emitted box, for a method known at compile
//! time (the CPU path's loops; branch-free for hard and linear).
template <int32_t Method>
M2DET_HD float decayWeightOf(float iou, float iouThreshold, float sigma)
{
    if (Method == M2DET_SOFT_NMS_HARD)
        return iou > iouThreshold ? 0.0F : 1.0F;
    if (Method == M2DET_SOFT_NMS_LINEAR)
        return iou > iouThreshold ? 1.0F - iou : 1.0F;
    return expf(-(iou * iou) / sigma);
}

//! Decay factor of a candidate with overlap `iou` with the emitted box.
M2DET_HD float decayWeight(float iou, int32_t method, float iouThreshold, float sigma)
{
    if (method == M2DET_SOFT_NMS_HARD)
        return decayWeightOf<M2DET_SOFT_NMS_HARD>(iou, iouThreshold, sigma);
    if (method == M2DET_SOFT_NMS_LINEAR)
        return decayWeightOf<M2DET_SOFT_NMS_LINEAR>(iou, iouThreshold, sigma);
    return decayWeightOf<M2DET_SOFT_NMS_GAUSSIAN>(iou, iouThreshold, sigma);
}

//! Emission order: (score, anchor) beats (otherScore, otherAnchor) when its score is higher, ties by
//! the lower anchor index.  anchor < 0 means "no candidate" and loses to any candidate.
M2DET_HD bool emitsBefore(float score, int32_t anchor, float otherScore, int32_t otherAnchor)
{
    if (otherAnchor < 0)
        return anchor >= 0;
    if (anchor < 0)
        return false;
    return score > otherScore || (score == otherScore && anchor < otherAnchor);
}

//! Order-preserving map of a float score to an unsigned key (a > b  <=>  key(a) > key(b); -0 == +0).
M2DET_HD uint32_t scoreKey(float score)
{
    uint32_t bits;
#if defined(__CUDA_ARCH__)
    bits = __float_as_uint(score == 0.0F ? 0.0F : score);
#else
    float const s = score == 0.0F ? 0.0F : score;
    std::memcpy(&bits, &s, sizeof(bits));
#endif
    return (bits & 0x80000000U) ? ~bits : (bits | 0x80000000U);
}

//! Inverse of scoreKey (zero comes back as +0).
M2DET_HD float scoreFromKey(uint32_t key)
{
    uint32_t const bits = (key & 0x80000000U) ? (key & 0x7FFFFFFFU) : ~key;
#if defined(__CUDA_ARCH__)
    return __uint_as_float(bits);
#else
    float s;
    std::memcpy(&s, &bits, sizeof(s));
    return s;
#endif
}

constexpr int kSoftNmsRadixBins = 256; //!< 8-bit digits

//! One pass of a radix select for the `remaining`-th highest key (1-based) among keys whose digit
//! histogram is `hist`: the highest digit d with #(digit > d) < remaining <= #(digit >= d); also
//! returns `remaining` minus #(digit > d), the rank to look for inside digit d.
M2DET_HD void radixPickDigit(uint32_t const* hist, int remaining, uint32_t* digit, int* remainingInDigit)
{
    int above = 0;
    int d = kSoftNmsRadixBins - 1;
    for (; d > 0; --d)
    {
        if (above + static_cast<int>(hist[d]) >= remaining)
            break;
        above += static_cast<int>(hist[d]);
    }
    *digit = static_cast<uint32_t>(d);
    *remainingInDigit = remaining - above;
}

} // namespace m2det

#endif // M2DET_SOFT_NMS_MATH_H
