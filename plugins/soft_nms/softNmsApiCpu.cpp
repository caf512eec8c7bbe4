// Host part of the C ABI: the last-error store, argument checks, workspace size and the C++
// reference.  Every extern "C" body runs inside apiGuard (softNmsApiBoundary.h).
#include "softNmsApi.h"
#include "softNmsApiBoundary.h"
#include "softNmsReference.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

namespace
{

//! IEEE binary16 bits to float32 (exact).
float halfToFloat(uint16_t h)
{
    uint32_t const sign = static_cast<uint32_t>(h & 0x8000U) << 16;
    uint32_t exponent = (h >> 10) & 0x1FU;
    uint32_t mantissa = h & 0x3FFU;
    uint32_t bits;
    if (exponent == 0x1FU)
        bits = sign | 0x7F800000U | (mantissa << 13);
    else if (exponent != 0)
        bits = sign | ((exponent + 112U) << 23) | (mantissa << 13);
    else if (mantissa == 0)
        bits = sign;
    else
    {
        // Subnormal half: normalise.
        exponent = 113U;
        while ((mantissa & 0x400U) == 0)
        {
            mantissa <<= 1;
            --exponent;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3FFU) << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

//! This thread's last error message (fixed size: storing it never allocates or throws).
thread_local char tLastError[512] = "";

} // namespace

void m2det::setApiError(char const* function, char const* message) noexcept
{
    std::snprintf(tLastError, sizeof(tLastError), "%s: %s", function != nullptr ? function : "m2det_soft_nms",
        message != nullptr ? message : "unknown error");
}

extern "C" const char* m2det_soft_nms_last_error(void)
{
    return tLastError;
}

extern "C" const char* m2det_soft_nms_check(const M2DetSoftNmsParams* params, int64_t A, int64_t C, int forCuda)
{
    return m2det::apiGuard<char const*>(__func__, "internal error (m2det_soft_nms_last_error)", [&]() -> char const* {
        if (params == nullptr)
            return "params is NULL";
        return m2det::softNmsCheck(*params, A, C, forCuda != 0);
    });
}

extern "C" size_t m2det_soft_nms_workspace_size(int64_t B, int64_t A, int64_t C, const M2DetSoftNmsParams* params)
{
    char const* const function = __func__;
    return m2det::apiGuard<size_t>(function, 0, [&]() -> size_t {
        if (params == nullptr)
            return m2det::apiFail<size_t>(function, "params is NULL", 0);
        if (B < 1)
            return m2det::apiFail<size_t>(function, "the batch must be >= 1", 0);
        if (char const* why = m2det::softNmsCheck(*params, A, C, true))
            return m2det::apiFail<size_t>(function, why, 0);
        if (!m2det::softNmsWorkspaceFits(B, A, C, *params))
            return m2det::apiFail<size_t>(function, "the workspace for this batch does not fit in size_t", 0);
        return m2det::softNmsWorkspaceSize(B, A, C, *params);
    });
}

namespace
{

int softNmsCpu(const void* boxes, const void* scores, int scoresIsHalf, int B, int A, int C,
    const M2DetSoftNmsParams* params, int32_t* num, float* outBoxes, float* outScores, int32_t* outClasses)
{
    char const* const function = "m2det_soft_nms_cpu";
    if (boxes == nullptr || scores == nullptr || num == nullptr || outBoxes == nullptr || outScores == nullptr
        || outClasses == nullptr || params == nullptr)
        return m2det::apiFail(function, "a pointer argument is NULL", M2DET_SOFT_NMS_INVALID_ARGUMENT);
    if (B < 1)
        return m2det::apiFail(function, "the batch must be >= 1", M2DET_SOFT_NMS_INVALID_ARGUMENT);
    if (char const* why = m2det::softNmsCheck(*params, A, C, false))
        return m2det::apiFail(function, why, M2DET_SOFT_NMS_INVALID_ARGUMENT);
    auto const K = static_cast<size_t>(params->max_detections);
    auto const perImage = static_cast<size_t>(A) * static_cast<size_t>(C);
    std::vector<float> imageScores(perImage);
    for (int b = 0; b < B; ++b)
    {
        float const* imageBoxes = static_cast<float const*>(boxes) + static_cast<size_t>(b) * A * 4;
        if (scoresIsHalf)
        {
            auto const* h = static_cast<uint16_t const*>(scores) + b * perImage;
            std::transform(h, h + perImage, imageScores.begin(), halfToFloat);
        }
        else
        {
            auto const* f = static_cast<float const*>(scores) + b * perImage;
            std::copy(f, f + perImage, imageScores.begin());
        }
        std::vector<m2det::SoftNmsCandidate> const dets
            = m2det::softNmsImage(imageBoxes, imageScores.data(), A, C, *params);
        num[b] = static_cast<int32_t>(dets.size());
        float* ob = outBoxes + b * K * 4;
        float* os = outScores + b * K;
        int32_t* oc = outClasses + b * K;
        std::fill(ob, ob + K * 4, 0.0F);
        std::fill(os, os + K, 0.0F);
        std::fill(oc, oc + K, 0);
        for (size_t i = 0; i < dets.size(); ++i)
        {
            std::copy_n(imageBoxes + static_cast<size_t>(dets[i].anchor) * 4, 4, ob + i * 4);
            os[i] = dets[i].score;
            oc[i] = dets[i].classId;
        }
    }
    return M2DET_SOFT_NMS_OK;
}

} // namespace

extern "C" int m2det_soft_nms_cpu(const void* boxes, const void* scores, int scoresIsHalf, int B, int A, int C,
    const M2DetSoftNmsParams* params, int32_t* num, float* outBoxes, float* outScores, int32_t* outClasses)
{
    return m2det::apiGuard<int>(__func__, M2DET_SOFT_NMS_INTERNAL_ERROR, [&] {
        return softNmsCpu(boxes, scores, scoresIsHalf, B, A, C, params, num, outBoxes, outScores, outClasses);
    });
}
