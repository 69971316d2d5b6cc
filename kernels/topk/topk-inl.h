// Exact top-k written once on the xsimd architecture (compiled per ISA; no include guard).
//
// 1. A strided sample of scores (1024 by default; tuned) brackets the k-th largest value between lo and hi with a
//    binomial margin. 2. One vector pass compress-stores, in index order, every score >= lo
//    (values and indices) and counts the scores > hi. 3. If the bracket holds
//    (count(> hi) <= k <= count(>= lo)), a histogram of the middle candidates (those in
//    [lo, hi]) over a few thousand equal-width buckets finds the bucket holding the boundary,
//    and an exact selection among that bucket's handful of scores finds the boundary element;
//    otherwise every score becomes a candidate and the selection is exact on all of them.
// 4. A last compress pass over the candidates keeps those ranked at or above the boundary.
// Candidates stay in index order, so the position-ordered result needs no sort.
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>
#include <xsimd/xsimd.hpp>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "kernels/kernel_table.h"
#include "kernels/tuning.h"

namespace kvfuse::KVFUSE_ISA_NAMESPACE {
namespace {

using Arch = KVFUSE_XSIMD_ARCH;
using F32s = xsimd::batch<float, Arch>;
using U32s = xsimd::batch<std::uint32_t, Arch>;
constexpr std::size_t kLanes = F32s::size;

// Larger first, NaN last, ties by lower index (the contract of kvfuse_topk).
inline bool ranks_before(float a, std::uint32_t ia, float b, std::uint32_t ib) {
    const bool a_nan = a != a, b_nan = b != b;
    if (a_nan != b_nan) return b_nan;
    if (!a_nan && a != b) return a > b;
    return ia < ib;
}

// One bit per lane of a float comparison result (a template so that only the branch of this
// ISA is instantiated).
template <class Bools>
inline unsigned lane_bits(Bools b) {
#if defined(__AVX512F__)
    if constexpr (kLanes == 16) return static_cast<unsigned>(static_cast<__mmask16>(b));
#endif
#if defined(__AVX2__)
    if constexpr (kLanes == 8) return static_cast<unsigned>(_mm256_movemask_ps(static_cast<__m256>(b)));
#endif
    alignas(64) std::array<float, kLanes> lanes;
    xsimd::select(b, F32s(1.0f), F32s(0.0f)).store_aligned(lanes.data());
    unsigned bits = 0;
    for (std::size_t j = 0; j < kLanes; ++j) bits |= static_cast<unsigned>(lanes[j] != 0.0f) << j;
    return bits;
}

#if defined(__AVX2__)
// For each 8-bit mask, the lane order that moves the kept lanes to the front: AVX2 has no
// compress instruction, a permute through this 8 KiB table (L1-resident) stands in for it.
struct CompressTable {
    alignas(32) std::array<std::array<std::uint32_t, 8>, 256> order{};
    constexpr CompressTable() {
        for (unsigned mask = 0; mask < 256; ++mask) {
            unsigned out = 0;
            for (unsigned lane = 0; lane < 8; ++lane)
                if (mask & (1u << lane)) order[mask][out++] = lane;
            for (; out < 8; ++out) order[mask][out] = 0;
        }
    }
};
constexpr CompressTable kCompress8{};
#endif

// Writes the lanes selected by `bits` to dst[0..popcount) in lane order and returns the count.
// May write up to kLanes elements: callers leave that much room.
template <class T>
inline std::size_t compress_store(xsimd::batch<T, Arch> v, unsigned bits, T* dst) {
#if defined(__AVX512F__)
    if constexpr (kLanes == 16) {
        if constexpr (std::is_same_v<T, float>)
            _mm512_mask_compressstoreu_ps(dst, static_cast<__mmask16>(bits), v);
        else
            _mm512_mask_compressstoreu_epi32(dst, static_cast<__mmask16>(bits), v);
        return static_cast<std::size_t>(std::popcount(bits));
    }
#endif
#if defined(__AVX2__)
    if constexpr (kLanes == 8) {
        const __m256i order = _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompress8.order[bits].data()));
        if constexpr (std::is_same_v<T, float>)
            _mm256_storeu_ps(dst, _mm256_permutevar8x32_ps(v, order));
        else
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permutevar8x32_epi32(v, order));
        return static_cast<std::size_t>(std::popcount(bits));
    }
