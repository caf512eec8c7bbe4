// The TensorRT backend of m2det::Detector: plan + plugin library -> TensorRT engine/context on its
// own CUDA stream. Every CUDA and TensorRT object is owned by a unique_ptr (custom deleters for
// CUDA handles) and released in reverse order of creation; every failure throws m2det::Error with
// one line. The Detector front end (preprocessing, moved-from checks) is detector_frontend.cpp.
#include "backend.h"
#include "m2det/detector.h"

#include <NvInfer.h>
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <mutex>
#include <stdexcept>
#include <string>

namespace m2det
{
namespace
{

// The plan's I/O tensors (m2det/contract.h): the input and the NMS graph's four outputs.
constexpr char const* kInput = M2DET_INPUT_NAME;
constexpr char const* kNum = M2DET_NMS_OUTPUT_NUM;
constexpr char const* kBoxes = M2DET_NMS_OUTPUT_BOXES;
constexpr char const* kScores = M2DET_NMS_OUTPUT_SCORES;
constexpr char const* kClasses = M2DET_NMS_OUTPUT_CLASSES;

void checkCuda(cudaError_t status, char const* call)
{
    if (status != cudaSuccess)
    {
        throw Error(std::string("m2det: ") + call + " failed: " + cudaGetErrorName(status) + " ("
            + cudaGetErrorString(status) + ")");
    }
}

// ----- RAII for CUDA handles
struct DeviceDeleter
{
    void operator()(void* p) const noexcept
    {
        static_cast<void>(cudaFree(p));
    }
};
struct HostDeleter
{
    void operator()(void* p) const noexcept
    {
        static_cast<void>(cudaFreeHost(p));
    }
};
struct StreamDeleter
{
    void operator()(CUstream_st* s) const noexcept
    {
        static_cast<void>(cudaStreamDestroy(s));
    }
};
using DevicePtr = std::unique_ptr<void, DeviceDeleter>;
using HostPtr = std::unique_ptr<void, HostDeleter>;
using StreamPtr = std::unique_ptr<CUstream_st, StreamDeleter>;

DevicePtr deviceAlloc(std::size_t bytes)
{
    void* p = nullptr;
    checkCuda(cudaMalloc(&p, std::max<std::size_t>(bytes, 1)), "cudaMalloc");
    return DevicePtr(p);
}

HostPtr hostAlloc(std::size_t bytes)
{
    void* p = nullptr;
    checkCuda(cudaMallocHost(&p, std::max<std::size_t>(bytes, 1)), "cudaMallocHost");
    return HostPtr(p);
}

//! Forwards TensorRT's warnings and errors to stderr and remembers the last error for exceptions.
class Logger : public nvinfer1::ILogger
{
public:
    void log(Severity severity, char const* msg) noexcept override
    {
        if (severity > Severity::kWARNING)
        {
            return;
        }
        try
        {
            std::lock_guard<std::mutex> const lock(mMutex);
            if (severity <= Severity::kERROR)
            {
                mLastError = msg;
            }
            std::cerr << "[TensorRT] " << msg << '\n';
        }
        catch (...)
        {
            // a logger must not throw into TensorRT
        }
    }

    std::string lastError() const
    {
        std::lock_guard<std::mutex> const lock(mMutex);
        return mLastError.empty() ? std::string("see the TensorRT log") : mLastError;
    }

private:
    mutable std::mutex mMutex;
    std::string mLastError;
};

constexpr char const* kPluginName = M2DET_PLUGIN_NAME;
constexpr char const* kPluginVersion = M2DET_PLUGIN_VERSION;
constexpr char const* kPluginNamespace = M2DET_PLUGIN_NAMESPACE;

//! A plugin library loaded into TensorRT's global registry, deregistered on destruction. Nothing is
//! loaded when the soft-NMS plugin is already registered (the registry refuses a second copy).
class PluginLibrary
{
public:
    explicit PluginLibrary(std::string const& path)
    {
        if (path.empty() || getPluginRegistry()->getCreator(kPluginName, kPluginVersion, kPluginNamespace) != nullptr)
        {
            return;
        }
        if (!std::ifstream(path).good())
        {
            throw Error("m2det: plugin library not found: " + path);
        }
        mHandle = getPluginRegistry()->loadLibrary(path.c_str());
        if (mHandle == nullptr)
        {
            throw Error("m2det: TensorRT cannot load plugin library " + path);
        }
        if (getPluginRegistry()->getCreator(kPluginName, kPluginVersion, kPluginNamespace) == nullptr)
        {
            getPluginRegistry()->deregisterLibrary(mHandle);
            throw Error("m2det: " + path + " does not register plugin " + kPluginName + " version " + kPluginVersion);
        }
    }
    ~PluginLibrary()
    {
        if (mHandle != nullptr)
        {
            getPluginRegistry()->deregisterLibrary(mHandle);
        }
    }
    PluginLibrary(PluginLibrary const&) = delete;
    PluginLibrary& operator=(PluginLibrary const&) = delete;

private:
    nvinfer1::IPluginRegistry::PluginLibraryHandle mHandle{nullptr};
};

std::vector<char> readFile(std::string const& path)
{
    std::ifstream file(path, std::ios::binary);
    if (!file)
    {
        throw Error("m2det: plan not found: " + path);
    }
    std::vector<char> data((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    if (data.empty())
    {
        throw Error("m2det: empty plan file: " + path);
    }
    return data;
}

std::size_t volume(nvinfer1::Dims const& d)
{
    std::size_t v = 1;
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        v *= static_cast<std::size_t>(std::max<int64_t>(d.d[i], 0));
    }
    return v;
}

//! One I/O tensor: device buffer for the profile's max batch, plus a pinned host mirror.
struct Tensor
{
    std::size_t bytesPerImage{0};
    DevicePtr device;
    HostPtr host;
};

} // namespace

//! A deserialized plan with its execution context, stream and I/O buffers.
struct TensorRTPlan
{
    // Declaration order = construction order; members are destroyed in reverse.
    Logger logger;
    PluginLibrary plugins;
    std::unique_ptr<nvinfer1::IRuntime> runtime;
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<nvinfer1::IExecutionContext> context;
    StreamPtr stream;
    std::array<Tensor, 5> tensors; // images, num, boxes, scores, classes
    int32_t size{0};
    int32_t minBatch{0};
    int32_t maxBatch{0};
    int32_t maxDetections{0};

