// m2det::Detector — run an M2Det TensorRT plan (built by m2det-build from an NMS graph) on BGR
// images from C++.
//
// Preprocessing is the project's one definition: resize to SxS (bilinear, as cv::resize
// INTER_LINEAR; no letterbox), BGR float32 0-255, NCHW. Mean subtraction is inside the plan.
// Detections come back in pixels of the original image. Works with TensorRT 10 and 11.
// The plan's tensor names and the plugin's name are those of m2det/contract.h (M2DET_INPUT_NAME,
// M2DET_NMS_OUTPUT_*, M2DET_PLUGIN_NAME), the C++ mirror of m2det/contract.py.
#pragma once

#include "m2det/contract.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef M2DET_WITH_OPENCV
#include <opencv2/core.hpp>
#endif

namespace m2det
{

//! Every failure (missing file, TensorRT or CUDA error, bad input) is reported as this exception;
//! what() is one line that says what went wrong.
class Error : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};

//! One detection, box corners in pixels of the original image.
struct Detection
{
    float x1{0.F};
    float y1{0.F};
    float x2{0.F};
    float y2{0.F};
    float score{0.F};
    int32_t classId{0}; //!< contiguous foreground label (0 = first non-background class)
};

//! A borrowed BGR 8-bit image: rows of `width * 3` bytes, `stride` bytes apart.
struct ImageView
{
    uint8_t const* data{nullptr};
    int32_t width{0};
    int32_t height{0};
    std::size_t stride{0}; //!< bytes per row; 0 means width * 3
};

struct DetectorOptions
{
    //! The soft-NMS plugin library (libm2det_plugins.so). Empty: the plugin must already be
    //! registered, or serialized into a version-compatible plan.
    std::string pluginLibrary;
    //! CUDA device to run on.
    int32_t device{0};
    //! Allow a version-compatible plan's embedded lean runtime / plugin code to run.
    bool allowEngineHostCode{false};
};

//! Loads a plan once; detect() may be called repeatedly (not concurrently from several threads).
//! A moved-from Detector holds nothing: every method except destruction and assignment throws
//! std::logic_error.
class Detector
{
public:
    explicit Detector(std::string const& planPath, DetectorOptions const& options = {});
    ~Detector();
    Detector(Detector&&) noexcept;
    Detector& operator=(Detector&&) noexcept;
    Detector(Detector const&) = delete;
    Detector& operator=(Detector const&) = delete;

    //! One image -> its detections (sorted by score, descending).
    std::vector<Detection> detect(ImageView const& image);
    //! A batch (size within the plan's optimization profile) -> detections per image.
    std::vector<std::vector<Detection>> detect(std::vector<ImageView> const& images);

#ifdef M2DET_WITH_OPENCV
    //! `image` must be CV_8UC3 (BGR); resized with cv::resize INTER_LINEAR like the Python side.
    std::vector<Detection> detect(cv::Mat const& image);
    std::vector<std::vector<Detection>> detect(std::vector<cv::Mat> const& images);
#endif

    int32_t inputSize() const;   //!< S of the [B,3,S,S] input
    int32_t minBatch() const;    //!< the plan's optimization profile
    int32_t maxBatch() const;
    int32_t maxDetections() const; //!< K of the NMS outputs

private:
    struct Impl;
    //! The loaded plan; throws std::logic_error naming `method` when this Detector was moved from.
    Impl& impl(char const* method) const;
    std::unique_ptr<Impl> mImpl;
};

//! Bilinear resize of a BGR 8-bit image to SxS followed by HWC->CHW float conversion, written to
//! `out` (3*S*S floats). Same sampling as cv::resize INTER_LINEAR (half-pixel centres, edge
//! clamp); values agree with OpenCV's fixed-point path to within 1 (of 255).
void preprocessBgr(ImageView const& image, int32_t size, float* out);

} // namespace m2det
