// Resize + layout conversion: BGR uint8 HxW -> float32 CHW SxS, values 0-255 (m2det/preprocess.py).
#include "m2det/detector.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#ifdef M2DET_WITH_OPENCV
#include <opencv2/imgproc.hpp>
#endif

namespace m2det
{
namespace
{

void checkImage(ImageView const& image, int32_t size)
{
    if (image.data == nullptr || image.width <= 0 || image.height <= 0)
    {
        throw Error("m2det: empty image");
    }
    if (image.stride != 0 && image.stride < static_cast<std::size_t>(image.width) * 3U)
    {
        throw Error("m2det: image stride " + std::to_string(image.stride) + " is smaller than width * 3");
    }
    if (size <= 0)
    {
        throw Error("m2det: bad network input size " + std::to_string(size));
    }
}

//! HWC uint8 rows (SxS, `stride` bytes apart) -> CHW float planes.
void toPlanes(uint8_t const* hwc, std::size_t stride, int32_t size, float* out)
{
    std::size_t const plane = static_cast<std::size_t>(size) * static_cast<std::size_t>(size);
    for (int32_t y = 0; y < size; ++y)
    {
        uint8_t const* row = hwc + static_cast<std::size_t>(y) * stride;
        std::size_t const base = static_cast<std::size_t>(y) * static_cast<std::size_t>(size);
        for (int32_t x = 0; x < size; ++x)
        {
            for (std::size_t c = 0; c < 3; ++c)
            {
                out[c * plane + base + static_cast<std::size_t>(x)] = static_cast<float>(row[x * 3 + static_cast<int32_t>(c)]);
            }
        }
    }
}

#ifndef M2DET_WITH_OPENCV
// cv::resize(INTER_LINEAR) of 8-bit images, reproduced: 11-bit fixed-point weights, a horizontal
// pass into int32 rows, then the vertical pass as OpenCV's vectorized code rounds it (16-bit high
// products of the rows shifted right by 4). Source positions follow OpenCV: x weights clamped at
// the borders, y weights kept and the rows clamped instead.
constexpr int32_t kCoefBits = 11;
constexpr float kCoefScale = static_cast<float>(1 << kCoefBits);

struct Taps
{
    std::vector<int32_t> first;  //!< first source index (clamped)
    std::vector<int32_t> second; //!< second source index (clamped)
    std::vector<int32_t> w0;     //!< fixed-point weight of `first`
    std::vector<int32_t> w1;     //!< fixed-point weight of `second`
};

Taps taps(int32_t src, int32_t dst, bool clampWeights)
{
    Taps t;
    double const scale = 1.0 / (static_cast<double>(dst) / static_cast<double>(src));
    for (int32_t d = 0; d < dst; ++d)
    {
        float f = static_cast<float>((d + 0.5) * scale - 0.5);
        auto s = static_cast<int32_t>(std::floor(f));
        f -= static_cast<float>(s);
        if (clampWeights && s < 0)
        {
            f = 0.F;
            s = 0;
        }
        if (clampWeights && s >= src - 1)
        {
            f = 0.F;
            s = src - 1;
        }
        t.first.push_back(std::clamp(s, 0, src - 1));
        t.second.push_back(std::clamp(s + 1, 0, src - 1));
        t.w0.push_back(static_cast<int32_t>(std::lrint((1.F - f) * kCoefScale)));
        t.w1.push_back(static_cast<int32_t>(std::lrint(f * kCoefScale)));
    }
    return t;
}

//! BGR rows (`stride` bytes apart) -> SxS BGR, as cv::resize INTER_LINEAR.
std::vector<uint8_t> resizeLinear(ImageView const& image, std::size_t stride, int32_t size)
{
    Taps const tx = taps(image.width, size, true);
    Taps const ty = taps(image.height, size, false);
    std::size_t const row = static_cast<std::size_t>(size) * 3U;
    std::vector<int32_t> horizontal(static_cast<std::size_t>(image.height) * row);
    std::vector<bool> used(static_cast<std::size_t>(image.height), false);
    for (int32_t y = 0; y < size; ++y)
    {
        used[static_cast<std::size_t>(ty.first[static_cast<std::size_t>(y)])] = true;
        used[static_cast<std::size_t>(ty.second[static_cast<std::size_t>(y)])] = true;
    }
    for (int32_t y = 0; y < image.height; ++y)
    {
        if (!used[static_cast<std::size_t>(y)])
        {
            continue;
        }
        uint8_t const* src = image.data + static_cast<std::size_t>(y) * stride;
        int32_t* dst = horizontal.data() + static_cast<std::size_t>(y) * row;
        for (std::size_t x = 0; x < static_cast<std::size_t>(size); ++x)
        {
            auto const a = static_cast<std::size_t>(tx.first[x]) * 3U;
            auto const b = static_cast<std::size_t>(tx.second[x]) * 3U;
            for (std::size_t c = 0; c < 3U; ++c)
            {
                dst[x * 3U + c] = src[a + c] * tx.w0[x] + src[b + c] * tx.w1[x];
            }
        }
    }
    std::vector<uint8_t> out(static_cast<std::size_t>(size) * row);
    for (std::size_t y = 0; y < static_cast<std::size_t>(size); ++y)
    {
        int32_t const* r0 = horizontal.data() + static_cast<std::size_t>(ty.first[y]) * row;
        int32_t const* r1 = horizontal.data() + static_cast<std::size_t>(ty.second[y]) * row;
        int32_t const b0 = ty.w0[y];
        int32_t const b1 = ty.w1[y];
        for (std::size_t i = 0; i < row; ++i)
        {
            int32_t const v = (((r0[i] >> 4) * b0) >> 16) + (((r1[i] >> 4) * b1) >> 16);
            out[y * row + i] = static_cast<uint8_t>(std::clamp((v + 2) >> 2, 0, 255));
        }
    }
    return out;
}
#endif

} // namespace

void preprocessBgr(ImageView const& image, int32_t size, float* out)
{
    checkImage(image, size);
    std::size_t const stride = image.stride != 0 ? image.stride : static_cast<std::size_t>(image.width) * 3U;
#ifdef M2DET_WITH_OPENCV
    // Wrap without copying and resize exactly as the Python side does.
    cv::Mat const src(image.height, image.width, CV_8UC3, const_cast<uint8_t*>(image.data), stride);
    cv::Mat resized;
    cv::resize(src, resized, cv::Size(size, size), 0.0, 0.0, cv::INTER_LINEAR);
    toPlanes(resized.ptr<uint8_t>(0), resized.step[0], size, out);
#else
    std::vector<uint8_t> const resized = resizeLinear(image, stride, size);
    toPlanes(resized.data(), static_cast<std::size_t>(size) * 3U, size, out);
#endif
}

} // namespace m2det
