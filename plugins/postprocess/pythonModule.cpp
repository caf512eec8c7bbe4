// m2det._postprocess: the CPU post-processing (cpuPostprocess.h) for Python; m2det/postprocess.py
// wraps it.  Every call releases the GIL while it computes.
#include "cpuPostprocess.h"
#include "softNmsApi.h"
#include "threadPool.h"

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

namespace nb = nanobind;

namespace
{

using Scores3 = nb::ndarray<float const, nb::ndim<3>, nb::device::cpu>;
using Boxes3 = nb::ndarray<float const, nb::ndim<3>, nb::device::cpu>;
using Priors = nb::ndarray<float const, nb::shape<-1, 4>, nb::c_contig, nb::device::cpu>;
using Boxes2 = nb::ndarray<float const, nb::shape<-1, 4>, nb::device::cpu>;
using Scores1 = nb::ndarray<float const, nb::ndim<1>, nb::device::cpu>;

m2det::SoftNmsParams makeParams(int method, float scoreThreshold, float iouThreshold, float sigma, float minScore,
    int maxCandidates, int keepPerClass, int maxDetections)
{
    m2det::SoftNmsParams p{};
    p.score_threshold = scoreThreshold;
    p.iou_threshold = iouThreshold;
    p.sigma = sigma;
    p.min_score = minScore;
    p.method = method;
    p.max_candidates = maxCandidates;
    p.keep_per_class = keepPerClass;
    p.max_detections = maxDetections;
    m2det::SoftNmsParams checked = p;
    checked.max_detections = maxDetections > 0 ? maxDetections : 1; // 0: no cap, here only
    if (char const* why = m2det::softNmsCheck(checked, 1, 1, false))
        throw nb::value_error(why);
    if (maxDetections < 0)
        throw nb::value_error("max_detections must be >= 0 (0: no cap)");
    if (!(scoreThreshold >= 0.0F) || !(minScore >= 0.0F))
        throw nb::value_error("score_threshold and min_score must be >= 0");
    return p;
}

//! A new numpy array of `shape` owning `values`.
template <typename T>
nb::ndarray<nb::numpy, T> toNumpy(std::vector<T>&& values, std::initializer_list<size_t> shape)
{
    auto* owned = new std::vector<T>(std::move(values));
    nb::capsule owner(owned, [](void* ptr) noexcept { delete static_cast<std::vector<T>*>(ptr); });
    return nb::ndarray<nb::numpy, T>(owned->data(), shape, owner);
}

void requireLastAxisContiguous(int64_t stride, char const* name)
{
    if (stride != 1)
        throw nb::value_error((std::string(name) + ": the last axis must be contiguous").c_str());
}

//! (num [B] int32, boxes [B,K,4] float32, scores [B,K] float32, classes [B,K] int32), K = max_detections
//! or, when it is 0, the largest image's count.
nb::tuple packDetections(std::vector<m2det::ImageDetections> const& images, int maxDetections)
{
    size_t k = 0;
    for (auto const& img : images)
        k = std::max(k, img.detections.size());
    if (maxDetections > 0)
        k = static_cast<size_t>(maxDetections);
    size_t const b = images.size();
    std::vector<int32_t> num(b, 0);
    std::vector<float> boxes(b * k * 4, 0.0F);
    std::vector<float> scores(b * k, 0.0F);
    std::vector<int32_t> classes(b * k, 0);
    for (size_t i = 0; i < b; ++i)
    {
        auto const& img = images[i];
        size_t const n = std::min(img.detections.size(), k);
        num[i] = static_cast<int32_t>(n);
        for (size_t j = 0; j < n; ++j)
        {
            std::memcpy(&boxes[(i * k + j) * 4], &img.boxes[j], sizeof(float) * 4);
            scores[i * k + j] = img.detections[j].score;
            classes[i * k + j] = img.detections[j].classId;
        }
    }
    return nb::make_tuple(toNumpy(std::move(num), {b}), toNumpy(std::move(boxes), {b, k, 4}),
        toNumpy(std::move(scores), {b, k}), toNumpy(std::move(classes), {b, k}));
}

nb::tuple batchedNms(Boxes3 boxes, Scores3 scores, std::optional<Priors> priors, float variance0, float variance1,
    int method, float scoreThreshold, float iouThreshold, float sigma, float minScore, int maxCandidates,
    int keepPerClass, int maxDetections, int threads)
{
    m2det::SoftNmsParams const p = makeParams(
        method, scoreThreshold, iouThreshold, sigma, minScore, maxCandidates, keepPerClass, maxDetections);
    if (boxes.shape(0) != scores.shape(0) || boxes.shape(1) != scores.shape(1) || boxes.shape(2) != 4)
        throw nb::value_error("expected boxes [B,A,4] and scores [B,A,C]");
    if (priors && priors->shape(0) != boxes.shape(1))
        throw nb::value_error("expected priors [A,4]");
    if (scores.shape(1) > INT32_MAX || scores.shape(2) > INT32_MAX || scores.shape(0) > INT32_MAX)
        throw nb::value_error("B, A and C must each be < 2^31");
    requireLastAxisContiguous(scores.stride(2), "scores");
    requireLastAxisContiguous(boxes.stride(2), "boxes");
    m2det::PostprocessInput in;
    in.batch = static_cast<int32_t>(scores.shape(0));
    in.numAnchors = static_cast<int32_t>(scores.shape(1));
    in.numClasses = static_cast<int32_t>(scores.shape(2));
    in.scores = {scores.data(), scores.stride(0), scores.stride(1)};
    in.boxes = {boxes.data(), boxes.stride(0), boxes.stride(1)};
    if (priors)
    {
        in.priors = priors->data();
        in.variance[0] = variance0;
        in.variance[1] = variance1;
    }
    std::vector<m2det::ImageDetections> images;
    {
        nb::gil_scoped_release release;
        images = m2det::postprocessBatch(in, p, threads);
    }
    return packDetections(images, maxDetections);
}

nb::tuple softNms(Boxes2 boxes, Scores1 scores, int method, float scoreThreshold, float iouThreshold, float sigma,
    float minScore, int maxCandidates, int keepPerClass)
{
    m2det::SoftNmsParams const p
        = makeParams(method, scoreThreshold, iouThreshold, sigma, minScore, maxCandidates, keepPerClass, 0);
    if (boxes.shape(0) != scores.shape(0))
        throw nb::value_error("expected boxes [N,4] and scores [N]");
    if (scores.shape(0) > INT32_MAX)
        throw nb::value_error("N must be < 2^31");
    requireLastAxisContiguous(boxes.stride(1), "boxes");
    m2det::PostprocessInput in;
    in.batch = 1;
    in.numAnchors = static_cast<int32_t>(scores.shape(0));
    in.numClasses = 1;
    in.scores = {scores.data(), 0, scores.stride(0)};
    in.boxes = {boxes.data(), 0, boxes.stride(0)};
    std::vector<m2det::ImageDetections> images;
    {
        nb::gil_scoped_release release;
        images = m2det::postprocessBatch(in, p, 1);
    }
    auto const& dets = images.empty() ? std::vector<m2det::SoftNmsCandidate>{} : images[0].detections;
    std::vector<int64_t> index(dets.size());
    std::vector<float> kept(dets.size());
    for (size_t i = 0; i < dets.size(); ++i)
    {
        index[i] = dets[i].anchor;
        kept[i] = dets[i].score;
    }
    size_t const n = dets.size();
    return nb::make_tuple(toNumpy(std::move(index), {n}), toNumpy(std::move(kept), {n}));
}

using AnyArray = nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu>;

//! A failed C ABI call as ValueError: "soft-NMS failed (status N): <the library's message>".
[[noreturn]] void throwApiError(int status)
{
    std::string const message
        = "soft-NMS failed (status " + std::to_string(status) + "): " + m2det_soft_nms_last_error();
    throw nb::value_error(message.c_str());
}

//! The C ABI's host entry points (softNmsApi.h), in process: m2det_soft_nms_cpu, the plain-loop C++
//! reference, on boxes [B,A,4] float32 and scores [B,A,C] float32 or float16 (passed as uint16 bits),
//! padded to K = params.max_detections.  The parameters go unchecked to the C ABI, which reports.
nb::tuple referenceNms(AnyArray boxes, AnyArray scores, M2DetSoftNmsParams const& p)
{
    bool const half = scores.dtype() == nb::dtype<uint16_t>();
    if (boxes.dtype() != nb::dtype<float>() || (!half && scores.dtype() != nb::dtype<float>()))
        throw nb::value_error("expected float32 boxes and float32 or float16 (as uint16) scores");
    if (boxes.ndim() != 3 || scores.ndim() != 3 || boxes.shape(2) != 4 || boxes.shape(0) != scores.shape(0)
        || boxes.shape(1) != scores.shape(1))
        throw nb::value_error("expected boxes [B,A,4] and scores [B,A,C]");
    if (scores.shape(0) > INT32_MAX || scores.shape(1) > INT32_MAX || scores.shape(2) > INT32_MAX)
        throw nb::value_error("B, A and C must each be < 2^31");
    size_t const b = scores.shape(0);
    size_t const k = p.max_detections > 0 ? static_cast<size_t>(p.max_detections) : 0;
    // At least one element each: the C ABI rejects NULL outputs even when K is 0 (its check then says why).
    std::vector<int32_t> num(std::max<size_t>(b, 1));
    std::vector<float> outBoxes(std::max<size_t>(b * k * 4, 1));
    std::vector<float> outScores(std::max<size_t>(b * k, 1));
    std::vector<int32_t> outClasses(std::max<size_t>(b * k, 1));
    int status;
    {
        nb::gil_scoped_release release;
        status = m2det_soft_nms_cpu(boxes.data(), scores.data(), half ? 1 : 0, static_cast<int>(b),
            static_cast<int>(scores.shape(1)), static_cast<int>(scores.shape(2)), &p, num.data(), outBoxes.data(),
            outScores.data(), outClasses.data());
    }
    if (status != M2DET_SOFT_NMS_OK)
        throwApiError(status);
    return nb::make_tuple(toNumpy(std::move(num), {b}), toNumpy(std::move(outBoxes), {b, k, 4}),
        toNumpy(std::move(outScores), {b, k}), toNumpy(std::move(outClasses), {b, k}));
}

//! m2det_soft_nms_check: None when `p` can run on A anchors and C classes, else why.
std::optional<std::string> checkParams(
    M2DetSoftNmsParams const& p, int64_t numAnchors, int64_t numClasses, bool forCuda)
{
    char const* why = m2det_soft_nms_check(&p, numAnchors, numClasses, forCuda ? 1 : 0);
    return why ? std::optional<std::string>(why) : std::nullopt;
}

//! m2det_soft_nms_workspace_size; an invalid problem raises with the library's reason.
size_t workspaceSize(int64_t batch, int64_t numAnchors, int64_t numClasses, M2DetSoftNmsParams const& p)
{
    size_t const size = m2det_soft_nms_workspace_size(batch, numAnchors, numClasses, &p);
    if (size == 0)
        throw nb::value_error((std::string("soft-NMS workspace size: ") + m2det_soft_nms_last_error()).c_str());
    return size;
}

} // namespace

