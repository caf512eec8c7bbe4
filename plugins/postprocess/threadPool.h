/*
 * A small persistent thread pool for the CPU post-processing: parallelFor(n, threads, fn) runs fn(i)
 * for i in [0, n) on up to `threads` threads (the caller is one of them) and returns when all ran.
 */
#ifndef M2DET_THREAD_POOL_H
#define M2DET_THREAD_POOL_H

#include <cstdint>
#include <functional>

namespace m2det
{

//! Runs fn(i) for every i in [0, n), on at most `threads` threads including the caller (1: in the
//! caller only).  Indices are handed out in increasing order as threads become free.  A call made
//! while another thread's call is running, or from inside fn, runs in its caller alone.  The pool's
//! threads are started on first use and after a fork.  fn must not throw.
void parallelFor(int64_t n, int threads, std::function<void(int64_t)> const& fn);

//! Threads of this process's CPU affinity mask (at least 1).
int availableThreads();

} // namespace m2det

#endif // M2DET_THREAD_POOL_H
