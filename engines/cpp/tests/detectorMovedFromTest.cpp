// A moved-from m2det::Detector must not be dereferenced: every method throws std::logic_error
// naming the method, while the Detector it was moved into keeps working (also across move
// assignment).  Needs a model: an NMS plan (a GPU and libnvinfer) or, with the OpenVINO backend,
// an exported ONNX file:
//   M2DET_TEST_MODEL=model_nms.plan [M2DET_TEST_PLUGIN_LIB=libm2det_plugins.so] m2det_detector_test
//   M2DET_TEST_MODEL=m2det_tiny.onnx m2det_detector_test
// ($M2DET_TEST_PLAN is read too.) Without a model it prints why and exits 77 (ctest: skipped).
#include "m2det/detector.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
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

//! True when `call` throws std::logic_error whose message names `method` and says "moved from".
bool throwsMovedFrom(std::function<void()> const& call, char const* method)
{
    try
    {
        call();
    }
    catch (std::logic_error const& e)
    {
        std::string const what = e.what();
        return what.find(std::string("m2det::Detector::") + method) != std::string::npos
            && what.find("moved from") != std::string::npos;
    }
    catch (std::exception const&)
    {
        return false;
    }
    return false;
}

//! Every public method of a moved-from `d` throws.
void checkMovedFrom(m2det::Detector& d, int line)
{
    std::vector<uint8_t> const pixels(8 * 8 * 3, 128);
    m2det::ImageView const image{pixels.data(), 8, 8, 0};
    int const before = gFailures;
    CHECK(throwsMovedFrom([&] { static_cast<void>(d.inputSize()); }, "inputSize"));
    CHECK(throwsMovedFrom([&] { static_cast<void>(d.minBatch()); }, "minBatch"));
    CHECK(throwsMovedFrom([&] { static_cast<void>(d.maxBatch()); }, "maxBatch"));
    CHECK(throwsMovedFrom([&] { static_cast<void>(d.maxDetections()); }, "maxDetections"));
    CHECK(throwsMovedFrom([&] { static_cast<void>(d.backendName()); }, "backendName"));
    CHECK(throwsMovedFrom([&] { static_cast<void>(d.detect(image)); }, "detect"));
    CHECK(throwsMovedFrom([&] { static_cast<void>(d.detect(std::vector<m2det::ImageView>{image})); }, "detect"));
#ifdef M2DET_WITH_OPENCV
    cv::Mat const mat(8, 8, CV_8UC3, cv::Scalar(128, 128, 128));
    CHECK(throwsMovedFrom([&] { static_cast<void>(d.detect(mat)); }, "detect"));
    CHECK(throwsMovedFrom([&] { static_cast<void>(d.detect(std::vector<cv::Mat>{mat})); }, "detect"));
#endif
    if (gFailures != before)
        std::fprintf(stderr, "  (moved-from checks called from line %d)\n", line);
}

//! `d` holds a plan: its accessors answer and one detection runs.
void checkUsable(m2det::Detector& d, int32_t size)
{
    CHECK(d.inputSize() == size);
    CHECK(d.minBatch() >= 1 && d.maxBatch() >= d.minBatch() && d.maxDetections() >= 1);
    std::vector<uint8_t> const pixels(static_cast<std::size_t>(size) * size * 3, 128);
    m2det::ImageView const image{pixels.data(), size, size, 0};
    if (d.minBatch() == 1)
        CHECK(d.detect(image).size() <= static_cast<std::size_t>(d.maxDetections()));
}

} // namespace

int main()
{
    char const* plan = std::getenv("M2DET_TEST_MODEL");
    if (plan == nullptr || *plan == '\0')
        plan = std::getenv("M2DET_TEST_PLAN");
    if (plan == nullptr || *plan == '\0')
    {
        std::printf("m2det_detector_test: skipped: set M2DET_TEST_MODEL to an M2Det NMS plan "
                    "(and M2DET_TEST_PLUGIN_LIB to libm2det_plugins.so) or an exported ONNX file\n");
        return 77;
    }
    try
    {
        m2det::DetectorOptions options;
        if (char const* lib = std::getenv("M2DET_TEST_PLUGIN_LIB"))
            options.pluginLibrary = lib;
        m2det::Detector a(plan, options);
        int32_t const size = a.inputSize();

        m2det::Detector b(std::move(a)); // move construction
        checkMovedFrom(a, __LINE__);
        checkUsable(b, size);

        a = std::move(b); // move assignment into the moved-from one revives it
        checkUsable(a, size);
        checkMovedFrom(b, __LINE__);
    }
    catch (std::exception const& e)
    {
        std::fprintf(stderr, "FAIL: unexpected exception: %s\n", e.what());
        return 1;
    }
    if (gFailures == 0)
        std::printf("m2det_detector_test: all checks passed\n");
    return gFailures == 0 ? 0 : 1;
}
