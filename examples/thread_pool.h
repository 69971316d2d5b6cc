// The engine's own worker threads, and the parallel-for that kvfuse runs its workers on
// (kvfuse_context_options::parallel_for). After construction nothing here allocates: a job is a
// function pointer, its argument and a task count, handed over under one mutex.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <vector>

#include <kvfuse/kvfuse.h>

class ThreadPool {
public:
    explicit ThreadPool(std::size_t workers) {
        threads_.reserve(workers);
        for (std::size_t i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
    }
    ~ThreadPool() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        for (std::thread& thread : threads_) thread.join();
    }
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    std::size_t workers() const { return threads_.size(); }
    // Tasks the pool's threads ran (the rest ran on the calling thread): proof that kvfuse's
    // calls really went through parallel_for.
    std::size_t tasks_on_workers() const { return tasks_on_workers_.load(std::memory_order_relaxed); }

    // A kvfuse_parallel_for_fn; `user` is the pool. The calling thread takes tasks too, so the
    // job finishes even if every worker is busy elsewhere (kvfuse never makes a task wait for
    // one that has not started).
    static void parallel_for(void* user, std::size_t n_tasks, kvfuse_task_fn task, void* task_arg) {
        static_cast<ThreadPool*>(user)->run(n_tasks, task, task_arg);
    }

private:
    void run(std::size_t n_tasks, kvfuse_task_fn task, void* task_arg) {
        std::unique_lock<std::mutex> lock(mutex_);
        idle_.wait(lock, [&] { return task_ == nullptr; });  // one job at a time
        task_ = task;
        task_arg_ = task_arg;
        tasks_ = n_tasks;
        next_ = 0;
        done_ = 0;
        wake_.notify_all();
        while (next_ < tasks_) run_one(lock, false);
        finished_.wait(lock, [&] { return done_ == tasks_; });
        task_ = nullptr;
        idle_.notify_all();
    }

    // Claims the next task (the lock held), runs it unlocked, counts it done.
    void run_one(std::unique_lock<std::mutex>& lock, bool on_worker) {
        const std::size_t index = next_++;
        const kvfuse_task_fn task = task_;
        void* const arg = task_arg_;
        lock.unlock();
        task(arg, index);
        if (on_worker) tasks_on_workers_.fetch_add(1, std::memory_order_relaxed);
        lock.lock();
        if (++done_ == tasks_) finished_.notify_all();
    }

    void work() {
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            wake_.wait(lock, [&] { return stopping_ || (task_ != nullptr && next_ < tasks_); });
            if (stopping_) return;
            run_one(lock, true);
        }
    }

    std::vector<std::thread> threads_;
    std::mutex mutex_;
    std::condition_variable wake_, finished_, idle_;
    bool stopping_ = false;
    kvfuse_task_fn task_ = nullptr;
    void* task_arg_ = nullptr;
    std::size_t tasks_ = 0, next_ = 0, done_ = 0;
    std::atomic<std::size_t> tasks_on_workers_{0};
};