#endif
    alignas(64) std::array<T, kLanes> lanes;
    v.store_aligned(lanes.data());
    std::size_t count = 0;
    for (std::size_t j = 0; j < kLanes; ++j) {  // branch-free: kept lanes are unpredictable
        dst[count] = lanes[j];
        count += (bits >> j) & 1u;
    }
    return count;
}

// Per-thread buffers kept across calls: on this VM a fresh 200 KiB allocation costs more in
// page faults than the whole selection.
struct Candidates {
    std::vector<float> values;
    std::vector<std::uint32_t> indices;
    std::vector<std::uint32_t> buckets;
    std::vector<std::uint32_t> histogram;
    std::vector<std::uint64_t> keys;
    std::vector<std::uint32_t> chosen;
    std::vector<float> sample;
    std::size_t count = 0;
    std::size_t above_hi = 0;  // scores > hi
};

inline U32s first_indices() {
    alignas(64) std::array<std::uint32_t, kLanes> lanes;
    for (std::size_t j = 0; j < kLanes; ++j) lanes[j] = static_cast<std::uint32_t>(j);
    return U32s::load_aligned(lanes.data());
}

// Keeps scores >= lo (in index order) and counts scores > hi. NaN passes neither.
void filter(const float* x, std::size_t n, float lo, float hi, Candidates& c) {
    std::size_t count = 0, above = 0;
    float* values = c.values.data();
    std::uint32_t* indices = c.indices.data();
    const F32s vlo(lo), vhi(hi);
    U32s index = first_indices();
    const U32s step(static_cast<std::uint32_t>(kLanes));
    std::size_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
        const F32s v = F32s::load_unaligned(x + i);
        const unsigned keep = lane_bits(v >= vlo);
        above += static_cast<std::size_t>(std::popcount(lane_bits(v > vhi)));
        compress_store(v, keep, values + count);
        count += compress_store(index, keep, indices + count);
        index += step;
    }
    for (; i < n; ++i) {
        above += x[i] > hi;
        values[count] = x[i];
        indices[count] = static_cast<std::uint32_t>(i);
        count += x[i] >= lo;
    }
    c.count = count;
    c.above_hi = above;
}

// One 64-bit key per (number, index) that orders exactly like ranks_before: the float's bits
// made monotonic as unsigned (with -0 folded into +0, which compare equal) above the
// complemented index (lower index = larger key). Plain integer comparisons then replace the
// two-level comparator in the exact selection.
inline std::uint64_t rank_key(float value, std::uint32_t index) {
    std::uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    bits = value == 0.0f ? 0u : bits;
    const std::uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
    return (static_cast<std::uint64_t>(ordered) << 32) | static_cast<std::uint32_t>(~index);
}

// The value at descending rank `rank` of the non-NaN samples (clamped).
float sample_rank(std::vector<float>& sample, std::size_t rank) {
    rank = std::min(rank, sample.size() - 1);
    std::nth_element(sample.begin(), sample.begin() + static_cast<std::ptrdiff_t>(rank), sample.end(), std::greater<float>());
    return sample[rank];
}

