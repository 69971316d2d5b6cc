// The execution context (kvfuse.h, "execution context"; dispatch/context.h): creation and
// options, the call claim, how workers run, and the scratch that calls reuse.
#include "dispatch/context.h"

#if defined(KVFUSE_HAVE_OPENMP)
#include <omp.h>
#endif

#include <cstring>
#include <new>
#include <string>
#include <thread>

#include "dispatch/api_checks.h"
#include "dispatch/select_scratch.h"
#include "dispatch/dispatch.h"
#include "dispatch/errors.h"
#include "dispatch/struct_versions.h"
#include "dispatch/worker_pool.h"
#include "kernels/call_context.h"
#include "kernels/rope/rope_plan.h"
#include "kernels/topk/topk_scratch.h"
#include "kernels/tuning.h"

kvfuse_context::kvfuse_context() { kvfuse_default_tuning(&own_tuning); }

kvfuse_context::~kvfuse_context() {
    if (scratch != nullptr) ::operator delete(scratch, std::align_val_t{64});
}

namespace kvfuse::detail {

// More workers than this is a caller's mistake (a negative count cast to int, or a wrong field).
constexpr int kMaxThreads = 4096;

namespace {

// Scratch grows in whole pages, so that a call a little larger than the last does not
// reallocate for every few bytes.
constexpr std::size_t kScratchGranule = 4096;

// Made on a thread's first call, so that threads that never call kvfuse pay nothing, and freed
// with the thread.
kvfuse_context* make_default_context() {
    auto* context = new kvfuse_context();
    context->threads = 0;
    context->use_process_tuning = true;
    return context;
}

struct DefaultContextHolder {
    kvfuse_context* context = nullptr;
    ~DefaultContextHolder() { delete context; }
};

}  // namespace

kvfuse_context& default_context() {
    thread_local DefaultContextHolder holder;
    if (holder.context == nullptr) holder.context = make_default_context();
    return *holder.context;
}

namespace {
// The context this thread's next ContextCall may enter without a claim (LendContext).
thread_local kvfuse_context* t_lent = nullptr;
}  // namespace

LendContext::LendContext(kvfuse_context& context) { t_lent = &context; }
LendContext::~LendContext() { t_lent = nullptr; }

ContextCall::ContextCall(kvfuse_context* context) : context_(context != nullptr ? context : &default_context()) {
    if (context_ == t_lent) {
        t_lent = nullptr;  // for this call only
        lent_ = true;
        return;
    }
    if (context_->busy.exchange(true, std::memory_order_acquire)) {
        status_ = fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                       "the context is in use by another call (a context serves one call at a time: give each "
                       "thread its own)");
        context_ = nullptr;
        return;
    }
    context_->call_tuning = context_->use_process_tuning ? current_tuning() : context_->own_tuning;
}

ContextCall::~ContextCall() {
    if (context_ != nullptr && !lent_) context_->busy.store(false, std::memory_order_release);
}

kvfuse_status ContextCall::kernels(const KernelTable*& table) const {
    return context_->use_process_tuning ? active_kernels(table) : active_kernels_without_profile(table);
}

void reserve_topk_scratch(kvfuse_context& context, std::size_t workers, std::size_t n, std::size_t k,
                          std::size_t sample) {
    while (context.topk.size() < workers) context.topk.push_back(std::make_unique<TopkScratch>());
    for (std::size_t w = 0; w < workers; ++w) context.topk[w]->reserve(n, k, sample);
}

TopkScratch& context_topk_scratch(kvfuse_context& context, std::size_t worker) { return *context.topk[worker]; }

// ---- kernels/call_context.h ----------------------------------------------------------------

const kvfuse_tuning& context_tuning(const kvfuse_context& context) { return context.call_tuning; }

std::size_t context_workers(const kvfuse_context& context) {
    if (context.threads > 0) return static_cast<std::size_t>(context.threads);
#if defined(KVFUSE_HAVE_OPENMP)
    const int openmp = omp_get_max_threads();
    return openmp > 0 ? static_cast<std::size_t>(openmp) : 1;
#else
    const unsigned hardware = std::thread::hardware_concurrency();  // 0: unknown
    return hardware > 0 ? hardware : 1;
#endif
}

