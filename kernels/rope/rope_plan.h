// ISA-neutral part of the RoPE kernel: the validated configuration, the per-pair frequencies
// (with scaling applied, in double) and the cos/sin tables for one delta, laid out the way each
// (pairing, dtype) kernel variant reads them. Compiled once, without ISA flags.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {

struct RopePlan {
    std::uint64_t id = 0;  // unique per distinct plan, so cached tables can tell plans apart
    // config.freq_factors points into freq_factors below (never at the caller's memory):
    // rope_plan_for sets it where the plan lives.
    kvfuse_rope_config config{};
    std::vector<float> freq_factors;  // a copy of the caller's, rotary_dims / 2 values or empty
    int rotary_dims = 0;           // resolved (never 0)
    std::vector<double> inv_freq;  // theta_i after scaling, rotary_dims / 2 entries
    // Interleaved pairing with every dim rotating: a row of `heads` heads is one long run of
    // pairs, so the kernel can sweep the whole row with a table tiled across heads.
    bool row_flattened(std::size_t /*heads*/) const {
        return config.pairing == KVFUSE_ROPE_INTERLEAVED && rotary_dims == config.head_dim;
    }
    // NeoX pairing, every dim rotating, heads of 4, 8 or 16 dims: a vector holds whole heads, so
    // a kernel sweeps a row of packed heads with an in-vector half swap (a loop per head would
    // run a few scalar pairs each: head_dim 8 went at 10-22 % of copy).
    bool neox_small_heads() const {
        const int d = config.head_dim;
        return config.pairing == KVFUSE_ROPE_NEOX && rotary_dims == d && (d == 4 || d == 8 || d == 16);
    }
};

// Checks the configuration; on failure returns false and writes the reason to `why`.
bool validate_rope_config(const kvfuse_rope_config& config, std::string& why);

// The plan of a validated configuration. Cached per thread: a caller that rotates layer after
// layer with one configuration pays for the frequencies once.
const RopePlan& rope_plan_for(const kvfuse_rope_config& config);

// Whether two validated configurations rotate alike: every field, and the frequency factors by
// value (a caller may rewrite the array behind the same pointer).
bool same_rope_config(const kvfuse_rope_config& a, const kvfuse_rope_config& b);

// The frequency of pair i after scaling and the frequency factor; shared by the plan and, independently written, the
// reference (reference/rope_reference.cpp re-derives it from the formulas).
double rope_inv_freq(const kvfuse_rope_config& config, int rotary_dims, int pair);

// cos/sin of delta * inv_freq for one delta, angle in double, rounded to f32 once.
// Layouts (pairs = rotary_dims / 2; a flattened row repeats the head's pairs `heads` times):
//   cos, sin     per pair (always filled; the scalar tails use them)
//   cos2, sin2   f32 and f16 interleaved: per element, cos2[2i] = cos2[2i+1] = cos_i,
//                sin2[2i] = -sin_i, sin2[2i+1] = +sin_i, so out = x*cos2 + swap_pairs(x)*sin2
//   even/odd     bf16 NeoX: cos/sin of the even and odd pair indices, so that a 32-bit lane
//                holding elements (2j, 2j+1) pairs with the lane holding (h+2j, h+2j+1)
//   small_first, small_second   NeoX small heads (RopePlan::neox_small_heads): per element e of
//                a run of whole heads, with k = e mod head_dim, h = head_dim / 2:
//                (cos_k, -sin_k) for k < h and (sin_{k-h}, cos_{k-h}) for k >= h, so that
//                out = fma(first halves, small_first, second halves * small_second), the FMA
//                sequence of every other path (x1*c - x2*s; x1*s + x2*c). The *_even / *_odd
//                arrays are the same tables for the even and odd elements (bf16's 32-bit lanes).
// Its special members are defined out of line in rope_plan.cpp (ISA-neutral): an implicit
// destructor would be an inline function emitted, as a weak symbol, in every ISA's rope object,
// and the linker would keep whichever copy came first (tests/check_isa_objects.sh).
class RopeTable {
   public:
    RopeTable();
    ~RopeTable();
    RopeTable(const RopeTable&) = delete;
    RopeTable& operator=(const RopeTable&) = delete;
    void build(const RopePlan& plan, kvfuse_dtype dtype, std::size_t heads, std::int64_t delta);
    // Room for build(plan, dtype, heads, any delta), so that building then never allocates.
    void reserve(const RopePlan& plan, kvfuse_dtype dtype, std::size_t heads);
    bool holds(const RopePlan& plan, kvfuse_dtype dtype, std::size_t heads, std::int64_t delta) const {
        return built_ && plan_id_ == plan.id && dtype_ == dtype && heads_ == heads && delta_ == delta;
    }