// The boundary: the `need`-th best (1-based, 1 <= need <= middle count) of the candidates in
// [lo, hi], as a rank key. Candidates above hi are skipped.
std::uint64_t boundary_key(Candidates& c, float lo, float hi, std::size_t middle_count, std::size_t need) {
    std::vector<std::uint64_t>& keys = c.keys;
    const float width = hi - lo;
    // A histogram over equal-width buckets of [lo, hi] narrows the search to one bucket. The
    // bucket of a value is monotonic in it (subtraction and multiplication by a positive
    // constant round monotonically), so every bucket above the boundary's is wholly selected.
    // Unusable when the bracket is unbounded or too narrow for a finite scale.
    const std::size_t bucket_count = std::clamp<std::size_t>(std::bit_ceil(middle_count / 4 + 1), 64, 16384);
    const float scale = static_cast<float>(bucket_count) / width;
    if (middle_count > 512 && std::isfinite(lo) && std::isfinite(hi) && width > 0.0f && std::isfinite(scale)) {
        std::vector<std::uint32_t>& histogram = c.histogram;
        histogram.assign(bucket_count + 1, 0);  // the last bucket collects the scores above hi
        std::uint32_t* bucket = c.buckets.data();
        // Bucket numbers as floats in [0, bucket_count - 1], made integers by the 2^23 trick
        // (round to nearest: monotonic like the truncation it replaces, and one instruction
        // sequence for the vectors and the scalar tail alike).
        const F32s vlo(lo), vhi(hi), vscale(scale), top(static_cast<float>(bucket_count - 1)), magic(8388608.0f);
        using I32s = xsimd::batch<std::int32_t, Arch>;
        const I32s magic_bits(0x4B000000), above(static_cast<std::int32_t>(bucket_count));
        std::size_t i = 0;
        for (; i + kLanes <= c.count; i += kLanes) {
            const F32s v = F32s::load_unaligned(c.values.data() + i);
            const I32s b = xsimd::bitwise_cast<I32s>(xsimd::min((v - vlo) * vscale, top) + magic) - magic_bits;
            const I32s over = xsimd::bitwise_cast<I32s>(xsimd::select(v > vhi, F32s(-1.0f), F32s(0.0f)));
            xsimd::select(over != I32s(0), above, b).store_unaligned(reinterpret_cast<std::int32_t*>(bucket + i));
        }
        for (; i < c.count; ++i) {
            const float v = c.values[i];
            std::int32_t b;
            const float x = std::min((v - lo) * scale, static_cast<float>(bucket_count - 1)) + 8388608.0f;
            std::memcpy(&b, &x, sizeof b);
            bucket[i] = v > hi ? static_cast<std::uint32_t>(bucket_count) : static_cast<std::uint32_t>(b - 0x4B000000);
        }
        for (i = 0; i < c.count; ++i) ++histogram[bucket[i]];
        std::size_t b = bucket_count - 1, better = 0;
        while (better + histogram[b] < need) better += histogram[b--];
        const std::size_t in_bucket = histogram[b];
        need -= better;
        keys.resize(in_bucket);
        std::size_t kept = 0;
        const float* values = c.values.data();
        const std::uint32_t* indices = c.indices.data();
        for (i = 0; i < c.count; ++i)  // a well-predicted branch: few candidates are in bucket b
            if (bucket[i] == b) keys[kept++] = rank_key(values[i], indices[i]);
        middle_count = kept;
    } else {
        keys.resize(c.count + 1);
        std::size_t kept = 0;
        for (std::size_t i = 0; i < c.count; ++i) {
            keys[kept] = rank_key(c.values[i], c.indices[i]);
            kept += !(c.values[i] > hi);
        }
        middle_count = kept;
    }
    auto nth = keys.begin() + static_cast<std::ptrdiff_t>(need - 1);
    std::nth_element(keys.begin(), nth, keys.begin() + static_cast<std::ptrdiff_t>(middle_count), std::greater<>());
    return *nth;
}

// Writes, in index order, the candidates ranked at or above the boundary element (value bv,
// index bi): those greater than bv, and (take_equal) those equal to it at a lower or equal
// index. Returns how many.
std::size_t take_selected(const Candidates& c, float bv, std::uint32_t bi, bool take_equal, std::uint32_t* out) {
    const F32s vb(bv);
    std::size_t taken = 0, i = 0;
    for (; i + kLanes <= c.count; i += kLanes) {
        const F32s v = F32s::load_unaligned(c.values.data() + i);
        const U32s index = U32s::load_unaligned(c.indices.data() + i);
        unsigned keep = lane_bits(v > vb);
        if (unsigned equal = take_equal ? lane_bits(v == vb) : 0u; equal != 0) {
            // Ties with the boundary value are rare: settle them lane by lane.
            for (std::size_t j = 0; j < kLanes; ++j)
                keep |= (((equal >> j) & 1u) & static_cast<unsigned>(c.indices[i + j] <= bi)) << j;
        }
        taken += compress_store(index, keep, out + taken);
    }
    for (; i < c.count; ++i) {
        const float v = c.values[i];
        out[taken] = c.indices[i];
        taken += v > bv || (take_equal && v == bv && c.indices[i] <= bi);
    }
    return taken;
}

