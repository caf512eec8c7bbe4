#include "cpuPostprocess.h"

#include "threadPool.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace m2det
{
namespace
{

// The decay loop is compiled for AVX2 as well as the baseline ISA, the better one picked at load
// time (GCC/Clang function multiversioning on x86-64 Linux); AVX2 brings no FMA, so the same values.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define M2DET_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define M2DET_VECTOR_CLONES
#endif

constexpr int kBlock = 32;                      //!< scores per block of the argmax
constexpr float kRemoved = -1.0F;               //!< score of emitted entries and of the padding
constexpr int64_t kScanScores = int64_t{1} << 18; //!< an image is split into scan tasks of >= this many scores
constexpr int64_t kParallelCandidates = 2048;   //!< fewer candidates in a batch: classes run serially

//! The bits of a float as an int32: for floats >= +0 the same order as the floats; every negative
//! float (the removed entries' scores) maps below every non-negative one.
int32_t bitsOf(float f)
{
    int32_t b;
    std::memcpy(&b, &f, sizeof(b));
    return b;
}

float floatOf(int32_t b)
{
    float f;
    std::memcpy(&f, &b, sizeof(f));
    return f;
}

//! A score above the threshold: anchor, class, score and the anchor's box.
struct Hit
{
    int32_t anchor;
    int32_t classId;
    float score;
    Box box;
};

//! An emitted detection with its box.
struct Emitted
{
    SoftNmsCandidate detection;
    Box box;
};

//! One class's remaining candidates as arrays, ascending anchor order, padded to a multiple of kBlock
//! with removed entries (score -1, zero boxes); blockMax[k] holds the largest score bits of block k.
struct ClassBuffers
{
    std::vector<float> x1, y1, x2, y2, area, score;
    std::vector<int32_t> anchor;
    std::vector<Box> box;
    std::vector<int32_t> blockMax;

    void reserve(size_t n)
    {
        size_t const padded = (n + kBlock - 1) / kBlock * kBlock;
        for (auto* v : {&x1, &y1, &x2, &y2, &area, &score})
            v->resize(padded);
        anchor.resize(padded);
        box.resize(padded);
        blockMax.resize(padded / kBlock);
    }

    //! Removed entries in [m, end of m's last block); returns that end.
    size_t pad(size_t m)
    {
        size_t const padded = (m + kBlock - 1) / kBlock * kBlock;
        for (size_t i = m; i < padded; ++i)
        {
            x1[i] = y1[i] = x2[i] = y2[i] = area[i] = 0.0F;
            score[i] = kRemoved;
            anchor[i] = std::numeric_limits<int32_t>::max();
        }
        return padded;
    }

    void computeBlockMax(size_t padded)
    {
        for (size_t k = 0; k < padded / kBlock; ++k)
        {
            int32_t mx = std::numeric_limits<int32_t>::min();
            for (int j = 0; j < kBlock; ++j)
            {
                int32_t const bits = bitsOf(score[k * kBlock + j]);
                mx = bits > mx ? bits : mx;
            }
            blockMax[k] = mx;
        }
    }

    //! Keeps the entries that can still be emitted (score >= minScore and not removed), in order.
    size_t compact(size_t padded, float minScore)
    {
        size_t k = 0;
        for (size_t i = 0; i < padded; ++i)
        {
            if (bitsOf(score[i]) >= 0 && score[i] >= minScore)
            {
                x1[k] = x1[i];
                y1[k] = y1[i];
                x2[k] = x2[i];
                y2[k] = y2[i];
                area[k] = area[i];
                score[k] = score[i];
                anchor[k] = anchor[i];
                box[k] = box[i];
                ++k;
            }
        }
        return k;
    }
};

//! One emission's decay of every entry (removed ones stay negative), and the new block maxima.
//! Returns how many entries are now below minScore (removed ones included).
template <int32_t Method>
M2DET_VECTOR_CLONES int64_t decayAll(Box const& e, float eArea, ClassBuffers& b, size_t padded, SoftNmsParams const& p)
{
    float const* __restrict x1 = b.x1.data();
    float const* __restrict y1 = b.y1.data();
    float const* __restrict x2 = b.x2.data();
    float const* __restrict y2 = b.y2.data();
    float const* __restrict area = b.area.data();
    float* __restrict score = b.score.data();
    float const iouThreshold = p.iou_threshold;
    float const sigma = p.sigma;
    float const minScore = p.min_score;
    int64_t below = 0;
    for (size_t k = 0; k < padded / kBlock; ++k)
    {
        int32_t mx = std::numeric_limits<int32_t>::min();
        int32_t blockBelow = 0;
        for (int j = 0; j < kBlock; ++j) // vectorised: no branches
        {
            size_t const i = k * kBlock + j;
            float const iou = boxIou(e, eArea, Box{x1[i], y1[i], x2[i], y2[i]}, area[i]);
            float w;
            if (Method == M2DET_SOFT_NMS_GAUSSIAN) // exp(-0 / sigma) is exactly 1: skip expf then
                w = iou > 0.0F ? decayWeightOf<Method>(iou, iouThreshold, sigma) : 1.0F;
            else
                w = decayWeightOf<Method>(iou, iouThreshold, sigma);
            float const s = score[i] * w;
            score[i] = s;
            int32_t const bits = bitsOf(s);
            mx = bits > mx ? bits : mx;
            blockBelow += s < minScore ? 1 : 0;
        }
        b.blockMax[k] = mx;
        below += blockBelow;
    }
    return below;
}

//! Step 2 for one class whose `m` candidates fill `b`: appends the emissions to `out`.
template <int32_t Method>
void emitClass(ClassBuffers& b, size_t m, SoftNmsParams const& p, int32_t classId, std::vector<Emitted>& out)
{
    size_t padded = b.pad(m);
    b.computeBlockMax(padded);
    int64_t const keep = p.keep_per_class > 0 ? p.keep_per_class : std::numeric_limits<int64_t>::max();
    int64_t emitted = 0;
    for (;;)
    {
        size_t const blocks = padded / kBlock;
        int32_t mx = std::numeric_limits<int32_t>::min();
        for (size_t k = 0; k < blocks; ++k)
            mx = b.blockMax[k] > mx ? b.blockMax[k] : mx;
        if (mx < 0) // nothing left but removed entries
            break;
        float const best = floatOf(mx);
        if (emitted > 0 && !(best >= p.min_score)) // what is left was discarded
            break;
        // The highest score, lowest anchor among ties: the first entry with those bits.
        size_t k = 0;
        while (b.blockMax[k] != mx)
            ++k;
        size_t pos = k * kBlock;
        while (bitsOf(b.score[pos]) != mx)
            ++pos;
        out.push_back({{best, classId, b.anchor[pos]}, b.box[pos]});
        if (++emitted >= keep)
            break;
        Box const e{b.x1[pos], b.y1[pos], b.x2[pos], b.y2[pos]};
        float const eArea = b.area[pos];
        b.score[pos] = kRemoved;
        int64_t const below = decayAll<Method>(e, eArea, b, padded, p);
        if (padded > static_cast<size_t>(kBlock) && below * 4 >= static_cast<int64_t>(padded))
        {
            padded = b.pad(b.compact(padded, p.min_score));
            b.computeBlockMax(padded);
        }
    }
}

//! Steps 1-2 for one class of one image: `hits` [n] in ascending anchor order.
void classNms(Hit const* hits, size_t n, SoftNmsParams const& p, std::vector<Emitted>& out)
{
    thread_local ClassBuffers b;
    thread_local std::vector<Hit> selected;
    if (n > static_cast<size_t>(p.max_candidates))
    {
        // The max_candidates highest scores (ties: lower anchor), back in anchor order.
        selected.assign(hits, hits + n);
        auto const higher = [](Hit const& x, Hit const& y)
        { return x.score > y.score || (x.score == y.score && x.anchor < y.anchor); };
        auto const k = static_cast<size_t>(p.max_candidates);
        std::nth_element(selected.begin(), selected.begin() + static_cast<ptrdiff_t>(k) - 1, selected.end(), higher);
        selected.resize(k);
        std::sort(selected.begin(), selected.end(), [](Hit const& x, Hit const& y) { return x.anchor < y.anchor; });
        hits = selected.data();
        n = k;
    }
    b.reserve(n);
    for (size_t i = 0; i < n; ++i)
    {
        Box const& box = hits[i].box;
        b.x1[i] = box.x1;
        b.y1[i] = box.y1;
        b.x2[i] = box.x2;
        b.y2[i] = box.y2;
        b.area[i] = boxArea(box);
        b.score[i] = hits[i].score;
        b.anchor[i] = hits[i].anchor;
        b.box[i] = box;
    }
    int32_t const classId = n ? hits[0].classId : 0;
    if (p.method == M2DET_SOFT_NMS_HARD)
        emitClass<M2DET_SOFT_NMS_HARD>(b, n, p, classId, out);
    else if (p.method == M2DET_SOFT_NMS_LINEAR)
        emitClass<M2DET_SOFT_NMS_LINEAR>(b, n, p, classId, out);
    else
        emitClass<M2DET_SOFT_NMS_GAUSSIAN>(b, n, p, classId, out);
}

//! Whether any of the `n` scores is above `threshold` (vectorised).
bool anyAbove(float const* row, int32_t n, float threshold)
{
    int any = 0;
    for (int32_t c = 0; c < n; ++c)
        any |= row[c] > threshold ? 1 : 0;
    return any != 0;
}

struct ScanTask
{
    int32_t image;
    int32_t begin;
    int32_t end;
};

//! Step 1's threshold over anchors [begin, end) of one image: hits in anchor order, class ascending
//! within an anchor.
M2DET_VECTOR_CLONES void scan(PostprocessInput const& in, ScanTask const& t, float threshold, std::vector<Hit>& hits)
{
    int32_t const C = in.numClasses;
    float const* scores = in.scores.data + t.image * in.scores.strideB;
    float const* boxes = in.boxes.data + t.image * in.boxes.strideB;
    for (int32_t a = t.begin; a < t.end; ++a)
    {
        float const* row = scores + a * in.scores.strideA;
        if (!anyAbove(row, C, threshold))
            continue;
        float const* b = boxes + a * in.boxes.strideA;
        Box const box = in.priors != nullptr ? decodeBox(b, in.priors + int64_t{4} * a, in.variance[0], in.variance[1])
                                             : Box{b[0], b[1], b[2], b[3]};
        for (int32_t c = 0; c < C; ++c)
        {
            if (row[c] > threshold)
                hits.push_back({a, c, row[c], box});
        }
    }
}

} // namespace

Box decodeBox(float const* loc, float const* prior, float variance0, float variance1)
{
    float const cx = prior[0] + loc[0] * variance0 * prior[2];
    float const cy = prior[1] + loc[1] * variance0 * prior[3];
    float const w = prior[2] * std::exp(loc[2] * variance1);
    float const h = prior[3] * std::exp(loc[3] * variance1);
    float const x1 = cx - w / 2.0F;
    float const y1 = cy - h / 2.0F;
    return Box{x1, y1, x1 + w, y1 + h};
}

std::vector<ImageDetections> postprocessBatch(PostprocessInput const& in, SoftNmsParams const& p, int threads)
{
    int32_t const B = in.batch;
    int32_t const A = in.numAnchors;
    int32_t const C = in.numClasses;
    std::vector<ImageDetections> result(static_cast<size_t>(std::max(B, 0)));
    if (B <= 0 || A <= 0 || C <= 0)
        return result;
    threads = std::max(threads, 1);

    // 1. Threshold: each image's anchors in up to `threads` ranges of at least kScanScores scores.
    int64_t const perImage = std::min<int64_t>(threads, std::max<int64_t>(1, int64_t{A} * C / kScanScores));
    std::vector<ScanTask> scanTasks;
    for (int32_t b = 0; b < B; ++b)
    {
        for (int64_t k = 0; k < perImage; ++k)
        {
            auto const begin = static_cast<int32_t>(A * k / perImage);
            scanTasks.push_back({b, begin, static_cast<int32_t>(A * (k + 1) / perImage)});
        }
    }
    std::vector<std::vector<Hit>> scanHits(scanTasks.size());
    parallelFor(static_cast<int64_t>(scanTasks.size()), threads,
        [&](int64_t i) { scan(in, scanTasks[i], p.score_threshold, scanHits[i]); });

    // Per image: hits grouped by class (anchor order kept), one task per non-empty (image, class).
    std::vector<Hit> grouped;
    std::vector<int64_t> classBegin(static_cast<size_t>(B) * C + 1, 0);
    for (size_t t = 0; t < scanTasks.size(); ++t)
    {
        for (Hit const& h : scanHits[t])
            ++classBegin[static_cast<size_t>(scanTasks[t].image) * C + h.classId + 1];
    }
    for (size_t i = 1; i < classBegin.size(); ++i)
        classBegin[i] += classBegin[i - 1];
    grouped.resize(static_cast<size_t>(classBegin.back()));
    {
        std::vector<int64_t> next(classBegin.begin(), classBegin.end() - 1);
        for (size_t t = 0; t < scanTasks.size(); ++t) // tasks in anchor order within an image
        {
            for (Hit const& h : scanHits[t])
                grouped[static_cast<size_t>(next[static_cast<size_t>(scanTasks[t].image) * C + h.classId]++)] = h;
        }
    }
    scanHits.clear();
    std::vector<int64_t> classTasks; // (image * C + class), largest first
    for (int64_t bc = 0; bc < int64_t{B} * C; ++bc)
    {
        if (classBegin[bc + 1] > classBegin[bc])
            classTasks.push_back(bc);
    }
    std::stable_sort(classTasks.begin(), classTasks.end(), [&](int64_t x, int64_t y)
        { return classBegin[x + 1] - classBegin[x] > classBegin[y + 1] - classBegin[y]; });

    // 2. Soft-NMS per (image, class).
    std::vector<std::vector<Emitted>> emitted(static_cast<size_t>(B) * C);
    int const classThreads = static_cast<int64_t>(grouped.size()) >= kParallelCandidates ? threads : 1;
    parallelFor(static_cast<int64_t>(classTasks.size()), classThreads,
        [&](int64_t i)
        {
            int64_t const bc = classTasks[i];
            classNms(grouped.data() + classBegin[bc], static_cast<size_t>(classBegin[bc + 1] - classBegin[bc]), p,
                emitted[bc]);
        });

    // 3. Merge per image: score desc, class asc, anchor asc; at most max_detections.
    parallelFor(B, B > 1 ? threads : 1,
        [&](int64_t b)
        {
            std::vector<Emitted> all;
            for (int32_t c = 0; c < C; ++c)
            {
                auto& e = emitted[b * C + c];
                all.insert(all.end(), e.begin(), e.end());
            }
            std::sort(all.begin(), all.end(),
                [](Emitted const& x, Emitted const& y)
                {
                    SoftNmsCandidate const& u = x.detection;
                    SoftNmsCandidate const& v = y.detection;
                    if (u.score != v.score)
                        return u.score > v.score;
                    if (u.classId != v.classId)
                        return u.classId < v.classId;
                    return u.anchor < v.anchor;
                });
            if (p.max_detections > 0 && all.size() > static_cast<size_t>(p.max_detections))
                all.resize(static_cast<size_t>(p.max_detections));
            ImageDetections& out = result[static_cast<size_t>(b)];
            out.detections.reserve(all.size());
            out.boxes.reserve(all.size());
            for (Emitted const& e : all)
            {
                out.detections.push_back(e.detection);
                out.boxes.push_back(e.box);
            }
        });
    return result;
}

} // namespace m2det
