// What a kernel call runs with, as the kernels see it: the tuning, how many workers it may use,
// how workers are run (the calling thread, an OpenMP team, or the engine's parallel-for), and
// scratch memory owned by the execution context (kvfuse_context, dispatch/context.cpp).
// Declarations only, defined out of line in dispatch/: no inline code here can be compiled into
// one ISA's object and linked into another's (kernels/README.md).
//
// The rule every kernel follows: reserve all memory first (context_scratch and the reserve_*
// functions may throw std::bad_alloc, which the API turns into KVFUSE_ERROR_OUT_OF_MEMORY), then
// run workers that neither allocate nor throw.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {

class RopeTableCache;
class RopePositionTables;
struct RopePlan;

// The tuning of this call (validated; the context's own or the process-wide snapshot).
const kvfuse_tuning& context_tuning(const kvfuse_context& context);

// How many workers a call may run (>= 1): the context's thread count, OpenMP's default for 0.
std::size_t context_workers(const kvfuse_context& context);

// At least `bytes` bytes, 64-byte aligned, owned by the context and kept for its next calls.
// Each call returns the same block (grown when too small; the old contents are then lost), so
// a kernel asks once per call, for everything, before its workers start.
void* context_scratch(kvfuse_context& context, std::size_t bytes);

// Runs task(arg, w) once for every w in [0, workers) and returns when all have returned: on
// the calling thread when workers == 1, else as the context's parallel-for tasks or on an
// OpenMP team of at most `workers` threads (an OpenMP team smaller than asked runs several
// indices per thread). Tasks may run in any order and need not run at once.
void context_run(const kvfuse_context& context, std::size_t workers, void (*task)(void* arg, std::size_t worker),
                 void* arg);

// Runs first(arg, w) for every w in [0, workers), then second(arg, w) for every w: no second
// starts before every first has returned. On an OpenMP team one parallel region with a barrier
// between the two (starting and ending a region cost ~0.4 us each on Zen 4: a tenth of a
// 2-thread call of 128 x 8 x 128 keys); with a parallel_for or the context's pool, two runs.
void context_run_two_phases(const kvfuse_context& context, std::size_t workers, void (*first)(void* arg, std::size_t worker),
                            void (*second)(void* arg, std::size_t worker), void* arg);

// Worker w's RoPE table cache (w < the count last reserved). reserve_rope_tables gives every
// worker below `workers` a cache whose tables hold room for (plan, dtype, heads), so that
// building a table inside a worker never allocates.
void reserve_rope_tables(kvfuse_context& context, std::size_t workers, const RopePlan& plan, kvfuse_dtype dtype,
                         std::size_t heads);
RopeTableCache& context_rope_tables(kvfuse_context& context, std::size_t worker);
// The context's tables of positions 0..RopePositionTables::kPositions - 1, shared by a call's
// workers: prepared on the calling thread, read-only inside workers.
RopePositionTables& context_rope_positions(kvfuse_context& context);

// Carves consecutive 64-byte aligned blocks out of one scratch allocation: a kernel adds every
// block it needs (add returns the offset), asks context_scratch for total() bytes, then takes
// each block at base + offset.
struct ScratchLayout {
    std::size_t bytes = 0;
    std::size_t add(std::size_t size);
};

}  // namespace kvfuse::detail