// Out of line: once the thread-local object is inlined into the loops, GCC re-derives its
// address (__tls_get_addr in a shared library) on every element.
[[gnu::noinline]] Candidates& thread_candidates() {
    thread_local Candidates per_thread;
    return per_thread;
}

void topk(const float* x, std::size_t n, std::size_t k, kvfuse_topk_order order, std::int64_t* out) {
    Candidates& c = thread_candidates();
    if (c.values.size() < n + kLanes) {
        c.values.resize(n + kLanes);
        c.indices.resize(n + kLanes);
        c.buckets.resize(n + kLanes);
        c.chosen.resize(n + kLanes);
    }
    // The bracket [lo, hi] around the k-th largest value, from a strided sample.
    std::vector<float>& sample = c.sample;
    sample.clear();
    const std::size_t sample_size = detail::current_tuning().topk_sample;
    const std::size_t stride = std::max<std::size_t>(1, n / sample_size);
    for (std::size_t i = 0; i < n && sample.size() < sample_size; i += stride)
        if (x[i] == x[i]) sample.push_back(x[i]);
    float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
    if (sample.size() >= 64 && n >= 4096) {
        const double expected = static_cast<double>(k) * sample.size() / n;
        const double margin = 4.0 * std::sqrt(expected + 1.0) + 4.0;
        const double lo_rank = expected + margin, hi_rank = expected - margin;
        if (lo_rank < static_cast<double>(sample.size())) lo = sample_rank(sample, static_cast<std::size_t>(lo_rank));
        if (hi_rank >= 0.0) hi = sample_rank(sample, static_cast<std::size_t>(hi_rank));
    }
    filter(x, n, lo, hi, c);
    if (c.count < k || c.above_hi > k) {
        // The sample misled us (rare): take every number as a candidate and select exactly.
        lo = -std::numeric_limits<float>::infinity();
        hi = std::numeric_limits<float>::infinity();
        filter(x, n, lo, hi, c);
    }
    // Candidates are numbers (the filter drops NaN). Of the middle ones, in [lo, hi], the best
    // `need` complete the scores above hi.
    const std::size_t need = k - std::min(k, c.above_hi);
    const std::size_t middle_count = c.count - c.above_hi;
    std::size_t taken = 0;
    if (need == 0) {
        taken = take_selected(c, hi, 0, false, c.chosen.data());  // exactly the scores above hi
    } else if (need <= middle_count) {
        const std::uint64_t key = boundary_key(c, lo, hi, middle_count, need);
        const std::uint32_t bi = ~static_cast<std::uint32_t>(key);
        taken = take_selected(c, x[bi], bi, true, c.chosen.data());
    } else {
        // Fewer numbers than k (only after the full-range retry): every number, then NaNs.
        std::copy(c.indices.begin(), c.indices.begin() + static_cast<std::ptrdiff_t>(c.count), c.chosen.begin());
        taken = c.count;
    }
    std::copy(c.chosen.begin(), c.chosen.begin() + static_cast<std::ptrdiff_t>(taken), out);
    if (taken < k) {
        // Merge the lowest-index NaNs into the index-ordered list.
        std::vector<std::int64_t> nans;
        for (std::size_t i = 0; i < n && nans.size() < k - taken; ++i)
            if (x[i] != x[i]) nans.push_back(static_cast<std::int64_t>(i));
        std::vector<std::int64_t> merged(taken + nans.size());
        std::merge(out, out + taken, nans.begin(), nans.end(), merged.begin());
        std::copy(merged.begin(), merged.end(), out);
        taken = merged.size();
    }
    if (order == KVFUSE_TOPK_BY_SCORE)
        std::sort(out, out + taken, [&](std::int64_t a, std::int64_t b) {
            return ranks_before(x[a], static_cast<std::uint32_t>(a), x[b], static_cast<std::uint32_t>(b));
        });
}

}  // namespace

void register_topk(detail::KernelTable& table) { table.topk = &topk; }

}  // namespace kvfuse::KVFUSE_ISA_NAMESPACE
