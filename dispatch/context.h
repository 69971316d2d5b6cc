// The execution context behind kvfuse_context (see kvfuse.h, "execution context"): its thread
// count and parallel-for, its tuning, and the scratch its calls reuse. Kernels reach it through
// kernels/call_context.h; the API layer claims it for one call with ContextCall.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "kernels/kernel_table.h"
#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {
class RopeTableCache;
class RopePositionTables;
struct TopkScratch;
struct SelectScratch;
class WorkerPool;
}  // namespace kvfuse::detail

struct kvfuse_context {
    kvfuse_context();
    ~kvfuse_context();
    kvfuse_context(const kvfuse_context&) = delete;
    kvfuse_context& operator=(const kvfuse_context&) = delete;

    int threads = 1;  // 0: OpenMP's default at each call
    kvfuse_parallel_for_fn parallel_for = nullptr;
    void* parallel_for_user = nullptr;
    bool use_process_tuning = false;
    kvfuse_tuning own_tuning{};   // when not following the process-wide tuning
    kvfuse_tuning call_tuning{};  // what the call in progress runs with
    std::atomic<bool> busy{false};  // a call holds the context

    // One block of scratch, 64-byte aligned, grown when a call needs more (kernels carve it).
    void* scratch = nullptr;
    std::size_t scratch_bytes = 0;
    // Per-worker state that outlives calls: RoPE tables (built per delta, kept) and top-k buffers.
    std::vector<std::unique_ptr<kvfuse::detail::RopeTableCache>> rope_tables;
    std::unique_ptr<kvfuse::detail::RopePositionTables> rope_positions;  // shared by the workers of a call
    std::vector<std::unique_ptr<kvfuse::detail::TopkScratch>> topk;
    // kvfuse_ctx_select_rows's working buffers (dispatch/api_select.cpp), apart from `scratch`,
    // which the steps it calls carve for themselves.
    std::unique_ptr<kvfuse::detail::SelectScratch> select;
    // Without OpenMP (KVFUSE_OPENMP=OFF) and without a parallel_for: the context's own threads,
    // started by the first call that needs them (context_run), kept until it is destroyed.
    mutable std::unique_ptr<kvfuse::detail::WorkerPool> pool;
};

namespace kvfuse::detail {

// The calling thread's default context (threads 0, the process-wide tuning): what a NULL
// context and the calls without a context use.
kvfuse_context& default_context();

// Claims a context (NULL: the thread's default) for one call and releases it at scope exit. A
// context another call holds is refused, so two threads never share its scratch. Takes the
// call's tuning snapshot.
class ContextCall {
   public:
    explicit ContextCall(kvfuse_context* context);
    ~ContextCall();
    ContextCall(const ContextCall&) = delete;
    ContextCall& operator=(const ContextCall&) = delete;

    kvfuse_status status() const { return status_; }
    kvfuse_context& context() { return *context_; }
    // The kernel table: a context that follows the process-wide tuning resolves it as the calls
    // without a context do (loading the start-up profile, which may choose per-kernel ISAs); any
    // other context never reads a profile file.
    kvfuse_status kernels(const KernelTable*& table) const;

   private:
    kvfuse_context* context_;
    kvfuse_status status_ = KVFUSE_OK;
    bool lent_ = false;  // runs inside the claim of the call that lent the context (LendContext)
};

// A call that holds a context (ContextCall) and runs other entry points as its steps
// (kvfuse_ctx_select_rows) lends it to them: while a LendContext lives, the next ContextCall
// this thread makes on that context runs inside the holder's claim (its tuning snapshot, no
// second claim) instead of being refused. Only that one: any other call -- from the engine's
// parallel-for, or a second step without a new LendContext -- is refused as usual.
class LendContext {
   public:
    explicit LendContext(kvfuse_context& context);
    ~LendContext();
    LendContext(const LendContext&) = delete;
    LendContext& operator=(const LendContext&) = delete;
};

// Worker w's top-k buffers; reserve_topk_scratch makes them exist for every worker below
// `workers` with room for (n, k, sample).
void reserve_topk_scratch(kvfuse_context& context, std::size_t workers, std::size_t n, std::size_t k,
                          std::size_t sample);
TopkScratch& context_topk_scratch(kvfuse_context& context, std::size_t worker);

// Empty when `tuning` is valid, else what is wrong (dispatch/tuning.cpp).
std::string invalid_tuning(const kvfuse_tuning& tuning);

}  // namespace kvfuse::detail