void* context_scratch(kvfuse_context& context, std::size_t bytes) {
    if (bytes <= context.scratch_bytes && context.scratch != nullptr) return context.scratch;
    if (context.scratch != nullptr) ::operator delete(context.scratch, std::align_val_t{64});
    context.scratch = nullptr;
    context.scratch_bytes = 0;
    const std::size_t rounded = (bytes / kScratchGranule + 1) * kScratchGranule;
    context.scratch = ::operator new(rounded, std::align_val_t{64});  // std::bad_alloc -> OUT_OF_MEMORY
    context.scratch_bytes = rounded;
    return context.scratch;
}

void context_run(const kvfuse_context& context, std::size_t workers, void (*task)(void*, std::size_t), void* arg) {
    if (workers <= 1) {
        task(arg, 0);
        return;
    }
    if (context.parallel_for != nullptr) {
        context.parallel_for(context.parallel_for_user, workers, task, arg);
        return;
    }
#if defined(KVFUSE_HAVE_OPENMP)
#pragma omp parallel num_threads(static_cast<int>(workers))
    {
        // OpenMP may give fewer threads than asked (a thread limit, a nested region): each
        // then runs several worker indices, so every index runs exactly once.
        const auto team = static_cast<std::size_t>(omp_get_num_threads());
        for (auto w = static_cast<std::size_t>(omp_get_thread_num()); w < workers; w += team) task(arg, w);
    }
#else
    // No OpenMP in this build (KVFUSE_OPENMP=OFF): the context's own threads, kept across
    // calls. If even the pool cannot be made, the calling thread runs every index: tasks need
    // not run at once, and a call must not fail after its memory was reserved.
    if (!context.pool) {
        try {
            context.pool = std::make_unique<WorkerPool>();
        } catch (const std::bad_alloc&) {
            for (std::size_t w = 0; w < workers; ++w) task(arg, w);
            return;
        }
    }
    context.pool->run(workers, task, arg);
#endif
}

void context_run_two_phases(const kvfuse_context& context, std::size_t workers, void (*first)(void*, std::size_t),
                            void (*second)(void*, std::size_t), void* arg) {
#if defined(KVFUSE_HAVE_OPENMP)
    if (workers > 1 && context.parallel_for == nullptr) {
#pragma omp parallel num_threads(static_cast<int>(workers))
        {
            const auto team = static_cast<std::size_t>(omp_get_num_threads());
            const auto thread = static_cast<std::size_t>(omp_get_thread_num());
            for (std::size_t w = thread; w < workers; w += team) first(arg, w);
#pragma omp barrier
            for (std::size_t w = thread; w < workers; w += team) second(arg, w);
        }
        return;
    }
#endif
    context_run(context, workers, first, arg);
    context_run(context, workers, second, arg);
}

void reserve_rope_tables(kvfuse_context& context, std::size_t workers, const RopePlan& plan, kvfuse_dtype dtype,
                         std::size_t heads) {
    while (context.rope_tables.size() < workers) context.rope_tables.push_back(std::make_unique<RopeTableCache>());
    for (std::size_t w = 0; w < workers; ++w) context.rope_tables[w]->reserve(plan, dtype, heads);
}

RopeTableCache& context_rope_tables(kvfuse_context& context, std::size_t worker) {
    return *context.rope_tables[worker];
}

RopePositionTables& context_rope_positions(kvfuse_context& context) {
    if (!context.rope_positions) context.rope_positions = std::make_unique<RopePositionTables>();
    return *context.rope_positions;
}

std::size_t ScratchLayout::add(std::size_t size) {
    const std::size_t offset = bytes;
    bytes += (size + 63) / 64 * 64;
    return offset;
}

}  // namespace kvfuse::detail

// ---- C API --------------------------------------------------------------------------------