    std::vector<float> cos, sin;
    std::vector<float> cos2, sin2;
    std::vector<float> cos_even, sin_even, cos_odd, sin_odd;
    // Fixed size (the widest vector's worth of elements, 16 f32 lanes of bf16 pairs): built with
    // no allocation.
    static constexpr std::size_t kSmallHeadRun = 32;
    alignas(64) float small_first[kSmallHeadRun], small_second[kSmallHeadRun];
    alignas(64) float small_first_even[kSmallHeadRun / 2], small_second_even[kSmallHeadRun / 2];
    alignas(64) float small_first_odd[kSmallHeadRun / 2], small_second_odd[kSmallHeadRun / 2];

   private:
    bool built_ = false;
    std::uint64_t plan_id_ = 0;
    kvfuse_dtype dtype_ = KVFUSE_DTYPE_F32;
    std::size_t heads_ = 0;
    std::int64_t delta_ = 0;
};

// The tables of the last kEntries distinct deltas a worker used outside the position range of
// RopePositionTables (negative deltas: rotating back). A request re-rotates each of its chunks by
// the chunk's own delta, layer after layer: with one table, chunk after chunk rebuilt it (64
// double sin/cos for D = 128, 2-3 us: a fifth of re-rotating one L2-resident layer of a chunk);
// with a table per recent delta, each request pays once per chunk. Its tables are reserved before
// the workers run, so building one never allocates. Out of line (rope_plan.cpp), for the reason
// RopeTable's members are.
class RopeTableCache {
   public:
    static constexpr std::size_t kEntries = 16;
    RopeTableCache();
    ~RopeTableCache();
    RopeTableCache(const RopeTableCache&) = delete;
    RopeTableCache& operator=(const RopeTableCache&) = delete;
    // The table for these arguments, built if none of the entries holds it (replacing the one
    // used least recently).
    const RopeTable& get(const RopePlan& plan, kvfuse_dtype dtype, std::size_t heads, std::int64_t delta);
    // Every entry's RopeTable::reserve: get() then never allocates for these arguments.
    void reserve(const RopePlan& plan, kvfuse_dtype dtype, std::size_t heads);

   private:
    RopeTable tables_[kEntries];
    std::uint64_t last_use_[kEntries] = {};
    std::uint64_t clock_ = 0;
};

// Tables of deltas 0..kPositions-1, kept by delta per execution context and shared by a call's
// workers. Ordinary RoPE of fresh Q/K at their absolute positions uses a different delta for
// every token, every layer: per-call tables were sin/cos 4.6 % of a 4K-token request's profile.
// prepare() builds, on the calling thread before any worker starts, the tables of every delta the
// call uses that are not there yet (workers only read them: a task never allocates); a call at
// positions seen before allocates nothing. Kept for the kSlots table kinds used last: the kind is
// the configuration, bf16 or not (f32 and f16 read the same tables) and, only where an interleaved row is
// swept whole, the head count, so an engine's queries, f32 keys and f16 cache share one kind.
// Memory: about 0.5-1 KiB a position and kind for D = 128 (a 4K context: a few MiB a kind).
struct RopePositionSlot {
    // By value: plans of the same configuration on other threads have other ids. config's
    // freq_factors points into freq_factors.
    kvfuse_rope_config config{};
    std::vector<float> freq_factors;
    std::uint64_t last_use = 0;
    bool bf16 = false;
    std::size_t heads = 0;  // 0 unless the row is flattened
    std::vector<std::unique_ptr<RopeTable>> tables;
    const RopeTable* find(std::int64_t delta) const {
        return delta >= 0 && static_cast<std::uint64_t>(delta) < tables.size() ? tables[static_cast<std::size_t>(delta)].get()
                                                                             : nullptr;
    }
};

class RopePositionTables {
   public:
    static constexpr std::int64_t kPositions = 32768;
    static constexpr std::size_t kSlots = 4;
    RopePositionTables();
    ~RopePositionTables();
    RopePositionTables(const RopePositionTables&) = delete;
    RopePositionTables& operator=(const RopePositionTables&) = delete;
    // The slot holding the tables of every delta in [0, kPositions) among `deltas` (per token) or
    // `delta` (every token, when deltas is null), built here; null when the call uses none.
    // May throw std::bad_alloc (before any worker runs).
    const RopePositionSlot* prepare(const RopePlan& plan, kvfuse_dtype dtype, std::size_t heads,
                                    const std::int64_t* deltas, std::size_t tokens, std::int64_t delta);

   private:
    RopePositionSlot slots_[kSlots];
    std::uint64_t clock_ = 0;
};

}  // namespace kvfuse::detail
