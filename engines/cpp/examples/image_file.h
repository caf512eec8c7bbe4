// Image files for m2det_detect_example: cv::imread when built with OpenCV; otherwise a small
// reader of uncompressed files (24/32-bit BMP, binary PPM), enough to run the example end to end
// where OpenCV's C++ libraries are not installed (CI). Pixels come back as BGR, like cv::imread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace m2det_example
{

struct ImageFile
{
    int32_t width{0};
    int32_t height{0};
    std::vector<uint8_t> bgr; //!< rows of width * 3 bytes, top row first
};

//! Throws m2det::Error (one line) for a file it cannot read.
ImageFile readImageFile(std::string const& path);

} // namespace m2det_example