NB_MODULE(_postprocess, m)
{
    m.doc() = "Compiled CPU post-processing of M2Det outputs (decode, threshold, soft-NMS, merge); "
              "use it through m2det.postprocess.";
    m.def("batched_nms", &batchedNms, nb::arg("boxes"), nb::arg("scores"), nb::arg("priors").none(),
        nb::arg("variance0"), nb::arg("variance1"), nb::arg("method"), nb::arg("score_threshold"),
        nb::arg("iou_threshold"), nb::arg("sigma"), nb::arg("min_score"), nb::arg("max_candidates"),
        nb::arg("keep_per_class"), nb::arg("max_detections"), nb::arg("threads"));
    m.def("soft_nms", &softNms, nb::arg("boxes"), nb::arg("scores"), nb::arg("method"), nb::arg("score_threshold"),
        nb::arg("iou_threshold"), nb::arg("sigma"), nb::arg("min_score"), nb::arg("max_candidates"),
        nb::arg("keep_per_class"));
    nb::class_<M2DetSoftNmsParams>(m, "SoftNmsParams", "M2DetSoftNmsParams (softNmsParams.h): the 8 attributes")
        .def(nb::init<>())
        .def_rw("score_threshold", &M2DetSoftNmsParams::score_threshold)
        .def_rw("iou_threshold", &M2DetSoftNmsParams::iou_threshold)
        .def_rw("sigma", &M2DetSoftNmsParams::sigma)
        .def_rw("min_score", &M2DetSoftNmsParams::min_score)
        .def_rw("method", &M2DetSoftNmsParams::method)
        .def_rw("max_candidates", &M2DetSoftNmsParams::max_candidates)
        .def_rw("keep_per_class", &M2DetSoftNmsParams::keep_per_class)
        .def_rw("max_detections", &M2DetSoftNmsParams::max_detections);
    m.def("reference_nms", &referenceNms, nb::arg("boxes"), nb::arg("scores"), nb::arg("params"));
    m.def("check_params", &checkParams, nb::arg("params"), nb::arg("num_anchors"), nb::arg("num_classes"),
        nb::arg("for_cuda"));
    m.def("workspace_size", &workspaceSize, nb::arg("batch"), nb::arg("num_anchors"), nb::arg("num_classes"),
        nb::arg("params"));
    m.def("available_threads", &m2det::availableThreads);
}
