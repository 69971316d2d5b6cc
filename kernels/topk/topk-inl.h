// Exact top-k written once on the xsimd architecture (compiled per ISA; no include guard).
//
// 1. A strided sample of 1024 scores brackets the k-th largest value between t_lo and t_hi with
//    a binomial margin. 2. One vector pass keeps, in index order, every score >= t_lo (AVX-512:
//    compress-store of values and indices) and counts the scores > t_hi. 3. If the bracket holds
//    (count(> t_hi) <= k <= count(>= t_lo)), an exact selection among the few candidates in
//    [t_lo, t_hi] finds the boundary; otherwise the bracket widens and the pass repeats.
// Candidates stay in index order, so the position-ordered result needs no sort.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>
#include <xsimd/xsimd.hpp>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "kernels/kernel_table.h"

namespace kvfuse::KVFUSE_ISA_NAMESPACE {
namespace {

using Arch = KVFUSE_XSIMD_ARCH;
using F32s = xsimd::batch<float, Arch>;
constexpr std::size_t kLanes = F32s::size;
constexpr std::size_t kSample = 1024;

// Larger first, NaN last, ties by lower index (the contract of kvfuse_topk).
inline bool ranks_before(float a, std::uint32_t ia, float b, std::uint32_t ib) {
    const bool a_nan = a != a, b_nan = b != b;
    if (a_nan != b_nan) return b_nan;
    if (!a_nan && a != b) return a > b;
    return ia < ib;
}

// Per-thread buffers kept across calls: on this VM a fresh 200 KiB allocation costs more in
// page faults than the whole selection.
struct Candidates {
    std::vector<float> values;
    std::vector<std::uint32_t> indices;
    std::vector<std::uint64_t> middle;
    std::vector<std::int64_t> chosen;
    std::vector<float> sample;
    std::size_t count = 0;
    std::size_t above_hi = 0;  // scores > t_hi
};

// Keeps scores >= lo (in index order) and counts scores > hi. NaN passes neither.
void filter(const float* x, std::size_t n, float lo, float hi, Candidates& c) {
    c.count = 0;
    c.above_hi = 0;
    float* values = c.values.data();
    std::uint32_t* indices = c.indices.data();
    std::size_t i = 0;
#if defined(__AVX512F__)
    if constexpr (kLanes == 16) {
        const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
        __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512i step = _mm512_set1_epi32(16);
        for (; i + 16 <= n; i += 16) {
            const __m512 v = _mm512_loadu_ps(x + i);
            const __mmask16 keep = _mm512_cmp_ps_mask(v, vlo, _CMP_GE_OQ);
            const __mmask16 above = _mm512_cmp_ps_mask(v, vhi, _CMP_GT_OQ);
            c.above_hi += static_cast<std::size_t>(std::popcount(static_cast<unsigned>(above)));
            _mm512_mask_compressstoreu_ps(values + c.count, keep, v);
            _mm512_mask_compressstoreu_epi32(indices + c.count, keep, index);
            c.count += static_cast<std::size_t>(std::popcount(static_cast<unsigned>(keep)));
            index = _mm512_add_epi32(index, step);
        }
    }
#endif
    const F32s vlo(lo), vhi(hi);
    for (; i + kLanes <= n; i += kLanes) {
        const F32s v = F32s::load_unaligned(x + i);
        if (xsimd::any(v > vhi))
            for (std::size_t j = 0; j < kLanes; ++j) c.above_hi += x[i + j] > hi;
        if (!xsimd::any(v >= vlo)) continue;
        for (std::size_t j = 0; j < kLanes; ++j)
            if (x[i + j] >= lo) {
                values[c.count] = x[i + j];
                indices[c.count++] = static_cast<std::uint32_t>(i + j);
            }
    }
    for (; i < n; ++i) {
        c.above_hi += x[i] > hi;
        if (x[i] >= lo) {
            values[c.count] = x[i];
            indices[c.count++] = static_cast<std::uint32_t>(i);
        }
    }
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

void topk(const float* x, std::size_t n, std::size_t k, kvfuse_topk_order order, std::int64_t* out) {
    thread_local Candidates per_thread;
    Candidates& c = per_thread;
    if (c.values.size() < n) {
        c.values.resize(n);
        c.indices.resize(n);
    }
    // The bracket [lo, hi] around the k-th largest value, from a strided sample.
    std::vector<float>& sample = c.sample;
    sample.clear();
    const std::size_t stride = std::max<std::size_t>(1, n / kSample);
    for (std::size_t i = 0; i < n && sample.size() < kSample; i += stride)
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
    // Boundary: among the candidates in [lo, hi], the (k - above_hi)-th best.
    const std::size_t need = k - std::min(k, c.above_hi);
    // Candidates are numbers (the filter drops NaN), so plain comparisons rank them; the passes
    // below are branch-free because which side a candidate falls on is unpredictable.
    std::vector<std::uint64_t>& middle = c.middle;
    middle.resize(c.count);
    std::size_t middle_count = 0;
    for (std::size_t i = 0; i < c.count; ++i) {
        middle[middle_count] = rank_key(c.values[i], c.indices[i]);
        middle_count += !(c.values[i] > hi);
    }
    std::size_t taken = 0;
    std::size_t nan_needed = 0;
    // Selected: above hi, or a middle key at least the boundary key. need == 0 takes none of
    // the middle (the boundary stays above every key).
    std::uint64_t boundary = ~std::uint64_t{0};
    bool take_all_middle = false;
    if (need > 0 && need <= middle_count) {
        auto nth = middle.begin() + static_cast<std::ptrdiff_t>(need - 1);
        std::nth_element(middle.begin(), nth, middle.begin() + static_cast<std::ptrdiff_t>(middle_count), std::greater<>());
        boundary = *nth;
    } else if (need > middle_count) {
        // Fewer numbers than k (only after the full-range retry): every number, then NaNs.
        take_all_middle = true;
        nan_needed = need - middle_count;
    }
    c.chosen.resize(c.count + 1);  // written one past the last chosen index, never read there
    std::int64_t* chosen = c.chosen.data();
    for (std::size_t i = 0; i < c.count; ++i) {
        const float v = c.values[i];
        const std::uint32_t index = c.indices[i];
        chosen[taken] = index;
        taken += v > hi || take_all_middle || rank_key(v, index) >= boundary;
    }
    taken = std::min(taken, k);
    std::copy(chosen, chosen + taken, out);
    if (nan_needed > 0) {
        // Merge the lowest-index NaNs into the index-ordered list.
        std::vector<std::int64_t> nans;
        for (std::size_t i = 0; i < n && nans.size() < nan_needed; ++i)
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
