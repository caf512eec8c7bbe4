// Runs the CUDA kernels of softNmsKernels.cuh on the CPU (cudaEmulation.h) against the C++
// reference, bit for bit (the host expf serves both, so gaussian is exact too): selection with and
// without the radix-select top-k, ties, emission limits, the merge's radix select and padding,
// float32 and float16 scores.  Catches logic errors of the kernels where no GPU exists; races and
// device-only numerics are the GPU tests' job (tests/test_plugin_gpu.py).
#include "cudaEmulation.h"

#include "softNmsApi.h"
#include "softNmsKernels.cuh"

#include <cstdio>
#include <random>

namespace
{

struct Problem
{
    int32_t B, A, C;
    bool half;
    m2det::SoftNmsParams p;
    std::vector<float> boxes;      // [B,A,4]
    std::vector<float> scores;     // [B,A,C]
    std::vector<uint16_t> scores16; // [B,A,C] when half
};

struct Outputs
{
    std::vector<int32_t> num;
    std::vector<float> boxes, scores;
    std::vector<int32_t> classes;

    explicit Outputs(Problem const& pr)
        : num(pr.B, -1)
        , boxes(static_cast<size_t>(pr.B) * pr.p.max_detections * 4, -1.0F)
        , scores(static_cast<size_t>(pr.B) * pr.p.max_detections, -1.0F)
        , classes(static_cast<size_t>(pr.B) * pr.p.max_detections, -1)
    {
    }
    bool operator==(Outputs const& o) const
    {
        return num == o.num && classes == o.classes
            && std::memcmp(boxes.data(), o.boxes.data(), boxes.size() * 4) == 0
            && std::memcmp(scores.data(), o.scores.data(), scores.size() * 4) == 0;
    }
};

uint16_t toHalfBits(float v) // v in [0, 1], exactly representable or rounded down: test data only
{
    if (v < 0x1p-14F)
        return static_cast<uint16_t>(v * 0x1p24F);
    int exponent = 0;
    float const m = std::frexp(v, &exponent); // v = m * 2^exponent, m in [0.5, 1)
    return static_cast<uint16_t>(((exponent + 14) << 10) | (static_cast<int>(m * 2048.0F) & 0x3FF));
}

Problem randomProblem(std::mt19937& rng, int index)
{
    std::uniform_real_distribution<float> unit(0.0F, 1.0F);
    Problem pr{};
    pr.B = 1 + index % 2;
    pr.C = 1 + index % 3;
    pr.A = 50 + static_cast<int32_t>(rng() % 600);
    pr.half = index % 4 == 3;
    bool const ties = index % 5 < 2;
    int const centers = pr.A / 8 + 1;
    std::vector<float> cx(centers), cy(centers);
    for (int i = 0; i < centers; ++i)
    {
        cx[i] = unit(rng);
        cy[i] = unit(rng);
    }
    for (int32_t i = 0; i < pr.B * pr.A; ++i)
    {
        int const c = static_cast<int>(rng() % centers);
        float const w = 0.01F + 0.3F * unit(rng);
        float const h = 0.01F + 0.3F * unit(rng);
        float x = cx[c] + 0.05F * (unit(rng) - 0.5F);
        float y = cy[c] + 0.05F * (unit(rng) - 0.5F);
        float box[4] = {x - w / 2, y - h / 2, x + w / 2, y + h / 2};
        if (rng() % 10 == 0)
            box[2] = box[0]; // zero width
        if (rng() % 20 == 0)
            std::swap(box[0], box[2]); // inverted
        pr.boxes.insert(pr.boxes.end(), box, box + 4);
    }
    for (int64_t i = 0; i < static_cast<int64_t>(pr.B) * pr.A * pr.C; ++i)
    {
        float s = unit(rng);
        s = s * s * s;
        if (ties)
            s = std::floor(s * 16.0F) / 16.0F;
        if (pr.half)
        {
            pr.scores16.push_back(toHalfBits(s));
            s = __half2float(__half{pr.scores16.back()});
        }
        pr.scores.push_back(s);
    }
    float const thresholds[] = {0.0F, 0.05F, 0.1F};
    float const nts[] = {0.3F, 0.5F, 0.7F};
    int32_t const maxCands[] = {1, 7, 60, 200, M2DET_MAX_CANDIDATES};
    int32_t const keeps[] = {0, 1, 5, 20};
    int32_t const ks[] = {1, 10, 100, 2000};
    pr.p.method = index % 3;
    pr.p.score_threshold = thresholds[rng() % 3];
    pr.p.iou_threshold = nts[rng() % 3];
    pr.p.sigma = 0.5F;
    pr.p.min_score = rng() % 2 ? 0.001F : 0.02F;
    pr.p.max_candidates = maxCands[rng() % 5];
    pr.p.keep_per_class = keeps[rng() % 4];
    if (pr.p.keep_per_class == 0 && pr.p.max_candidates > 60)
        pr.p.max_candidates = 60; // bound the emulated emission loop
    pr.p.max_detections = ks[rng() % 4];
    return pr;
}

Outputs emulate(Problem const& pr)
{
    using namespace m2det::kernels;
    m2det::SoftNmsParams const& p = pr.p;
    auto const keepCap = static_cast<int32_t>(m2det::softNmsKeepCapacity(p, pr.A));
    auto const lists = static_cast<size_t>(pr.B) * pr.C;
    std::vector<float> wsScores(lists * keepCap, -7.0F);
    std::vector<int32_t> wsAnchors(lists * keepCap, -7);
    std::vector<int32_t> wsCounts(lists, -7);
    ClassLists ws{wsScores.data(), wsAnchors.data(), wsCounts.data(), keepCap};
    int32_t const maxCand = p.max_candidates < pr.A ? p.max_candidates : pr.A;
    auto const threads = static_cast<unsigned>(classThreads(maxCand));
    float const* boxes = pr.boxes.data();
    if (pr.half)
        emu::launch(static_cast<unsigned>(lists), threads, [&] {
            softNmsClassKernel<true>(boxes, pr.scores16.data(), pr.A, pr.C, p, maxCand, ws);
        });
    else
        emu::launch(static_cast<unsigned>(lists), threads, [&] {
            softNmsClassKernel<false>(boxes, pr.scores.data(), pr.A, pr.C, p, maxCand, ws);
        });
    Outputs out(pr);
    emu::launch(static_cast<unsigned>(pr.B), 128, [&] {
        softNmsMergeKernel(boxes, pr.A, pr.C, p.max_detections, ws, out.num.data(), out.boxes.data(),
            out.scores.data(), out.classes.data());
    });
    return out;
}

Outputs reference(Problem const& pr)
{
    Outputs out(pr);
    void const* scores = pr.half ? static_cast<void const*>(pr.scores16.data()) : pr.scores.data();
    if (m2det_soft_nms_cpu(pr.boxes.data(), scores, pr.half ? 1 : 0, pr.B, pr.A, pr.C, &pr.p, out.num.data(),
            out.boxes.data(), out.scores.data(), out.classes.data())
        != M2DET_SOFT_NMS_OK)
        std::fprintf(stderr, "reference failed: %s\n", m2det_soft_nms_last_error());
    return out;
}

} // namespace

int main()
{
    std::mt19937 rng(11);
    int failures = 0;
    int const cases = 24;
    for (int i = 0; i < cases; ++i)
    {
        Problem const pr = randomProblem(rng, i);
        Outputs const ref = reference(pr);
        if (!(emulate(pr) == ref))
        {
            ++failures;
            std::fprintf(stderr, "FAIL case %d: B=%d A=%d C=%d half=%d method=%d thr=%g Nt=%g min=%g cand=%d keep=%d K=%d\n",
                i, pr.B, pr.A, pr.C, pr.half ? 1 : 0, pr.p.method, pr.p.score_threshold, pr.p.iou_threshold,
                pr.p.min_score, pr.p.max_candidates, pr.p.keep_per_class, pr.p.max_detections);
        }
    }
    if (failures == 0)
        std::printf("soft_nms_kernel_emulation_test: %d cases identical to the reference\n", cases);
    return failures == 0 ? 0 : 1;
}
