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
//! Source coordinate and weight of destination index `d` (cv::resize INTER_LINEAR mapping).
struct Tap
{
    int32_t i0;
    int32_t i1;
    float w1;
};

Tap tap(int32_t d, double scale, int32_t n)
{
    float f = static_cast<float>((d + 0.5) * scale - 0.5);
    int32_t i = static_cast<int32_t>(std::floor(f));
    f -= static_cast<float>(i);
    if (i < 0)
    {
        return {0, 0, 0.F};
    }
    if (i >= n - 1)
    {
        return {n - 1, n - 1, 0.F};
    }
    return {i, i + 1, f};
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
    std::vector<uint8_t> resized(static_cast<std::size_t>(size) * static_cast<std::size_t>(size) * 3U);
    double const sx = static_cast<double>(image.width) / size;
    double const sy = static_cast<double>(image.height) / size;
    for (int32_t y = 0; y < size; ++y)
    {
        Tap const ty = tap(y, sy, image.height);
        uint8_t const* r0 = image.data + static_cast<std::size_t>(ty.i0) * stride;
        uint8_t const* r1 = image.data + static_cast<std::size_t>(ty.i1) * stride;
        for (int32_t x = 0; x < size; ++x)
        {
            Tap const tx = tap(x, sx, image.width);
            for (int32_t c = 0; c < 3; ++c)
            {
                float const top = r0[tx.i0 * 3 + c] * (1.F - tx.w1) + r0[tx.i1 * 3 + c] * tx.w1;
                float const bottom = r1[tx.i0 * 3 + c] * (1.F - tx.w1) + r1[tx.i1 * 3 + c] * tx.w1;
                float const v = top * (1.F - ty.w1) + bottom * ty.w1;
                resized[(static_cast<std::size_t>(y) * static_cast<std::size_t>(size) + static_cast<std::size_t>(x)) * 3U
                    + static_cast<std::size_t>(c)]
                    = static_cast<uint8_t>(std::clamp(std::lround(v), 0L, 255L));
            }
        }
    }
    toPlanes(resized.data(), static_cast<std::size_t>(size) * 3U, size, out);
#endif
}

} // namespace m2det
