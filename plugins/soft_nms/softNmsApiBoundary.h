/*
 * The exception boundary of the C ABI (softNmsApi.h), shared by its host and CUDA parts: every
 * extern "C" function runs its body through apiGuard, so no C++ exception reaches a C caller
 * (ctypes); failures leave their message for m2det_soft_nms_last_error().  Internal header.
 */
#ifndef M2DET_SOFT_NMS_API_BOUNDARY_H
#define M2DET_SOFT_NMS_API_BOUNDARY_H

#include <exception>
#include <utility>

namespace m2det
{

//! Stores "<function>: <message>" (truncated to a fixed buffer) as this thread's last error;
//! never throws, never allocates.  Defined in softNmsApiCpu.cpp.
void setApiError(char const* function, char const* message) noexcept;

//! Records the failure and returns `code`, for `return apiFail(...)` in a C ABI function body.
template <typename T>
T apiFail(char const* function, char const* message, T code) noexcept
{
    setApiError(function, message);
    return code;
}

//! Runs `body` (returning T); an exception becomes `onException` with the exception's what() as
//! the last error.
template <typename T, typename Body>
T apiGuard(char const* function, T onException, Body&& body) noexcept
{
    try
    {
        return std::forward<Body>(body)();
    }
    catch (std::exception const& e)
    {
        setApiError(function, e.what());
    }
    catch (...)
    {
        setApiError(function, "unknown C++ exception");
    }
    return onException;
}

} // namespace m2det

#endif // M2DET_SOFT_NMS_API_BOUNDARY_H
