// m2det::Detector, the front end shared by every backend: picks the backend, checks the batch,
// preprocesses images into the backend's input buffer, guards moved-from objects.
#include "backend.h"
#include "m2det/detector.h"

#include <array>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace m2det
{
namespace
{

bool endsWith(std::string const& text, std::string const& suffix)
{
    if (text.size() < suffix.size())
    {
        return false;
    }
    for (std::size_t i = 0; i < suffix.size(); ++i)
    {
        char c = text[text.size() - suffix.size() + i];
        if (c >= 'A' && c <= 'Z')
        {
            c = static_cast<char>(c - 'A' + 'a');
        }
        if (c != suffix[i])
        {
            return false;
        }
    }
    return true;
}

std::unique_ptr<DetectorBackend> makeBackend(std::string const& path, DetectorOptions const& options)
{
    Backend backend = options.backend;
    if (backend == Backend::kAuto)
    {
        backend = endsWith(path, ".onnx") ? Backend::kOpenVINO : Backend::kTensorRT;
    }
    switch (backend)
    {
    case Backend::kTensorRT: return makeTensorRTBackend(path, options);
    case Backend::kOpenVINO: return makeOpenVINOBackend(path, options);
    case Backend::kAuto: break;
    }
    throw Error("m2det: unknown backend " + std::to_string(static_cast<int32_t>(backend)));
}

} // namespace

Detector::Detector(std::string const& modelPath, DetectorOptions const& options)
    : mImpl(makeBackend(modelPath, options))
{
}

Detector::~Detector() = default;
Detector::Detector(Detector&&) noexcept = default;
Detector& Detector::operator=(Detector&&) noexcept = default;

DetectorBackend& Detector::impl(char const* method) const
{
    if (!mImpl)
    {
        throw std::logic_error(std::string("m2det::Detector::") + method
            + ": this Detector was moved from and holds no model");
    }
    return *mImpl;
}

std::vector<Detection> Detector::detect(ImageView const& image)
{
    impl("detect");
    return detect(std::vector<ImageView>{image}).front();
}

std::vector<std::vector<Detection>> Detector::detect(std::vector<ImageView> const& images)
{
    DetectorBackend& d = impl("detect");
    d.checkBatch(images.size());
    std::vector<std::array<float, 2>> sizes;
    sizes.reserve(images.size());
    for (std::size_t b = 0; b < images.size(); ++b)
    {
        preprocessBgr(images[b], d.inputSize(), d.inputHost(static_cast<int32_t>(b)));
        sizes.push_back({static_cast<float>(images[b].width), static_cast<float>(images[b].height)});
    }
    return d.run(sizes);
}

#ifdef M2DET_WITH_OPENCV
namespace
{
ImageView view(cv::Mat const& image)
{
    if (image.empty() || image.type() != CV_8UC3)
    {
        throw Error("m2det: expected a non-empty CV_8UC3 (BGR) image");
    }
    return ImageView{image.ptr<uint8_t>(0), image.cols, image.rows, image.step[0]};
}
} // namespace

std::vector<Detection> Detector::detect(cv::Mat const& image)
{
    impl("detect");
    return detect(view(image));
}

std::vector<std::vector<Detection>> Detector::detect(std::vector<cv::Mat> const& images)
{
    impl("detect");
    std::vector<ImageView> views;
    views.reserve(images.size());
    for (cv::Mat const& image : images)
    {
        views.push_back(view(image));
    }
    return detect(views);
}
#endif

int32_t Detector::inputSize() const
{
    return impl("inputSize").inputSize();
}
int32_t Detector::minBatch() const
{
    return impl("minBatch").minBatch();
}
int32_t Detector::maxBatch() const
{
    return impl("maxBatch").maxBatch();
}
int32_t Detector::maxDetections() const
{
    return impl("maxDetections").maxDetections();
}
std::string Detector::backendName() const
{
    return impl("backendName").name();
}

} // namespace m2det
