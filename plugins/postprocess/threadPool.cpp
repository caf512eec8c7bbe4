#include "threadPool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif
#include <unistd.h>

namespace m2det
{
namespace
{

thread_local bool tInsideParallelFor = false;

class Pool
{
public:
    Pool()
        : mPid(getpid())
    {
    }

    pid_t pid() const
    {
        return mPid;
    }

    //! false when another call is running (the caller then runs its indices alone).  The caller
    //! works through the indices itself and waits only for helpers that took one: a helper that
    //! the scheduler wakes late (a busy machine) finds the job closed and sleeps on.
    bool run(int64_t n, int threads, std::function<void(int64_t)> const& fn)
    {
        std::unique_lock<std::mutex> busy(mRunMutex, std::try_to_lock);
        if (!busy.owns_lock())
            return false;
        int const helpers = static_cast<int>(std::min<int64_t>(threads - 1, n - 1));
        {
            std::lock_guard<std::mutex> lock(mMutex);
            while (static_cast<int>(mWorkers.size()) < helpers)
            {
                int const id = static_cast<int>(mWorkers.size());
                mWorkers.emplace_back([this, id] { workerLoop(id); });
            }
            mFn = &fn;
            mN = n;
            mNext.store(0);
            mHelpers = helpers;
            mOpen = true;
            ++mGeneration;
        }
        mWake.notify_all();
        tInsideParallelFor = true; // a parallelFor from inside fn runs serially
        work();
        tInsideParallelFor = false;
        std::unique_lock<std::mutex> lock(mMutex);
        mOpen = false; // no helper joins from now on
        mDone.wait(lock, [this] { return mActive == 0; });
        mFn = nullptr;
        return true;
    }

private:
    void work()
    {
        for (int64_t i = mNext.fetch_add(1); i < mN; i = mNext.fetch_add(1))
            (*mFn)(i);
    }

    void workerLoop(int id)
    {
        tInsideParallelFor = true;
        uint64_t seen = 0;
        for (;;)
        {
            {
                std::unique_lock<std::mutex> lock(mMutex);
                mWake.wait(lock, [&] { return mGeneration != seen && id < mHelpers; });
                seen = mGeneration;
                if (!mOpen)
                    continue;
                ++mActive;
            }
            work();
            std::lock_guard<std::mutex> lock(mMutex);
            if (--mActive == 0 && !mOpen)
                mDone.notify_one();
        }
    }

    pid_t const mPid;
    std::mutex mRunMutex; // one parallelFor at a time
    std::mutex mMutex;    // guards the job fields below
    std::condition_variable mWake;
    std::condition_variable mDone;
    std::vector<std::thread> mWorkers;
    std::function<void(int64_t)> const* mFn = nullptr;
    int64_t mN = 0;
    std::atomic<int64_t> mNext{0};
    int mHelpers = 0;
    int mActive = 0;   // helpers inside work() for the current job
    bool mOpen = false; // helpers may still join the current job
    uint64_t mGeneration = 0;
};

std::mutex gPoolMutex;
Pool* gPool = nullptr; // never destroyed: its threads live until the process ends

Pool& pool()
{
    std::lock_guard<std::mutex> lock(gPoolMutex);
    if (gPool == nullptr || gPool->pid() != getpid())
        gPool = new Pool(); // after a fork the parent's threads are gone: start anew (the old one leaks)
    return *gPool;
}

} // namespace

void parallelFor(int64_t n, int threads, std::function<void(int64_t)> const& fn)
{
    if (n <= 0)
        return;
    if (threads <= 1 || n == 1 || tInsideParallelFor || !pool().run(n, threads, fn))
    {
        for (int64_t i = 0; i < n; ++i)
            fn(i);
    }
}

int availableThreads()
{
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        return std::max(1, CPU_COUNT(&set));
#endif
    return std::max(1U, std::thread::hardware_concurrency());
}

} // namespace m2det
