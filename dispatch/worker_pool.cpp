#include "dispatch/worker_pool.h"

#include <exception>

namespace kvfuse::detail {

WorkerPool::~WorkerPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    job_posted_.notify_all();
    for (std::thread& t : threads_) t.join();
}

void WorkerPool::start_threads(std::size_t wanted) {
    try {
        if (threads_.capacity() < wanted) threads_.reserve(wanted);
        while (threads_.size() < wanted) threads_.emplace_back([this] { work(); });
    } catch (const std::exception&) {  // std::system_error, std::bad_alloc: run with fewer
    }
}

bool WorkerPool::take(std::size_t& index) {
    if (next_ >= end_) return false;
    index = next_++;
    ++running_;
    return true;
}

void WorkerPool::finished() {
    if (--running_ == 0 && next_ >= end_) job_done_.notify_all();
}

void WorkerPool::run(std::size_t workers, void (*task)(void*, std::size_t), void* arg) {
    if (workers <= 1) {
        task(arg, 0);
        return;
    }
    start_threads(workers - 1);
    {
        std::lock_guard<std::mutex> lock(mutex_);
        task_ = task;
        arg_ = arg;
        next_ = 1;
        end_ = workers;
        running_ = 0;
        ++job_;
    }
    job_posted_.notify_all();
    task(arg, 0);
    std::unique_lock<std::mutex> lock(mutex_);
    std::size_t index;
    while (take(index)) {  // help: the pool may have fewer threads than indices, or be slow to wake
        lock.unlock();
        task(arg, index);
        lock.lock();
        finished();
    }
    job_done_.wait(lock, [this] { return next_ >= end_ && running_ == 0; });
    task_ = nullptr;
    arg_ = nullptr;
}

void WorkerPool::work() {
    std::uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
        job_posted_.wait(lock, [&] { return stopping_ || job_ != seen; });
        if (stopping_) return;
        seen = job_;
        std::size_t index;
        while (take(index)) {
            auto* const task = task_;
            void* const arg = arg_;
            lock.unlock();
            task(arg, index);
            lock.lock();
            finished();
        }
    }
}

}  // namespace kvfuse::detail
