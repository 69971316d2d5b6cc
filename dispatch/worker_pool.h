// The workers of a context in a build without OpenMP (KVFUSE_OPENMP=OFF) that has no
// parallel_for: threads the context starts the first time a call needs them and keeps until it
// is destroyed, so that calls after the first start no thread and allocate nothing (the promise
// of kvfuse.h's execution context). A context serves one call at a time, so one pool never runs
// two calls at once.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace kvfuse::detail {

class WorkerPool {
   public:
    WorkerPool() = default;
    ~WorkerPool();
    WorkerPool(const WorkerPool&) = delete;
    WorkerPool& operator=(const WorkerPool&) = delete;

    // Runs task(arg, w) once for every w in [0, workers) and returns when all have returned.
    // The calling thread runs index 0 and takes other indices while the pool's threads do;
    // a thread that cannot be started leaves its share to the others, never an error.
    void run(std::size_t workers, void (*task)(void*, std::size_t), void* arg);

   private:
    void start_threads(std::size_t wanted);
    void work();                            // a pool thread's loop
    bool take(std::size_t& index);          // the next index of the job in progress (mutex held)
    void finished();                        // an index taken has run (mutex held)

    std::mutex mutex_;
    std::condition_variable job_posted_, job_done_;
    std::vector<std::thread> threads_;
    bool stopping_ = false;
    std::uint64_t job_ = 0;  // counts posted jobs: a thread runs each job once
    void (*task_)(void*, std::size_t) = nullptr;
    void* arg_ = nullptr;
    std::size_t next_ = 0, end_ = 0;  // indices of the job not yet taken: [next_, end_)
    std::size_t running_ = 0;          // indices taken and not yet finished
};

}  // namespace kvfuse::detail
