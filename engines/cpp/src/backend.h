// The backend interface behind m2det::Detector (private to the library): a backend owns the
// loaded model and a host input buffer; the Detector front end (detector_frontend.cpp)
// preprocesses images into that buffer and asks the backend for detections.
#pragma once

#include "m2det/detector.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace m2det
{

class DetectorBackend
{
public:
    DetectorBackend() = default;
    virtual ~DetectorBackend() = default;
    DetectorBackend(DetectorBackend const&) = delete;
    DetectorBackend& operator=(DetectorBackend const&) = delete;
    DetectorBackend(DetectorBackend&&) = delete;
    DetectorBackend& operator=(DetectorBackend&&) = delete;

    virtual int32_t inputSize() const = 0;
    virtual int32_t minBatch() const = 0;
    virtual int32_t maxBatch() const = 0;
    virtual int32_t maxDetections() const = 0;
    virtual std::string name() const = 0;
    //! m2det::Error when `n` images are outside minBatch()..maxBatch().
    virtual void checkBatch(std::size_t n) const = 0;

    //! Host buffer for image `b` of the next batch ([3,S,S] floats); b < maxBatch().
    virtual float* inputHost(int32_t b) = 0;
    //! The first sizes.size() images of the input buffer -> detections per image, boxes in
    //! pixels (normalized boxes scaled by sizes[b] = {width, height}), sorted by score.
    virtual std::vector<std::vector<Detection>> run(std::vector<std::array<float, 2>> const& sizes) = 0;
};

//! The backends this library was built with; a missing one throws m2det::Error saying so.
std::unique_ptr<DetectorBackend> makeTensorRTBackend(std::string const& planPath, DetectorOptions const& options);
std::unique_ptr<DetectorBackend> makeOpenVINOBackend(std::string const& onnxPath, DetectorOptions const& options);

} // namespace m2det
