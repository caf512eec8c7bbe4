// Just enough of CUDA's device API to run softNmsKernels.cuh on the CPU: one std::thread per CUDA
// thread, __syncthreads as a block-wide std::barrier, warp shuffles/ballots through a per-warp
// exchange buffer with per-warp barriers, shared memory as function-local statics (blocks run one
// after another).  For testing the kernels' logic where no GPU exists; not a performance model.
#ifndef M2DET_CUDA_EMULATION_H
#define M2DET_CUDA_EMULATION_H

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(threads)
#define __shared__ static

namespace emu
{

struct Dim
{
    unsigned x;
};

struct Block
{
    explicit Block(unsigned threads)
        : all(threads)
        , exchange(threads)
    {
        for (unsigned w = 0; w < threads / 32; ++w)
            warps.push_back(std::make_unique<std::barrier<>>(32));
    }
    std::barrier<> all;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<uint32_t> exchange;
};

inline thread_local Dim tThreadIdx{0};
inline Dim gBlockIdx{0};
inline Dim gBlockDim{0};
inline Block* gBlock = nullptr;

//! Runs kernel() as grid x threads CUDA threads (threads a multiple of 32), blocks in order.
template <typename Kernel>
void launch(unsigned grid, unsigned threads, Kernel kernel)
{
    gBlockDim.x = threads;
    for (unsigned b = 0; b < grid; ++b)
    {
        Block block(threads);
        gBlock = &block;
        gBlockIdx.x = b;
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t)
            pool.emplace_back([t, &kernel] {
                tThreadIdx.x = t;
                kernel();
            });
        for (std::thread& th : pool)
            th.join();
    }
}

//! All 32 lanes of the caller's warp publish `bits`; returns lane `src`'s.
inline uint32_t exchange(uint32_t bits, unsigned src)
{
    unsigned const warp = tThreadIdx.x / 32;
    gBlock->exchange[tThreadIdx.x] = bits;
    gBlock->warps[warp]->arrive_and_wait();
    uint32_t const out = gBlock->exchange[warp * 32 + src];
    gBlock->warps[warp]->arrive_and_wait();
    return out;
}

} // namespace emu

#define threadIdx emu::tThreadIdx
#define blockIdx emu::gBlockIdx
#define blockDim emu::gBlockDim

inline void __syncthreads()
{
    emu::gBlock->all.arrive_and_wait();
}

template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T value, int laneMask)
{
    static_assert(sizeof(T) == 4, "32-bit shuffles only");
    uint32_t bits;
    std::memcpy(&bits, &value, 4);
    bits = emu::exchange(bits, (threadIdx.x % 32) ^ static_cast<unsigned>(laneMask));
    std::memcpy(&value, &bits, 4);
    return value;
}

inline unsigned __ballot_sync(unsigned /*mask*/, bool predicate)
{
    unsigned const warp = threadIdx.x / 32;
    emu::gBlock->exchange[threadIdx.x] = predicate ? 1U : 0U;
    emu::gBlock->warps[warp]->arrive_and_wait();
    unsigned ballot = 0;
    for (unsigned lane = 0; lane < 32; ++lane)
        ballot |= emu::gBlock->exchange[warp * 32 + lane] << lane;
    emu::gBlock->warps[warp]->arrive_and_wait();
    return ballot;
}

inline int __popc(unsigned v)
{
    return __builtin_popcount(v);
}

template <typename T>
T atomicAdd(T* address, T value)
{
    return std::atomic_ref<T>(*address).fetch_add(value);
}

//! IEEE binary16 storage; __half2float converts exactly through float arithmetic.
struct __half
{
    uint16_t bits;
};

inline float __half2float(__half h)
{
    int const exponent = (h.bits >> 10) & 0x1F;
    float const mantissa = static_cast<float>(h.bits & 0x3FF);
    float magnitude;
    if (exponent == 0)
        magnitude = mantissa * 0x1p-24F;
    else if (exponent == 31)
        magnitude = mantissa != 0.0F ? __builtin_nanf("") : __builtin_inff();
    else
        magnitude = (1024.0F + mantissa) * std::ldexp(1.0F, exponent - 25);
    return (h.bits & 0x8000) ? -magnitude : magnitude;
}

#endif // M2DET_CUDA_EMULATION_H