namespace {

using kvfuse::detail::fail;

kvfuse_status check_options(const kvfuse_context_options& o) {
    using kvfuse::detail::kMaxThreads;
    if (o.threads < 0 || o.threads > kMaxThreads)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                    "options->threads (" + std::to_string(o.threads) + ") must be in 0.." + std::to_string(kMaxThreads));
    if (o.parallel_for != nullptr && o.threads == 0)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                    "options->threads must be >= 1 with a parallel_for (the most tasks a call may hand it)");
    if (o.use_process_tuning != 0 && o.use_process_tuning != 1)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "options->use_process_tuning must be 0 or 1");
    if (o.use_process_tuning == 1 && o.tuning != nullptr)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "options->tuning must be NULL with use_process_tuning");
    return KVFUSE_OK;
}

// The caller's tuning (a versioned struct; NULL: the built-in defaults), validated.
kvfuse_status read_tuning(const char* what, const kvfuse_tuning* caller, kvfuse_tuning& out) {
    kvfuse_tuning_init(&out);
    kvfuse_default_tuning(&out);
    if (caller != nullptr)
        if (auto s = kvfuse::detail::read_struct(what, caller, out); s != KVFUSE_OK) return s;
    if (std::string why = kvfuse::detail::invalid_tuning(out); !why.empty())
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, std::string(what) + ": " + why);
    return KVFUSE_OK;
}

}  // namespace

extern "C" {

kvfuse_status kvfuse_context_create(const kvfuse_context_options* options, kvfuse_context** context) {
    return kvfuse::detail::guarded("kvfuse_context_create", [&] {
        if (context == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "context is required");
        if (auto s = kvfuse::detail::check_aligned("context", context, alignof(kvfuse_context*)); s != KVFUSE_OK)
            return s;
        *context = nullptr;
        if (options == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "options are required");
        if (auto s = kvfuse::detail::check_aligned("options", options, alignof(kvfuse_context_options)); s != KVFUSE_OK)
            return s;
        kvfuse_context_options o;  // the defaults, then as many fields as the caller's version has
        kvfuse_context_options_init(&o);
        if (auto s = kvfuse::detail::read_struct("options", options, o); s != KVFUSE_OK) return s;
        if (auto s = check_options(o); s != KVFUSE_OK) return s;
        kvfuse_tuning tuning;
        if (auto s = read_tuning("options->tuning", o.tuning, tuning); s != KVFUSE_OK) return s;
        auto created = std::make_unique<kvfuse_context>();
        created->threads = o.threads;
        created->parallel_for = o.parallel_for;
        created->parallel_for_user = o.parallel_for_user;
        created->use_process_tuning = o.use_process_tuning == 1;
        created->own_tuning = tuning;
        *context = created.release();
        return KVFUSE_OK;
    });
}

void kvfuse_context_destroy(kvfuse_context* context) { delete context; }

kvfuse_status kvfuse_context_set_tuning(kvfuse_context* context, const kvfuse_tuning* tuning) {
    return kvfuse::detail::guarded("kvfuse_context_set_tuning", [&] {
        if (context == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "context is required");
        kvfuse_tuning t;
        if (auto s = read_tuning("tuning", tuning, t); s != KVFUSE_OK) return s;
        kvfuse::detail::ContextCall call(context);  // not under a running call
        if (call.status() != KVFUSE_OK) return call.status();
        context->own_tuning = t;
        context->use_process_tuning = false;
        return KVFUSE_OK;
    });
}

kvfuse_status kvfuse_context_get_tuning(const kvfuse_context* context, kvfuse_tuning* tuning) {
    return kvfuse::detail::guarded("kvfuse_context_get_tuning", [&] {
        if (context == nullptr || tuning == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "context and tuning are required");
        return kvfuse::detail::write_struct(
            "tuning", context->use_process_tuning ? kvfuse::detail::current_tuning() : context->own_tuning, tuning);
    });
}

kvfuse_status kvfuse_context_scratch_bytes(const kvfuse_context* context, size_t* bytes) {
    return kvfuse::detail::guarded("kvfuse_context_scratch_bytes", [&] {
        if (context == nullptr || bytes == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "context and bytes are required");
        *bytes = context->scratch_bytes;
        return KVFUSE_OK;
    });
}

}  // extern "C"