    TensorRTPlan(std::string const& planPath, DetectorOptions const& options)
        : plugins(options.pluginLibrary)
    {
        checkCuda(cudaSetDevice(options.device), "cudaSetDevice");
        std::vector<char> const plan = readFile(planPath);
        runtime.reset(nvinfer1::createInferRuntime(logger));
        if (!runtime)
        {
            throw Error("m2det: cannot create the TensorRT runtime: " + logger.lastError());
        }
        runtime->setEngineHostCodeAllowed(options.allowEngineHostCode);
        engine.reset(runtime->deserializeCudaEngine(plan.data(), plan.size()));
        if (!engine)
        {
            throw Error("m2det: cannot deserialize " + planPath
                + " (built by another TensorRT version, for another GPU, or missing its plugin library?): "
                + logger.lastError());
        }
        checkIO(planPath);
        context.reset(engine->createExecutionContext());
        if (!context)
        {
            throw Error("m2det: cannot create an execution context: " + logger.lastError());
        }
        cudaStream_t s = nullptr;
        checkCuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
        stream.reset(s);
        allocate();
    }

    static std::array<char const*, 5> names()
    {
        return {kInput, kNum, kBoxes, kScores, kClasses};
    }

    //! The plan must be an M2Det NMS plan: input images [B,3,S,S] float, the four NMS outputs.
    void checkIO(std::string const& planPath)
    {
        using nvinfer1::DataType;
        std::array<DataType, 5> const types{
            DataType::kFLOAT, DataType::kINT32, DataType::kFLOAT, DataType::kFLOAT, DataType::kINT32};
        std::array<char const*, 5> const ioNames = names();
        for (std::size_t i = 0; i < ioNames.size(); ++i)
        {
            bool found = false;
            for (int32_t t = 0; t < engine->getNbIOTensors(); ++t)
            {
                found = found || std::strcmp(engine->getIOTensorName(t), ioNames[i]) == 0;
            }
            if (!found)
            {
                throw Error("m2det: " + planPath + " has no tensor '" + ioNames[i]
                    + "' (the C++ runtime needs a plan built from an NMS graph)");
            }
            if (engine->getTensorDataType(ioNames[i]) != types[i])
            {
                throw Error("m2det: " + planPath + ": unexpected data type of tensor '" + ioNames[i] + "'");
            }
        }
        nvinfer1::Dims const in = engine->getTensorShape(kInput);
        if (in.nbDims != 4 || in.d[1] != 3 || in.d[2] <= 0 || in.d[2] != in.d[3])
        {
            throw Error("m2det: " + planPath + ": input '" + kInput + "' is not [B,3,S,S]");
        }
        size = static_cast<int32_t>(in.d[2]);
        minBatch = static_cast<int32_t>(engine->getProfileShape(kInput, 0, nvinfer1::OptProfileSelector::kMIN).d[0]);
        maxBatch = static_cast<int32_t>(engine->getProfileShape(kInput, 0, nvinfer1::OptProfileSelector::kMAX).d[0]);
        maxDetections = static_cast<int32_t>(engine->getTensorShape(kScores).d[1]);
    }

    void setBatch(int32_t batch)
    {
        if (!context->setInputShape(kInput, nvinfer1::Dims4{batch, 3, size, size}))
        {
            throw Error("m2det: setInputShape failed: " + logger.lastError());
        }
    }

