// Hand-checked cases of the C++ soft-NMS reference and the host C ABI (run by ctest), including
// its error reporting: no exception crosses the C boundary.
#include "softNmsApi.h"
#include "softNmsApiBoundary.h"
#include "softNmsReference.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <new>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace
{

int gFailures = 0;

void check(bool ok, char const* what, int line)
{
    if (!ok)
    {
        std::fprintf(stderr, "FAIL line %d: %s\n", line, what);
        ++gFailures;
    }
}
#define CHECK(cond) check((cond), #cond, __LINE__)

m2det::SoftNmsParams params(int32_t method)
{
    m2det::SoftNmsParams p{};
    p.score_threshold = 0.05F;
    p.iou_threshold = 0.5F;
    p.sigma = 0.5F;
    p.min_score = 0.001F;
    p.method = method;
    p.max_candidates = 100;
    p.keep_per_class = 0;
    p.max_detections = 100;
    return p;
}

// Boxes: 0 and 1 overlap with IoU 0.6 (10x10 boxes shifted by 2.5); 2 is disjoint.
std::vector<m2det::Box> const kBoxes = {{0, 0, 10, 10}, {2.5F, 0, 12.5F, 10}, {20, 20, 30, 30}};

void testIou()
{
    m2det::Box const a = kBoxes[0];
    m2det::Box const b = kBoxes[1];
    float const iou = m2det::boxIou(a, m2det::boxArea(a), b, m2det::boxArea(b));
    CHECK(iou == 75.0F / 125.0F);
    CHECK(m2det::boxIou(a, 100.0F, kBoxes[2], 100.0F) == 0.0F);
    m2det::Box const point{1, 1, 1, 1};
    CHECK(m2det::boxIou(point, 0.0F, point, 0.0F) == 0.0F); // degenerate: union 0
}

void testMethods()
{
    float const scores[] = {0.9F, 0.8F, 0.7F};
    auto hard = m2det::softNmsClass(kBoxes.data(), scores, 3, 0, params(M2DET_SOFT_NMS_HARD));
    CHECK(hard.size() == 2 && hard[0].anchor == 0 && hard[1].anchor == 2 && hard[1].score == 0.7F);

    auto linear = m2det::softNmsClass(kBoxes.data(), scores, 3, 0, params(M2DET_SOFT_NMS_LINEAR));
    float const iou = 75.0F / 125.0F;
    CHECK(linear.size() == 3 && linear[0].anchor == 0 && linear[1].anchor == 2 && linear[2].anchor == 1);
    CHECK(linear[2].score == 0.8F * (1.0F - iou));

    auto gaussian = m2det::softNmsClass(kBoxes.data(), scores, 3, 0, params(M2DET_SOFT_NMS_GAUSSIAN));
    CHECK(gaussian.size() == 3 && gaussian[1].anchor == 2 && gaussian[2].anchor == 1);
    CHECK(gaussian[1].score == 0.7F && gaussian[2].score == 0.8F * expf(-(iou * iou) / 0.5F));
}

void testTiesLimitsAndThreshold()
{
    // Equal scores: the lower anchor is emitted first; score == threshold is not a candidate.
    float const tied[] = {0.5F, 0.5F, 0.05F};
    auto p = params(M2DET_SOFT_NMS_LINEAR);
    auto kept = m2det::softNmsClass(kBoxes.data(), tied, 3, 0, p);
    CHECK(kept.size() == 2 && kept[0].anchor == 0 && kept[1].anchor == 1);

    // max_candidates keeps the highest, ties by lower anchor; keep_per_class stops early.
    float const scores[] = {0.3F, 0.9F, 0.3F};
    p.max_candidates = 2;
    kept = m2det::softNmsClass(kBoxes.data(), scores, 3, 0, p);
    CHECK(kept.size() == 2 && kept[0].anchor == 1 && kept[1].anchor == 0);
    p.max_candidates = 100;
    p.keep_per_class = 1;
    kept = m2det::softNmsClass(kBoxes.data(), scores, 3, 0, p);
    CHECK(kept.size() == 1 && kept[0].anchor == 1);

    // min_score is strict: a decayed score equal to it survives.
    p = params(M2DET_SOFT_NMS_LINEAR);
    float const pair[] = {0.9F, 0.5F, 0.0F};
    p.min_score = 0.5F * (1.0F - 75.0F / 125.0F);
    CHECK(m2det::softNmsClass(kBoxes.data(), pair, 3, 0, p).size() == 2);
    p.min_score = std::nextafter(p.min_score, 1.0F);
    CHECK(m2det::softNmsClass(kBoxes.data(), pair, 3, 0, p).size() == 1);
}

void testMergeAndCApi()
{
    // 3 anchors x 2 classes.  Class 0 emits anchors 2 (0.7), 0 (0.6) and suppresses 1 (IoU 0.6 with
    // anchor 0); class 1 emits 0 (0.6), 2 (0.2).  The 0.6 tie goes to class 0.
    float const boxes[] = {0, 0, 10, 10, 2.5F, 0, 12.5F, 10, 20, 20, 30, 30};
    float const scores[] = {0.6F, 0.6F, 0.1F, 0.0F, 0.7F, 0.2F};
    auto p = params(M2DET_SOFT_NMS_HARD);
    p.max_detections = 3;
    int32_t num = -1;
    float outBoxes[12];
    float outScores[3];
    int32_t outClasses[3];
    CHECK(m2det_soft_nms_cpu(boxes, scores, 0, 1, 3, 2, &p, &num, outBoxes, outScores, outClasses) == 0);
    CHECK(num == 3);
    CHECK(outScores[0] == 0.7F && outClasses[0] == 0 && outBoxes[0] == 20.0F);
    CHECK(outScores[1] == 0.6F && outClasses[1] == 0 && outBoxes[4] == 0.0F);
    CHECK(outScores[2] == 0.6F && outClasses[2] == 1 && outBoxes[8] == 0.0F);

    // float16 scores (0.5 = 0x3800, 0.25 = 0x3400) give the same result as float32.
    uint16_t const half[] = {0x3800, 0x3400, 0x0000, 0x0000, 0x0000, 0x0000};
    CHECK(m2det_soft_nms_cpu(boxes, half, 1, 1, 3, 2, &p, &num, outBoxes, outScores, outClasses) == 0);
    CHECK(num == 2 && outScores[0] == 0.5F && outClasses[0] == 0 && outScores[1] == 0.25F && outClasses[1] == 1);
    CHECK(outScores[2] == 0.0F && outClasses[2] == 0 && outBoxes[8] == 0.0F); // padding

    p.method = 7;
    CHECK(m2det_soft_nms_check(&p, 3, 2, 0) != nullptr);
    CHECK(m2det_soft_nms_cpu(boxes, scores, 0, 1, 3, 2, &p, &num, outBoxes, outScores, outClasses)
        == M2DET_SOFT_NMS_INVALID_ARGUMENT);
    CHECK(std::string(m2det_soft_nms_last_error())
        == std::string("m2det_soft_nms_cpu: ") + m2det_soft_nms_check(&p, 3, 2, 0));
    p = params(M2DET_SOFT_NMS_HARD);
    CHECK(m2det_soft_nms_cpu(boxes, scores, 0, 0, 3, 2, &p, &num, outBoxes, outScores, outClasses)
        == M2DET_SOFT_NMS_INVALID_ARGUMENT);
    CHECK(std::strstr(m2det_soft_nms_last_error(), "batch must be >= 1") != nullptr);
    CHECK(m2det_soft_nms_cpu(boxes, nullptr, 0, 1, 3, 2, &p, &num, outBoxes, outScores, outClasses)
        == M2DET_SOFT_NMS_INVALID_ARGUMENT);
    CHECK(std::strstr(m2det_soft_nms_last_error(), "NULL") != nullptr);
    p.max_candidates = M2DET_MAX_CANDIDATES + 1;
    CHECK(m2det_soft_nms_check(&p, 3, 2, 0) == nullptr);
    CHECK(std::strstr(m2det_soft_nms_check(&p, 3, 2, 1),
              M2DET_ATTR_MAX_CANDIDATES " must be <= " M2DET_STRINGIFY(M2DET_MAX_CANDIDATES))
        != nullptr);
    CHECK(m2det_soft_nms_workspace_size(2, 3, 2, &p) == 0);
    CHECK(std::strstr(m2det_soft_nms_last_error(), "m2det_soft_nms_workspace_size: " M2DET_ATTR_MAX_CANDIDATES)
        != nullptr);
    p.max_candidates = 100;
    p.keep_per_class = 2; // 2 images x 2 classes x 2 entries
    CHECK(m2det_soft_nms_workspace_size(2, 3, 2, &p) == 3 * 256);
    // Absurd batch sizes: the workspace size would overflow size_t.
    CHECK(m2det_soft_nms_workspace_size(INT64_MAX / 2, 3, 2, &p) == 0);
    CHECK(std::strstr(m2det_soft_nms_last_error(), "does not fit in size_t") != nullptr);
    CHECK(m2det_soft_nms_workspace_size(int64_t{1} << 56, 1000, 80, &p) == 0);
    CHECK(m2det_soft_nms_workspace_size(int64_t{1} << 20, 1000, 80, &p) != 0);
}

void testDefaultsAndBoundary()
{
    // The plugin's defaults are the contract's and valid for the kernel.
    m2det::SoftNmsParams const d = m2det::softNmsDefaultParams();
    CHECK(d.score_threshold == M2DET_DEFAULT_SCORE_THRESHOLD && d.iou_threshold == M2DET_DEFAULT_IOU_THRESHOLD);
    CHECK(d.sigma == M2DET_DEFAULT_SIGMA && d.min_score == M2DET_DEFAULT_MIN_SCORE);
    CHECK(d.method == M2DET_SOFT_NMS_LINEAR && d.method == M2DET_DEFAULT_METHOD);
    CHECK(d.max_candidates == M2DET_MAX_CANDIDATES && d.keep_per_class == M2DET_DEFAULT_KEEP_PER_CLASS);
    CHECK(d.max_detections == M2DET_DEFAULT_MAX_DETECTIONS);
    CHECK(m2det::softNmsCheck(d, 1, 1, true) == nullptr);

    // apiGuard turns any exception into the error value and a last-error message.
    int const fromStd = m2det::apiGuard<int>("f", 42, []() -> int { throw std::bad_alloc(); });
    CHECK(fromStd == 42 && std::strcmp(m2det_soft_nms_last_error(), "f: std::bad_alloc") == 0);
    size_t const fromOther = m2det::apiGuard<size_t>("g", 0, []() -> size_t { throw 7; });
    CHECK(fromOther == 0 && std::strcmp(m2det_soft_nms_last_error(), "g: unknown C++ exception") == 0);
    CHECK(m2det::apiGuard<int>("h", 1, [] { return 5; }) == 5);
    CHECK(std::strcmp(m2det_soft_nms_last_error(), "g: unknown C++ exception") == 0); // success keeps it
    // A long message is truncated, not overflowed.
    std::string const longWhy(2000, 'x');
    m2det::apiGuard<int>("i", 1, [&]() -> int { throw std::runtime_error(longWhy); });
    CHECK(std::strlen(m2det_soft_nms_last_error()) == 511
        && std::strncmp(m2det_soft_nms_last_error(), "i: xxx", 6) == 0);
}

// The kernels' radix select run sequentially: the k-th highest key T (1-based) and how many keys
// equal to T belong to the top k.
template <typename Key>
Key radixSelect(std::vector<Key> const& keys, int k, int& remaining)
{
    Key prefix = 0;
    Key mask = 0;
    remaining = k;
    for (int shift = static_cast<int>(sizeof(Key)) * 8 - 8; shift >= 0; shift -= 8)
    {
        uint32_t hist[m2det::kSoftNmsRadixBins] = {};
        for (Key key : keys)
        {
            if ((key & mask) == prefix)
                ++hist[(key >> shift) & 0xFFU];
        }
        uint32_t digit = 0;
        m2det::radixPickDigit(hist, remaining, &digit, &remaining);
        prefix |= static_cast<Key>(digit) << shift;
        mask |= static_cast<Key>(0xFFU) << shift;
    }
    return prefix;
}

template <typename Key>
void checkRadixSelect(std::vector<Key> const& keys, int k)
{
    int remaining = 0;
    Key const t = radixSelect(keys, k, remaining);
    std::vector<Key> sorted = keys;
    std::sort(sorted.begin(), sorted.end(), std::greater<Key>());
    CHECK(t == sorted[static_cast<size_t>(k) - 1]);
    auto const above = std::count_if(keys.begin(), keys.end(), [t](Key v) { return v > t; });
    auto const equal = std::count(keys.begin(), keys.end(), t);
    CHECK(above == k - remaining && remaining >= 1 && remaining <= equal);
}

void testKeysAndRadixSelect()
{
    // scoreKey orders floats (negative, -0 == +0, subnormal, positive) and inverts exactly.
    float const ordered[] = {-2.0F, -1e-40F, 0.0F, 1e-40F, 0.25F, 0.5F, 1.0F, 3e38F};
    for (size_t i = 0; i + 1 < sizeof(ordered) / sizeof(ordered[0]); ++i)
        CHECK(m2det::scoreKey(ordered[i]) < m2det::scoreKey(ordered[i + 1]));
    for (float v : ordered)
        CHECK(m2det::scoreFromKey(m2det::scoreKey(v)) == v);
    CHECK(m2det::scoreKey(-0.0F) == m2det::scoreKey(0.0F));

    std::mt19937 rng(5);
    std::uniform_int_distribution<int> grid(0, 20);
    std::uniform_real_distribution<float> uniform(-1.0F, 1.0F);
    for (int trial = 0; trial < 200; ++trial)
    {
        std::vector<uint32_t> keys32;
        std::vector<unsigned long long> keys64;
        int const n = 1 + trial * 7;
        for (int i = 0; i < n; ++i)
        {
            float const v = trial % 2 ? static_cast<float>(grid(rng)) / 16.0F : uniform(rng); // ties on odd
            keys32.push_back(m2det::scoreKey(v));
            keys64.push_back((static_cast<unsigned long long>(keys32.back()) << 32) | (0xFFFFFFFFU - i));
        }
        for (int k : {1, n / 3 + 1, n})
        {
            checkRadixSelect(keys32, k);
            checkRadixSelect(keys64, k);
        }
    }
}

} // namespace

int main()
{
    testIou();
    testMethods();
    testTiesLimitsAndThreshold();
    testMergeAndCApi();
    testDefaultsAndBoundary();
    testKeysAndRadixSelect();
    if (gFailures == 0)
        std::printf("soft_nms_reference_test: all checks passed\n");
    return gFailures == 0 ? 0 : 1;
}
