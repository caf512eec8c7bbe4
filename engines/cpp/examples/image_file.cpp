// See image_file.h.
#include "image_file.h"

#include "m2det/detector.h"

#include <cctype>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>

#ifdef M2DET_WITH_OPENCV
#include <opencv2/imgcodecs.hpp>
#endif

namespace m2det_example
{
namespace
{

[[noreturn]] void fail(std::string const& path, std::string const& why)
{
    throw m2det::Error("cannot read image " + path + ": " + why);
}

#ifndef M2DET_WITH_OPENCV
uint32_t le32(std::vector<uint8_t> const& d, std::size_t at)
{
    return static_cast<uint32_t>(d[at]) | static_cast<uint32_t>(d[at + 1]) << 8U
        | static_cast<uint32_t>(d[at + 2]) << 16U | static_cast<uint32_t>(d[at + 3]) << 24U;
}

uint16_t le16(std::vector<uint8_t> const& d, std::size_t at)
{
    return static_cast<uint16_t>(d[at] | d[at + 1] << 8U);
}

//! Uncompressed 24-bit or 32-bit BMP (BITMAPINFOHEADER or later), bottom-up or top-down.
ImageFile readBmp(std::vector<uint8_t> const& d, std::string const& path)
{
    if (d.size() < 54)
    {
        fail(path, "truncated BMP header");
    }
    uint32_t const offset = le32(d, 10);
    uint32_t const header = le32(d, 14);
    auto const width = static_cast<int32_t>(le32(d, 18));
    auto const rawHeight = static_cast<int32_t>(le32(d, 22));
    uint16_t const bits = le16(d, 28);
    uint32_t const compression = le32(d, 30);
    if (header < 40 || (bits != 24 && bits != 32) || !(compression == 0 || (compression == 3 && bits == 32)))
    {
        fail(path, "only uncompressed 24/32-bit BMP files are supported without OpenCV");
    }
    if (width <= 0 || rawHeight == 0 || rawHeight == std::numeric_limits<int32_t>::min())
    {
        fail(path, "bad BMP size");
    }
    bool const bottomUp = rawHeight > 0;
    int32_t const height = bottomUp ? rawHeight : -rawHeight;
    std::size_t const bytesPerPixel = bits / 8U;
    std::size_t const stride = (static_cast<std::size_t>(width) * bits + 31U) / 32U * 4U;
    if (offset > d.size() || (d.size() - offset) / stride < static_cast<std::size_t>(height))
    {
        fail(path, "truncated BMP pixel data");
    }
    ImageFile image{width, height, std::vector<uint8_t>(static_cast<std::size_t>(width) * height * 3U)};
    for (int32_t y = 0; y < height; ++y)
    {
        auto const fileRow = static_cast<std::size_t>(bottomUp ? height - 1 - y : y);
        uint8_t const* src = d.data() + offset + fileRow * stride;
        uint8_t* dst = image.bgr.data() + static_cast<std::size_t>(y) * static_cast<std::size_t>(width) * 3U;
        for (std::size_t x = 0; x < static_cast<std::size_t>(width); ++x)
        {
            std::memcpy(dst + x * 3U, src + x * bytesPerPixel, 3); // stored as B, G, R(, A)
        }
    }
    return image;
}

//! Binary PPM (P6, maxval 255).
ImageFile readPpm(std::vector<uint8_t> const& d, std::string const& path)
{
    std::size_t at = 2;
    auto number = [&]() {
        while (at < d.size() && (std::isspace(d[at]) != 0 || d[at] == '#'))
        {
            if (d[at] == '#')
            {
                while (at < d.size() && d[at] != '\n')
                {
                    ++at;
                }
            }
            else
            {
                ++at;
            }
        }
        long value = 0;
        std::size_t const start = at;
        while (at < d.size() && d[at] >= '0' && d[at] <= '9' && value < 1000000)
        {
            value = value * 10 + (d[at++] - '0');
        }
        if (at == start)
        {
            fail(path, "bad PPM header");
        }
        return value;
    };
    long const width = number();
    long const height = number();
    long const maxval = number();
    if (width <= 0 || height <= 0 || maxval != 255 || at >= d.size())
    {
        fail(path, "only 8-bit binary PPM (P6) files are supported without OpenCV");
    }
    ++at; // the single whitespace after maxval
    auto const pixels = static_cast<std::size_t>(width) * static_cast<std::size_t>(height);
    if ((d.size() - at) / 3U < pixels)
    {
        fail(path, "truncated PPM pixel data");
    }
    ImageFile image{static_cast<int32_t>(width), static_cast<int32_t>(height), std::vector<uint8_t>(pixels * 3U)};
    for (std::size_t i = 0; i < pixels; ++i)
    {
        image.bgr[i * 3U] = d[at + i * 3U + 2U];
        image.bgr[i * 3U + 1U] = d[at + i * 3U + 1U];
        image.bgr[i * 3U + 2U] = d[at + i * 3U];
    }
    return image;
}
#endif

} // namespace

ImageFile readImageFile(std::string const& path)
{
#ifdef M2DET_WITH_OPENCV
    cv::Mat const mat = cv::imread(path, cv::IMREAD_COLOR);
    if (mat.empty())
    {
        fail(path, "OpenCV cannot decode it");
    }
    ImageFile image{mat.cols, mat.rows, std::vector<uint8_t>(static_cast<std::size_t>(mat.cols) * mat.rows * 3U)};
    for (int32_t y = 0; y < mat.rows; ++y)
    {
        std::memcpy(image.bgr.data() + static_cast<std::size_t>(y) * mat.cols * 3U, mat.ptr<uint8_t>(y),
            static_cast<std::size_t>(mat.cols) * 3U);
    }
    return image;
#else
    std::ifstream file(path, std::ios::binary);
    if (!file)
    {
        fail(path, "no such file");
    }
    std::vector<uint8_t> const data((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    if (data.size() >= 2 && data[0] == 'B' && data[1] == 'M')
    {
        return readBmp(data, path);
    }
    if (data.size() >= 2 && data[0] == 'P' && data[1] == '6')
    {
        return readPpm(data, path);
    }
    fail(path, "not a BMP or binary PPM file (this build has no OpenCV to decode other formats)");
#endif
}

} // namespace m2det_example