    void allocate()
    {
        setBatch(maxBatch);
        std::array<char const*, 5> const ioNames = names();
        for (std::size_t i = 0; i < ioNames.size(); ++i)
        {
            std::size_t const bytes = volume(context->getTensorShape(ioNames[i])) * 4U; // float32 / int32
            tensors[i].bytesPerImage = bytes / static_cast<std::size_t>(maxBatch);
            tensors[i].device = deviceAlloc(bytes);
            tensors[i].host = hostAlloc(bytes);
            if (!context->setTensorAddress(ioNames[i], tensors[i].device.get()))
            {
                throw Error(std::string("m2det: setTensorAddress failed for ") + ioNames[i]);
            }
        }
    }

    float* inputHost(int32_t b)
    {
        return static_cast<float*>(tensors[0].host.get()) + static_cast<std::size_t>(b) * 3U * size * size;
    }

    //! Inputs already in the pinned input buffer -> per-image detections (normalized boxes scaled
    //! by each image's width/height).
    std::vector<std::vector<Detection>> run(std::vector<std::array<float, 2>> const& sizes)
    {
        auto const batch = static_cast<int32_t>(sizes.size());
        setBatch(batch);
        cudaStream_t const s = stream.get();
        checkCuda(cudaMemcpyAsync(tensors[0].device.get(), tensors[0].host.get(),
                      tensors[0].bytesPerImage * sizes.size(), cudaMemcpyHostToDevice, s),
            "cudaMemcpyAsync(HtoD)");
        if (!context->enqueueV3(s))
        {
            throw Error("m2det: enqueueV3 failed: " + logger.lastError());
        }
        for (std::size_t i = 1; i < tensors.size(); ++i)
        {
            checkCuda(cudaMemcpyAsync(tensors[i].host.get(), tensors[i].device.get(),
                          tensors[i].bytesPerImage * sizes.size(), cudaMemcpyDeviceToHost, s),
                "cudaMemcpyAsync(DtoH)");
        }
        checkCuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
        return collect(sizes);
    }

    std::vector<std::vector<Detection>> collect(std::vector<std::array<float, 2>> const& sizes) const
    {
        auto const* num = static_cast<int32_t const*>(tensors[1].host.get());
        auto const* boxes = static_cast<float const*>(tensors[2].host.get());
        auto const* scores = static_cast<float const*>(tensors[3].host.get());
        auto const* classes = static_cast<int32_t const*>(tensors[4].host.get());
        auto const k = static_cast<std::size_t>(maxDetections);
        std::vector<std::vector<Detection>> out(sizes.size());
        for (std::size_t b = 0; b < sizes.size(); ++b)
        {
            auto const n = static_cast<std::size_t>(std::clamp(num[b], 0, maxDetections));
            float const w = sizes[b][0];
            float const h = sizes[b][1];
            out[b].reserve(n);
            for (std::size_t j = 0; j < n; ++j)
            {
                float const* box = boxes + (b * k + j) * 4U;
                out[b].push_back(
                    Detection{box[0] * w, box[1] * h, box[2] * w, box[3] * h, scores[b * k + j], classes[b * k + j]});
            }
        }
        return out;
    }

    void checkBatch(std::size_t n) const
    {
        if (n < static_cast<std::size_t>(minBatch) || n > static_cast<std::size_t>(maxBatch))
        {
            throw Error("m2det: batch " + std::to_string(n) + " is outside the plan's profile "
                + std::to_string(minBatch) + ".." + std::to_string(maxBatch)
                + " (rebuild with m2det-build --batch MIN:OPT:MAX)");
        }
    }
};

namespace
{

//! TensorRTPlan behind the DetectorBackend interface.
class TensorRTBackend final : public DetectorBackend
{
public:
    TensorRTBackend(std::string const& planPath, DetectorOptions const& options)
        : mPlan(planPath, options)
    {
    }

    int32_t inputSize() const override
    {
        return mPlan.size;
    }
    int32_t minBatch() const override
    {
        return mPlan.minBatch;
    }
    int32_t maxBatch() const override
    {
        return mPlan.maxBatch;
    }
    int32_t maxDetections() const override
    {
        return mPlan.maxDetections;
    }
    std::string name() const override
    {
        return "tensorrt";
    }
    void checkBatch(std::size_t n) const override
    {
        mPlan.checkBatch(n);
    }
    float* inputHost(int32_t b) override
    {
        return mPlan.inputHost(b);
    }
    std::vector<std::vector<Detection>> run(std::vector<std::array<float, 2>> const& sizes) override
    {
        return mPlan.run(sizes);
    }

private:
    TensorRTPlan mPlan;
};

} // namespace

std::unique_ptr<DetectorBackend> makeTensorRTBackend(std::string const& planPath, DetectorOptions const& options)
{
    return std::make_unique<TensorRTBackend>(planPath, options);
}

} // namespace m2det
