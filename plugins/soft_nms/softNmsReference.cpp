#include "softNmsReference.h"

#include <algorithm>

namespace m2det
{

std::vector<Detection> softNmsClass(Box const* boxes, float const* scores, int32_t numAnchors, int32_t classId,
    SoftNmsParams const& p)
{
    // 1. Candidates: score > score_threshold; the max_candidates highest (ties: lower anchor).
    std::vector<Detection> cand;
    for (int32_t a = 0; a < numAnchors; ++a)
    {
        if (scores[a] > p.score_threshold)
            cand.push_back({scores[a], classId, a});
    }
    if (cand.size() > static_cast<size_t>(p.max_candidates))
    {
        std::stable_sort(cand.begin(), cand.end(),
            [](Detection const& x, Detection const& y) { return x.score > y.score; });
        cand.resize(static_cast<size_t>(p.max_candidates));
    }
    std::vector<float> area(cand.size());
    for (size_t i = 0; i < cand.size(); ++i)
        area[i] = boxArea(boxes[cand[i].anchor]);

    // 2. Emit the best remaining candidate, decay the others by their overlap with it.
    std::vector<Detection> kept;
    std::vector<bool> alive(cand.size(), true);
    while (p.keep_per_class <= 0 || kept.size() < static_cast<size_t>(p.keep_per_class))
    {
        int64_t best = -1;
        for (size_t i = 0; i < cand.size(); ++i)
        {
            if (alive[i]
                && (best < 0 || emitsBefore(cand[i].score, cand[i].anchor, cand[best].score, cand[best].anchor)))
                best = static_cast<int64_t>(i);
        }
        if (best < 0)
            break;
        kept.push_back(cand[best]);
        alive[best] = false;
        Box const& e = boxes[cand[best].anchor];
        for (size_t i = 0; i < cand.size(); ++i)
        {
            if (!alive[i])
                continue;
            float const iou = boxIou(e, area[best], boxes[cand[i].anchor], area[i]);
            cand[i].score = cand[i].score * decayWeight(iou, p.method, p.iou_threshold, p.sigma);
            if (cand[i].score < p.min_score)
                alive[i] = false;
        }
    }
    return kept;
}

std::vector<Detection> softNmsImage(
    float const* boxes, float const* scores, int32_t numAnchors, int32_t numClasses, SoftNmsParams const& p)
{
    auto const* b = reinterpret_cast<Box const*>(boxes);
    std::vector<float> column(static_cast<size_t>(numAnchors));
    std::vector<Detection> all;
    for (int32_t c = 0; c < numClasses; ++c)
    {
        for (int32_t a = 0; a < numAnchors; ++a)
            column[a] = scores[static_cast<int64_t>(a) * numClasses + c];
        std::vector<Detection> kept = softNmsClass(b, column.data(), numAnchors, c, p);
        all.insert(all.end(), kept.begin(), kept.end());
    }
    // 3. Merge: score descending, then class, then anchor ascending.
    std::sort(all.begin(), all.end(), [](Detection const& x, Detection const& y) {
        if (x.score != y.score)
            return x.score > y.score;
        if (x.classId != y.classId)
            return x.classId < y.classId;
        return x.anchor < y.anchor;
    });
    if (all.size() > static_cast<size_t>(p.max_detections))
        all.resize(static_cast<size_t>(p.max_detections));
    return all;
}

} // namespace m2det
