// The soft-NMS CUDA kernels (launched by softNmsLaunch in softNmsKernel.cu).  A header so that
// plugins/tests/softNmsKernelEmulationTest.cpp can also run them on the CPU, one std::thread per
// CUDA thread.
//  1. softNmsClassKernel, one block per (image, class): candidate selection (threshold, then an
//     exact top-max_candidates by a block-wide radix select on the score bits, ties by lower anchor),
//     candidates held in registers (kSlots per thread), then the emission loop: a block-wide argmax
//     (warp shuffles, one __syncthreads per emission) and the decay of all remaining candidates in
//     parallel.  Emitted (score, anchor) pairs go to the workspace.
//  2. softNmsMergeKernel, one block per image: top-K of all emitted pairs by the 64-bit key
//     (score, -(class * A + anchor)) with a radix select, a bitonic sort of those K in shared
//     memory, then the EfficientNMS-style outputs.
// The per-pair arithmetic comes from softNmsMath.h, shared with the C++ reference.
#ifndef M2DET_SOFT_NMS_KERNELS_CUH
#define M2DET_SOFT_NMS_KERNELS_CUH

#include "softNmsMath.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace m2det
{
namespace kernels
{

constexpr int kSlots = 4;            // candidates per thread in the class kernel
constexpr int kMaxThreads = 1024;    // kSlots * kMaxThreads == M2DET_MAX_CANDIDATES
constexpr int kMergeThreads = 1024;
constexpr int kRadixBins = kSoftNmsRadixBins;
constexpr unsigned kFullMask = 0xFFFFFFFFU;
static_assert(kSlots * kMaxThreads == M2DET_MAX_CANDIDATES, "slots must cover max_candidates");

struct ClassLists
{
    float* scores;   // [B*C, keepCap] emitted scores
    int32_t* anchors; // [B*C, keepCap] emitted anchors
    int32_t* counts;  // [B*C] emissions
    int32_t keepCap;
};

template <bool kHalf>
__device__ __forceinline__ float loadScore(void const* __restrict__ scores, int64_t i)
{
    if constexpr (kHalf)
        return __half2float(static_cast<__half const*>(scores)[i]);
    else
        return static_cast<float const*>(scores)[i];
}

__device__ __forceinline__ Box loadBox(float const* __restrict__ boxes, int64_t row)
{
    float const* p = boxes + row * 4;
    return Box{p[0], p[1], p[2], p[3]};
}

__device__ __forceinline__ int warpSum(int v)
{
    for (int offset = 16; offset > 0; offset >>= 1)
        v += __shfl_xor_sync(kFullMask, v, offset);
    return v;
}

//! Sum of `v` over the block, returned to every thread.  `scratch` holds 32 ints.
__device__ int blockSum(int v, int* scratch)
{
    int const lane = threadIdx.x & 31;
    int const warp = threadIdx.x >> 5;
    v = warpSum(v);
    if (lane == 0)
        scratch[warp] = v;
    __syncthreads();
    int total = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w)
        total += scratch[w];
    __syncthreads();
    return total;
}

struct ClassShared
{
    int32_t cand[M2DET_MAX_CANDIDATES]; // anchors of the selected candidates
    uint32_t hist[kRadixBins];
    int warpInts[32];
    float warpScore[2][32];
    int32_t warpAnchor[2][32];
    int count;
    uint32_t digit;
    int remaining;
};

//! Selects the candidates of one (image, class) into s.cand and returns their number:
//! score > score_threshold, at most `maxCand`, the highest first with ties by lower anchor.
template <bool kHalf>
__device__ int selectCandidates(void const* __restrict__ scores, int64_t scoreBase, int32_t A, int32_t C,
    float threshold, int32_t maxCand, ClassShared& s)
{
    int const tid = threadIdx.x;
    int const nt = blockDim.x;
    auto score = [&](int32_t a) { return loadScore<kHalf>(scores, scoreBase + static_cast<int64_t>(a) * C); };

    int local = 0;
    for (int32_t a = tid; a < A; a += nt)
        local += score(a) > threshold ? 1 : 0;
    if (tid == 0)
        s.count = 0;
    int const n = blockSum(local, s.warpInts); // also orders s.count = 0 before the atomics below
    if (n <= maxCand)
    {
        for (int32_t a = tid; a < A; a += nt)
        {
            if (score(a) > threshold)
                s.cand[atomicAdd(&s.count, 1)] = a;
        }
        __syncthreads();
        return n;
    }

    // Radix select of the maxCand-th highest key T, 8 bits per pass.
    uint32_t prefix = 0;
    uint32_t mask = 0;
    int remaining = maxCand;
    for (int shift = 24; shift >= 0; shift -= 8)
    {
        for (int i = tid; i < kRadixBins; i += nt)
            s.hist[i] = 0;
        __syncthreads();
        for (int32_t a = tid; a < A; a += nt)
        {
            float const v = score(a);
            uint32_t const key = scoreKey(v);
            if (v > threshold && (key & mask) == prefix)
                atomicAdd(&s.hist[(key >> shift) & 0xFFU], 1U);
        }
        __syncthreads();
        if (tid == 0)
            radixPickDigit(s.hist, remaining, &s.digit, &s.remaining);
        __syncthreads();
        prefix |= s.digit << shift;
        mask |= 0xFFU << shift;
        remaining = s.remaining;
    }
    // Every key above T, then the `remaining` lowest anchors whose key equals T.
    int const above = maxCand - remaining;
    for (int32_t a = tid; a < A; a += nt)
    {
        float const v = score(a);
        if (v > threshold && scoreKey(v) > prefix)
            s.cand[atomicAdd(&s.count, 1)] = a;
    }
    int const lane = tid & 31;
    int const warp = tid >> 5;
    int taken = 0;
    for (int32_t start = 0; start < A && taken < remaining; start += nt)
    {
        int32_t const a = start + tid;
        float const v = a < A ? score(a) : 0.0F;
        bool const tie = a < A && v > threshold && scoreKey(v) == prefix;
        unsigned const ballot = __ballot_sync(kFullMask, tie);
        if (lane == 0)
            s.warpInts[warp] = __popc(ballot);
        __syncthreads();
        int before = 0;
        int total = 0;
        for (int w = 0; w < (nt >> 5); ++w)
        {
            before += w < warp ? s.warpInts[w] : 0;
            total += s.warpInts[w];
        }
        int const rank = taken + before + __popc(ballot & ((1U << lane) - 1U));
        if (tie && rank < remaining)
            s.cand[above + rank] = a;
        taken += total;
        __syncthreads();
    }
    __syncthreads();
    return maxCand;
}

template <bool kHalf>
__global__ void __launch_bounds__(kMaxThreads) softNmsClassKernel(float const* __restrict__ boxes,
    void const* __restrict__ scores, int32_t A, int32_t C, SoftNmsParams p, int32_t maxCand, ClassLists lists)
{
    __shared__ ClassShared s;
    int const tid = threadIdx.x;
    int const nt = blockDim.x;
    int const lane = tid & 31;
    int const warp = tid >> 5;
    int32_t const list = blockIdx.x;
    int32_t const b = list / C;
    int32_t const c = list - b * C;
    int64_t const boxBase = static_cast<int64_t>(b) * A;

    int const m = selectCandidates<kHalf>(scores, boxBase * C + c, A, C, p.score_threshold, maxCand, s);

    // Candidates in registers: slot k of thread t is candidate k * nt + t; anchor -1 = gone.
    float score[kSlots];
    int32_t anchor[kSlots];
    Box box[kSlots];
    float area[kSlots];
#pragma unroll
    for (int k = 0; k < kSlots; ++k)
    {
        int const i = k * nt + tid;
        anchor[k] = i < m ? s.cand[i] : -1;
        if (anchor[k] >= 0)
        {
            score[k] = loadScore<kHalf>(scores, (boxBase + anchor[k]) * C + c);
            box[k] = loadBox(boxes, boxBase + anchor[k]);
            area[k] = boxArea(box[k]);
        }
        else
        {
            score[k] = 0.0F;
            box[k] = Box{0.0F, 0.0F, 0.0F, 0.0F};
            area[k] = 0.0F;
        }
    }

    float* outScore = lists.scores + static_cast<int64_t>(list) * lists.keepCap;
    int32_t* outAnchor = lists.anchors + static_cast<int64_t>(list) * lists.keepCap;
    int emitted = 0;
    for (; emitted < lists.keepCap; ++emitted)
    {
        // Block-wide argmax by (score desc, anchor asc).
        float bestScore = 0.0F;
        int32_t best = -1;
#pragma unroll
        for (int k = 0; k < kSlots; ++k)
        {
            if (emitsBefore(score[k], anchor[k], bestScore, best))
            {
                bestScore = score[k];
                best = anchor[k];
            }
        }
        for (int offset = 16; offset > 0; offset >>= 1)
        {
            float const otherScore = __shfl_xor_sync(kFullMask, bestScore, offset);
            int32_t const other = __shfl_xor_sync(kFullMask, best, offset);
            if (emitsBefore(otherScore, other, bestScore, best))
            {
                bestScore = otherScore;
                best = other;
            }
        }
        int const buf = emitted & 1; // double buffer: one barrier per emission
        if (lane == 0)
        {
            s.warpScore[buf][warp] = bestScore;
            s.warpAnchor[buf][warp] = best;
        }
        __syncthreads();
        bestScore = 0.0F;
        best = -1;
        for (int w = 0; w < (nt >> 5); ++w)
        {
            if (emitsBefore(s.warpScore[buf][w], s.warpAnchor[buf][w], bestScore, best))
            {
                bestScore = s.warpScore[buf][w];
                best = s.warpAnchor[buf][w];
            }
        }
        if (best < 0)
            break;
        if (tid == 0)
        {
            outScore[emitted] = bestScore;
            outAnchor[emitted] = best;
        }
        // Decay every remaining candidate by its overlap with the emitted box.
        Box const e = loadBox(boxes, boxBase + best);
        float const eArea = boxArea(e);
#pragma unroll
        for (int k = 0; k < kSlots; ++k)
        {
            if (anchor[k] == best)
            {
                anchor[k] = -1;
            }
            else if (anchor[k] >= 0)
            {
                float const iou = boxIou(e, eArea, box[k], area[k]);
                score[k] = score[k] * decayWeight(iou, p.method, p.iou_threshold, p.sigma);
                if (score[k] < p.min_score)
                    anchor[k] = -1;
            }
        }
    }
    if (tid == 0)
        lists.counts[list] = emitted;
}

struct MergeShared
{
    unsigned long long keys[M2DET_MAX_DETECTIONS];
    uint32_t hist[kRadixBins];
    int warpInts[32];
    int count;
    uint32_t digit;
    int remaining;
};

//! Merge key of an emitted pair: higher score first, then lower class, then lower anchor.  Unique per
//! image, and never 0, because class * A + anchor < 2^31 (checked by softNmsCheck).
__device__ __forceinline__ unsigned long long mergeKey(float score, int32_t c, int32_t anchor, int32_t A)
{
    uint32_t const flat = static_cast<uint32_t>(c) * static_cast<uint32_t>(A) + static_cast<uint32_t>(anchor);
    return (static_cast<unsigned long long>(scoreKey(score)) << 32) | (0xFFFFFFFFU - flat);
}

__global__ void __launch_bounds__(kMergeThreads) softNmsMergeKernel(float const* __restrict__ boxes, int32_t A,
    int32_t C, int32_t K, ClassLists lists, int32_t* __restrict__ num, float* __restrict__ outBoxes,
    float* __restrict__ outScores, int32_t* __restrict__ outClasses)
{
    __shared__ MergeShared s;
    int const tid = threadIdx.x;
    int const nt = blockDim.x;
    int32_t const b = blockIdx.x;
    int32_t const keepCap = lists.keepCap;
    int64_t const firstList = static_cast<int64_t>(b) * C;
    int32_t const slots = C * keepCap;
    // Key of slot i (class i / keepCap, emission i % keepCap), or 0 when that emission does not exist.
    auto key = [&](int32_t i) -> unsigned long long {
        int32_t const c = i / keepCap;
        int32_t const j = i - c * keepCap;
        int64_t const list = firstList + c;
        if (j >= lists.counts[list])
            return 0ULL;
        int64_t const e = list * keepCap + j;
        return mergeKey(lists.scores[e], c, lists.anchors[e], A);
    };

    int local = 0;
    for (int32_t c = tid; c < C; c += nt)
        local += lists.counts[firstList + c];
    if (tid == 0)
        s.count = 0;
    int const total = blockSum(local, s.warpInts);
    int const n = total < K ? total : K;

    unsigned long long threshold = 1ULL; // keys >= threshold are kept (all real keys are >= 1)
    if (total > K)
    {
        unsigned long long prefix = 0ULL;
        unsigned long long mask = 0ULL;
        int remaining = K;
        for (int shift = 56; shift >= 0; shift -= 8)
        {
            for (int i = tid; i < kRadixBins; i += nt)
                s.hist[i] = 0;
            __syncthreads();
            for (int32_t i = tid; i < slots; i += nt)
            {
                unsigned long long const k = key(i);
                if (k != 0ULL && (k & mask) == prefix)
                    atomicAdd(&s.hist[(k >> shift) & 0xFFULL], 1U);
            }
            __syncthreads();
            if (tid == 0)
                radixPickDigit(s.hist, remaining, &s.digit, &s.remaining);
            __syncthreads();
            prefix |= static_cast<unsigned long long>(s.digit) << shift;
            mask |= 0xFFULL << shift;
            remaining = s.remaining;
        }
        threshold = prefix; // keys are unique: exactly K keys are >= prefix
    }
    for (int32_t i = tid; i < slots; i += nt)
    {
        unsigned long long const k = key(i);
        if (k != 0ULL && k >= threshold)
            s.keys[atomicAdd(&s.count, 1)] = k;
    }
    // Bitonic sort (descending) of the n selected keys, padded with 0 to a power of two.
    int size = 1;
    while (size < n)
        size <<= 1;
    __syncthreads();
    for (int i = n + tid; i < size; i += nt)
        s.keys[i] = 0ULL;
    __syncthreads();
    for (int k = 2; k <= size; k <<= 1)
    {
        for (int j = k >> 1; j > 0; j >>= 1)
        {
            for (int i = tid; i < size; i += nt)
            {
                int const partner = i ^ j;
                if (partner > i)
                {
                    unsigned long long const x = s.keys[i];
                    unsigned long long const y = s.keys[partner];
                    bool const descending = (i & k) == 0;
                    if (descending ? x < y : x > y)
                    {
                        s.keys[i] = y;
                        s.keys[partner] = x;
                    }
                }
            }
            __syncthreads();
        }
    }

    int64_t const outBase = static_cast<int64_t>(b) * K;
    for (int32_t r = tid; r < K; r += nt)
    {
        Box bx{0.0F, 0.0F, 0.0F, 0.0F};
        float sc = 0.0F;
        int32_t cls = 0;
        if (r < n)
        {
            unsigned long long const k = s.keys[r];
            uint32_t const flat = 0xFFFFFFFFU - static_cast<uint32_t>(k & 0xFFFFFFFFULL);
            cls = static_cast<int32_t>(flat / static_cast<uint32_t>(A));
            bx = loadBox(boxes, static_cast<int64_t>(b) * A + static_cast<int32_t>(flat - static_cast<uint32_t>(cls) * A));
            sc = scoreFromKey(static_cast<uint32_t>(k >> 32));
        }
        float* o = outBoxes + (outBase + r) * 4;
        o[0] = bx.x1;
        o[1] = bx.y1;
        o[2] = bx.x2;
        o[3] = bx.y2;
        outScores[outBase + r] = sc;
        outClasses[outBase + r] = cls;
    }
    if (tid == 0)
        num[b] = n;
}

//! Threads of a class block: enough for kSlots candidates each, a multiple of 32, at least 128.
inline int32_t classThreads(int32_t maxCand)
{
    int32_t const needed = (maxCand + kSlots - 1) / kSlots;
    int32_t const threads = (needed + 31) / 32 * 32;
    return threads < 128 ? 128 : threads;
}

} // namespace kernels
} // namespace m2det

#endif // M2DET_SOFT_NMS_KERNELS_CUH
