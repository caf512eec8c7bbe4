#include "softNmsReference.h"

#include <algorithm>

namespace m2det
{

std::vector<SoftNmsCandidate> softNmsClass(Box const* boxes, float const* scores, int32_t numAnchors, int32_t classId,
    SoftNmsParams const& p)
{
    // 1. Candidates: score > score_threshold; the max_candidates highest (ties: lower anchor).
    std::vector<SoftNmsCandidate> cand;
    for (int32_t a = 0; a < numAnchors; ++a)
    {
        if (scores[a] > p.score_threshold)
            cand.push_back({scores[a], classId, a});
    }
    if (cand.size() > static_cast<size_t>(p.max_candidates))
    {
        std::stable_sort(cand.begin(), cand.end(),
            [](SoftNmsCandidate const& x, SoftNmsCandidate const& y) { return x.score > y.score; });
        cand.resize(static_cast<size_t>(p.max_candidates));
    }
    std::vector<float> area(cand.size());
    for (size_t i = 0; i < cand.size(); ++i)
        area[i] = boxArea(boxes[cand[i].anchor]);

    // 2. Emit the best remaining candidate, decay the others by their overlap with it.  `alive`
    // lists the remaining candidates in no particular order (the argmax breaks ties explicitly).
    std::vector<size_t> alive(cand.size());
    for (size_t i = 0; i < alive.size(); ++i)
        alive[i] = i;
    std::vector<SoftNmsCandidate> kept;
    while (!alive.empty() && (p.keep_per_class <= 0 || kept.size() < static_cast<size_t>(p.keep_per_class)))
    {
        size_t best = 0;
        for (size_t k = 1; k < alive.size(); ++k)
        {
            SoftNmsCandidate const& c = cand[alive[k]];
            if (emitsBefore(c.score, c.anchor, cand[alive[best]].score, cand[alive[best]].anchor))
                best = k;
        }
        size_t const e = alive[best];
        kept.push_back(cand[e]);
        alive[best] = alive.back();
        alive.pop_back();
        Box const& eBox = boxes[cand[e].anchor];
        for (size_t k = 0; k < alive.size();)
        {
            SoftNmsCandidate& c = cand[alive[k]];
            float const iou = boxIou(eBox, area[e], boxes[c.anchor], area[alive[k]]);
            c.score = c.score * decayWeight(iou, p.method, p.iou_threshold, p.sigma);
            if (c.score < p.min_score)
            {
                alive[k] = alive.back(); // discard
                alive.pop_back();
            }
            else
                ++k;
        }
    }
    return kept;
}

std::vector<SoftNmsCandidate> softNmsImage(
    float const* boxes, float const* scores, int32_t numAnchors, int32_t numClasses, SoftNmsParams const& p)
{
    auto const* b = reinterpret_cast<Box const*>(boxes);
    std::vector<float> column(static_cast<size_t>(numAnchors));
    std::vector<SoftNmsCandidate> all;
    for (int32_t c = 0; c < numClasses; ++c)
    {
        for (int32_t a = 0; a < numAnchors; ++a)
            column[a] = scores[static_cast<int64_t>(a) * numClasses + c];
        std::vector<SoftNmsCandidate> kept = softNmsClass(b, column.data(), numAnchors, c, p);
        all.insert(all.end(), kept.begin(), kept.end());
    }
    // 3. Merge: score descending, then class, then anchor ascending.
    std::sort(all.begin(), all.end(), [](SoftNmsCandidate const& x, SoftNmsCandidate const& y) {
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
