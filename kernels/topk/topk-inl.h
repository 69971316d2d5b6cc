// Exact top-k written once on the xsimd architecture (compiled per ISA; no include guard).
//
// 1. A strided sample of scores (1024 by default; tuned) brackets the k-th largest value
//    between lo and hi with a binomial margin (hi stays open when k is too small for one).
// 2. One vector pass compress-stores, in index order, every score >= lo (values and indices).
//    3. The middle candidates (those in [lo, hi]) are packed and the candidates > hi counted. If
//    the bracket holds (count(> hi) <= k <= count(>= lo)), the middle candidates are, while
//    many, bracketed again by a sample of their own; a histogram of what is left (an open hi
//    is closed by the largest candidate) over about one bucket per 16 of them finds the bucket
//    holding the boundary, and an exact selection among that bucket's handful of scores finds
//    the boundary value (the middle sets carry values only: one compress per vector, not two) and
//    how many of its equals are taken; the index of the last of those, in index order, is
//    looked up among the candidates. Otherwise every score becomes a candidate and the
//    selection is exact on all of them. 4. A last compress pass over the candidates writes the
//    int64 indices of those ranked at or above the boundary straight into the result.
// Candidates stay in index order, so the position-ordered result needs no sort.
// Where a group compress is cheap (AVX512-VBMI2: one vpcompressb picks the kept ones of 64
// scores) and many scores are candidates (large k), steps 2 and 4 differ: the filter keeps only
// the middle candidates' values, and the output pass reads the scores again, writing the
// positions of those ranked at or above the boundary (select_from_scores).
// Where the time goes (AVX-512, N = 131072, k = 15 %, perf): the filter pass about 40 %,
// the output pass a fifth, packing the middle candidates, the samples and histogram the rest.
// AVX2 on Zen 3 (L2 512 KiB: "hot" scores come mostly from L3), perf: the filter half, the
// output pass 13 %, packing the middle 11 %, the strided sample ~7 %, sample quickselects 4 %.
// Packing the middle inside the filter (a third compress-store per vector of all n scores,
// instead of one per vector of the ~20 % candidates) measured 1.42x the filter + packing time
// there; prefetching the filter's scores did not help (the streamer keeps up).
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>
#include <xsimd/xsimd.hpp>

#include "kernels/common/isa_ops-inl.h"
#include "kernels/kernel_table.h"
#include "kernels/topk/topk_scratch.h"

namespace kvfuse::KVFUSE_ISA_NAMESPACE {
namespace {

using Arch = KVFUSE_XSIMD_ARCH;
using F32s = xsimd::batch<float, Arch>;
using U32s = xsimd::batch<std::uint32_t, Arch>;
constexpr std::size_t kLanes = F32s::size;

// The buffers of one worker, kept across calls by the execution context (topk_scratch.h).
using Candidates = detail::TopkScratch;

// The first bracket is sampled only from kMinBracketedScores scores up (below, filtering every
// score costs less than the sample), and only when kMinBracketSample numbers were sampled
// (fewer give a margin wider than the bracket saves).
constexpr std::size_t kMinBracketedScores = 4096;
constexpr std::size_t kMinBracketSample = 64;
// The sample's loads each miss a cache line (one per stride): prefetched this many samples ahead.
constexpr std::size_t kSamplePrefetchAhead = 16;
// A bracket around the expected rank r of the boundary in a sample: r +- (4 sqrt(r + 1) + 4),
// four standard deviations of a binomial count (sqrt(r + 1) keeps a margin when r is small)
// plus four samples, so that a miss (a full retry, or an undone round) stays rare; a miss
// costs time, never a wrong result.
inline double bracket_margin(double expected_rank) { return 4.0 * std::sqrt(expected_rank + 1.0) + 4.0; }
// A narrowing round samples at most kRoundSample middle candidates (its quickselect stays in L1,
// about 1 us; a larger one narrows little more) and runs only while the set holds more than
// kRoundMinSetPerSample times that (below, one more pass costs more than the histogram saves).
constexpr std::size_t kRoundSample = 512;
constexpr std::size_t kRoundMinSetPerSample = 8;
// The histogram pays from kHistogramMinSet candidates up; fewer are selected among exactly.
constexpr std::size_t kHistogramMinSet = 512;
// About one bucket per kCandidatesPerBucket candidates: the boundary's bucket then holds a
// handful for the exact selection, and the histogram stays far smaller than the set. At least
// kMinBuckets (a narrow set), at most kTopkMaxBuckets (what the scratch reserves).
constexpr std::size_t kCandidatesPerBucket = 16;
constexpr std::size_t kMinBuckets = 64;

// Where a group compress is cheap (isa_ops' kGroupCompressIsCheap), the selection is taken
// from the scores (select_from_scores) when more than this share of them is expected to be a
// candidate (>= lo): AVX512-VBMI2 on Zen 4 at N = 131072, k = 50 % (candidates ~59 %) 0.8x the
// time of the candidates' route; at k = 15 % (~20 %) and below that route is faster: its
// output pass reads only the candidates, not all the scores again.
constexpr double kFromScoresMinShare = 0.3;
// Where a group compress is cheap, the filters keep scores a group of kGroup at a time
// (kGroupVectors vectors); elsewhere a vector at a time (groups measured 4-6 % slower on AVX2).
constexpr std::size_t kGroup = 64;
constexpr std::size_t kGroupVectors = kGroup / kLanes;
// The output pass writes the caller's int64 result (157 KB at N = 131072, k = 15 %), which the
// caller's own work between calls has usually pushed out of L2: its lines are prefetched for
// writing this many results ahead (AVX512-VBMI2 on Zen 4 after a std::nth_element between
// calls: take_selected 17.5-26 -> 16.6-21 k TSC ticks, no change hot).
constexpr std::size_t kWriteAhead = 256;

// Keeps scores >= lo (in index order, values and indices). NaN passes not. The scores > hi are
// counted afterwards, among the candidates only (pack_between): counting them here took a
// second comparison per vector over all n scores.
void filter(const float* x, std::size_t n, float lo, Candidates& c) {
    std::size_t count = 0;
    float* values = c.values.data();
    std::uint32_t* indices = c.indices.data();
    const F32s vlo(lo);
    std::size_t i = 0;
    // Groups of 64 scores: one compress of the group (isa_ops' compress_store_group), which
    // on AVX512-VBMI2 is a single byte compress of the kept positions.
    for (; kGroupCompressIsCheap<Arch> && i + kGroup <= n; i += kGroup) {
        std::array<F32s, kGroupVectors> v;
        std::array<xsimd::batch_bool<float, Arch>, kGroupVectors> kept;
        for (std::size_t g = 0; g < kGroupVectors; ++g) {
            v[g] = F32s::load_unaligned(x + i + g * kLanes);
            kept[g] = v[g] >= vlo;
        }
        count += compress_store_group(v, group_lane_bits(kept), static_cast<std::uint32_t>(i), values + count,
                                      indices + count);
    }
    LanePositions<Arch> positions(static_cast<std::uint32_t>(i));
    for (; i + kLanes <= n; i += kLanes) {
        const F32s v = F32s::load_unaligned(x + i);
        const unsigned keep = lane_bits(v >= vlo);
        compress_store(v, keep, values + count);
        count += compress_store_positions(keep, positions, indices + count);
        positions.next();
    }
    for (; i < n; ++i) {
        values[count] = x[i];
        indices[count] = static_cast<std::uint32_t>(i);
        count += x[i] >= lo;
    }
    c.count = count;
}

// One 64-bit key per (number, index) that orders like the contract of kvfuse_topk (larger
// first, ties by lower index; NaN is never given one): the float's bits
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

// Equal-width buckets over [lo, hi], a bucket kept as the float 2^23 + its number: adding 2^23
// rounds the scaled value to an integer (to nearest: monotonic like the truncation it
// replaces), and bucket numbers then compare as floats, so the vector code needs no integer
// conversion. The bucket is monotonic in the value (subtraction and multiplication by a
// positive constant round monotonically), so every bucket above the boundary's is wholly
// selected. The vector and scalar forms are the same operations in the same order.
struct Buckets {
    static constexpr float kOffset = 8388608.0f;  // 2^23
    float lo, scale, top;
    F32s of(F32s v) const { return xsimd::min((v - F32s(lo)) * F32s(scale), F32s(top)) + F32s(kOffset); }
    float of(float v) const { return std::min((v - lo) * scale, top) + kOffset; }
    // The number as the float's low bits (2^23 + b has the bits 0x4B000000 + b).
    static std::uint32_t number(float bucket) { return std::bit_cast<std::uint32_t>(bucket) - 0x4B000000u; }
};

// The value at descending rank `rank` (< size) of v[0, size), size <= kSmallSet: each value's
// range of ranks counted by vector comparisons against the whole set, no data-dependent branch.
// std::nth_element's comparisons on such a handful mispredict about every other time on fresh
// scores (a caller between two calls retrains the predictor that learned the last call's).
// 32 on every ISA: two vectors on AVX-512, four on AVX2 (where the quickselect stopped at 32).
constexpr std::size_t kSmallSet = 32;
float rank_in_small_set(const float* v, std::size_t size, std::size_t rank) {
    constexpr std::size_t vectors = kSmallSet / kLanes;
    alignas(64) std::array<float, kSmallSet> set;
    set.fill(std::numeric_limits<float>::quiet_NaN());  // compares false: counts nowhere
    std::copy(v, v + size, set.begin());
    std::array<F32s, vectors> all;
    for (std::size_t g = 0; g < vectors; ++g) all[g] = F32s::load_aligned(set.data() + g * kLanes);
    float value = set[0];
    for (std::size_t j = 0; j < size; ++j) {
        const F32s candidate(set[j]);
        std::size_t greater = 0, equal = 0;
        for (std::size_t g = 0; g < vectors; ++g) {
            greater += static_cast<std::size_t>(std::popcount(lane_bits(all[g] > candidate)));
            equal += static_cast<std::size_t>(std::popcount(lane_bits(all[g] == candidate)));
        }
        value = greater <= rank && rank < greater + equal ? set[j] : value;
    }
    return value;
}

float sample_rank(const float* sample, std::size_t size, std::size_t rank, std::array<float*, 3> scratch);
void sample_bracket(const float* sample, std::size_t size, double lo_rank, double hi_rank, float& lo, float& hi,
                    std::array<float*, 3> scratch);

// Packs the numbers of v[0, n) in [lo, hi] (values only: the boundary is found by value, and
// its index among the candidates afterwards) and counts those above hi. In [lo, hi] is taken as
// >= lo and not > hi (the same for numbers; NaN fails >= lo): two comparisons a vector, not three.
// A vector at a time even where a group compress is cheap: about half the candidates are in
// the middle, and there one vcompressps a vector cost less than a group's byte compress and
// its 2-4 blocks of permutes (AVX512-VBMI2 on Zen 4, k = 5 and 15 %: 0.94-0.96x the time).
std::size_t pack_between(const float* v, std::size_t n, float lo, float hi, float* out, std::size_t& above) {
    const F32s vlo(lo), vhi(hi);
    const F32s one_bit(std::bit_cast<float>(1u));
    U32s above_per_lane(0u);
    std::size_t m = 0, i = 0;
    for (; i + kLanes <= n; i += kLanes) {
        const F32s x = F32s::load_unaligned(v + i);
        const auto above_hi = x > vhi;
        above_per_lane += xsimd::bitwise_cast<U32s>(xsimd::select(above_hi, one_bit, F32s(0.0f)));
        m += compress_store(x, lane_bits((x >= vlo) & ~above_hi), out + m);
    }
    alignas(64) std::array<std::uint32_t, kLanes> lane_counts;
    above_per_lane.store_aligned(lane_counts.data());
    for (const std::uint32_t lane : lane_counts) above += lane;
    for (; i < n; ++i) {
        above += v[i] > hi;
        out[m] = v[i];
        m += v[i] >= lo && v[i] <= hi;
    }
    return m;
}

// The boundary of the selection by value: the `need`-th largest value of a set, and how many
// of the set's values equal to it are selected (the rest of the set's selection is greater).
// Equal values rank by index, so the selected ones among them are the first `ties` in index
// order (index_of_tie).
struct Boundary {
    float value;
    std::size_t ties;
    std::size_t equal;  // how many of the set equal it (ties == equal: every one is taken)
};

// The boundary: the `need`-th best (1-based, 1 <= need <= m) of the m candidates in [lo, hi]
// that the caller packed into c.middle_values[0].
//
// The middle candidates are narrowed like the first bracket (Floyd and Rivest's
// selection): a strided sample of them brackets the boundary again, and one vector pass keeps
// the ones inside; each round cuts a large middle (about 11 % of N at k = 15 %) to about a
// quarter. A round whose bracket misses (the sample misled it) is undone. What is left goes to
// a histogram over about one bucket per 16 of them, which finds the bucket holding the
// boundary; an exact selection among that bucket's handful of scores finds the boundary.
// (A histogram of the whole middle cost a dependent memory increment per candidate: a third
// of the kernel's time at k = 15 %.)
Boundary boundary_of(Candidates& c, std::size_t m, float lo, float hi, std::size_t need, std::size_t sample_size) {
    std::array<float*, 2> set_values{c.middle_values[0].data(), c.middle_values[1].data()};
    int current = 0;
    // Rounds of narrowing while the set is large enough to pay for a sample.
    const std::size_t round_sample = std::min(sample_size, kRoundSample);
    float* sample = c.sample.data();
    const std::size_t sample_room = sample_size + kLanes;
    const std::array<float*, 3> scratch{sample + sample_room, sample + 2 * sample_room, sample + 3 * sample_room};
    while (m > kRoundMinSetPerSample * round_sample) {
        const float* values = set_values[current];
        const std::size_t stride = m / round_sample;
        for (std::size_t j = 0; j < round_sample; ++j) sample[j] = values[j * stride];
        const double expected = static_cast<double>(need) * round_sample / m;
        const double margin = bracket_margin(expected);
        const double lo_rank = expected + margin, hi_rank = expected - margin;
        float new_lo = lo, new_hi = hi;
        sample_bracket(sample, round_sample, lo_rank, hi_rank, new_lo, new_hi, scratch);
        std::size_t new_above = 0;
        const std::size_t new_m = pack_between(values, m, new_lo, new_hi, set_values[1 - current], new_above);
        // Undone when the boundary is not inside (the sample misled us) or the set barely
        // shrank (a run of equal scores): the histogram below takes the set as it is.
        if (new_above >= need || new_above + new_m < need || 2 * new_m > m) break;
        need -= new_above;
        lo = new_lo, hi = new_hi, m = new_m, current = 1 - current;
    }
    float* values = set_values[current];  // a packed copy: reordered below
    if (std::isfinite(lo) && hi == std::numeric_limits<float>::infinity() && m > kHistogramMinSet) {
        // A small k leaves the bracket open above (no sample is safely above the boundary):
        // the largest candidate closes it for the histogram.
        F32s most(lo);
        std::size_t i = 0;
        for (; i + kLanes <= m; i += kLanes) most = xsimd::max(most, F32s::load_unaligned(values + i));
        alignas(64) std::array<float, kLanes> lanes;
        most.store_aligned(lanes.data());
        hi = *std::max_element(lanes.begin(), lanes.end());
        for (; i < m; ++i) hi = std::max(hi, values[i]);
    }
    const float width = hi - lo;
    // A histogram over buckets of [lo, hi] narrows the search to one bucket. Unusable when the
    // bracket is unbounded or too wide or narrow for a finite, nonzero scale.
    const std::size_t bucket_count = std::clamp<std::size_t>(std::bit_ceil(m / kCandidatesPerBucket + 1), kMinBuckets, detail::kTopkMaxBuckets);
    const float scale = static_cast<float>(bucket_count) / width;
    std::size_t kept = 0;
    if (m > kHistogramMinSet && std::isfinite(lo) && std::isfinite(hi) && width > 0.0f && scale > 0.0f && std::isfinite(scale)) {
        const Buckets buckets{lo, scale, static_cast<float>(bucket_count - 1)};
        float* bucket_of = set_values[1 - current];  // the other set's room, free now
        std::size_t i = 0;
        for (; i + kLanes <= m; i += kLanes) buckets.of(F32s::load_unaligned(values + i)).store_unaligned(bucket_of + i);
        for (; i < m; ++i) bucket_of[i] = buckets.of(values[i]);
        // Two counters per bucket, alternating, so that a run of equal scores (a cluster at the
        // boundary) makes two chains of dependent increments instead of one.
        std::vector<std::uint32_t>& histogram = c.histogram;
        histogram.assign(2 * bucket_count, 0);
        std::uint32_t* even = histogram.data();
        std::uint32_t* odd = even + bucket_count;
        for (i = 0; i + 2 <= m; i += 2) {
            ++even[Buckets::number(bucket_of[i])];
            ++odd[Buckets::number(bucket_of[i + 1])];
        }
        if (i < m) ++even[Buckets::number(bucket_of[i])];
        std::size_t b = bucket_count - 1, better = 0;
        while (better + even[b] + odd[b] < need) better += even[b] + odd[b], --b;
        need -= better;
        // The boundary bucket's members, found a vector at a time (few lanes ever match) and
        // moved to the front of the set (never past a value still to be read).
        const float target = static_cast<float>(b) + Buckets::kOffset;
        const F32s vtarget(target);
        for (i = 0; i + kLanes <= m; i += kLanes) {
            for (unsigned hit = lane_bits(F32s::load_unaligned(bucket_of + i) == vtarget); hit != 0; hit &= hit - 1)
                values[kept++] = values[i + static_cast<std::size_t>(std::countr_zero(hit))];
        }
        for (; i < m; ++i)
            if (bucket_of[i] == target) values[kept++] = values[i];
    } else {
        kept = m;
    }
    float value;
    if (kept <= kSmallSet) {
        value = rank_in_small_set(values, kept, need - 1);
    } else {
        float* const nth = values + (need - 1);
        std::nth_element(values, nth, values + kept, std::greater<float>());
        value = *nth;
    }
    // The ones greater are all selected, the ones equal to it taken up to `need`.
    std::size_t greater = 0, equal = 0;
    for (const float* v = values; v != values + kept; ++v) greater += *v > value;
    // Every score equal to the boundary is in its bucket, so among the kept ones.
    for (const float* v = values; v != values + kept; ++v) equal += *v == value;
    return {value, need - greater, equal};
}

// The index of the `tie`-th (1-based) candidate equal to `value`, in index order.
std::uint32_t index_of_tie(const Candidates& c, float value, std::size_t tie) {
    const float* values = c.values.data();
    const F32s vv(value);
    std::size_t i = 0;
    for (; i + kLanes <= c.count; i += kLanes) {
        unsigned equal = lane_bits(F32s::load_unaligned(values + i) == vv);
        const auto here = static_cast<std::size_t>(std::popcount(equal));
        if (here >= tie) {
            for (; tie > 1; --tie) equal &= equal - 1;
            return c.indices[i + static_cast<std::size_t>(std::countr_zero(equal))];
        }
        tie -= here;
    }
    for (;; ++i)
        if (values[i] == value && --tie == 0) return c.indices[i];
}

// Writes, in index order, the candidates ranked at or above the boundary element (value bv,
// index bi): those greater than bv, and (take_equal) those equal to it at a lower or equal
// index; at most `room` of them (exactly that many when the boundary is right). Returns how
// many. Candidates are in index order, so ties need no per-lane test: up to the boundary's
// own position a candidate is kept when >= bv, after it when > bv.
std::size_t take_selected(const Candidates& c, float bv, std::uint32_t bi, bool take_equal, std::int64_t* out,
                          std::size_t room) {
    const float* values = c.values.data();
    const std::uint32_t* indices = c.indices.data();
    const std::size_t ties_end =
        take_equal ? static_cast<std::size_t>(std::upper_bound(indices, indices + c.count, bi) - indices) : 0;
    const F32s vb(bv);
    std::size_t taken = 0, i = 0;
    for (; i + kLanes <= ties_end && taken < room; i += kLanes) {
        __builtin_prefetch(out + taken + kWriteAhead, 1);
        taken += compress_store_widened(U32s::load_unaligned(indices + i), lane_bits(F32s::load_unaligned(values + i) >= vb),
                                     out + taken, room - taken);
    }
    if (i < ties_end && i + kLanes <= c.count && taken < room) {  // the vector holding the boundary
        const F32s v = F32s::load_unaligned(values + i);
        const unsigned up_to_boundary = (1u << (ties_end - i)) - 1u;
        const unsigned keep = (lane_bits(v >= vb) & up_to_boundary) | (lane_bits(v > vb) & ~up_to_boundary);
        taken += compress_store_widened(U32s::load_unaligned(indices + i), keep, out + taken, room - taken);
        i += kLanes;
    }
    for (; i + kLanes <= c.count && taken < room; i += kLanes) {
        __builtin_prefetch(out + taken + kWriteAhead, 1);
        taken += compress_store_widened(U32s::load_unaligned(indices + i), lane_bits(F32s::load_unaligned(values + i) > vb),
                                     out + taken, room - taken);
    }
    for (; i < c.count && taken < room; ++i)
        if (values[i] > bv || (i < ties_end && values[i] == bv)) out[taken++] = indices[i];
    return std::min(taken, room);
}

// The other route: the filter keeps every candidate's value and index, the output pass
// compresses the selected candidates' indices. Returns how many numbers it wrote.
std::size_t select_from_candidates(const float* x, std::size_t n, std::size_t k, float lo, float hi, std::int64_t* out,
                                   Candidates& c, std::size_t sample_size) {
    filter(x, n, lo, c);
    // The middle candidates, in [lo, hi], and the count of those above hi.
    std::size_t above = 0;
    std::size_t m = c.count >= k ? pack_between(c.values.data(), c.count, lo, hi, c.middle_values[0].data(), above) : 0;
    if (c.count < k || above > k) {
        // The sample misled us (rare): take every number as a candidate and select exactly.
        lo = -std::numeric_limits<float>::infinity();
        hi = std::numeric_limits<float>::infinity();
        filter(x, n, lo, c);
        above = 0;
        m = pack_between(c.values.data(), c.count, lo, hi, c.middle_values[0].data(), above);
    }
    c.above_hi = above;
    // Candidates are numbers (the filter drops NaN). Of the middle ones, in [lo, hi], the best
    // `need` complete the scores above hi.
    const std::size_t need = k - std::min(k, c.above_hi);
    const std::size_t middle_count = m;
    std::size_t taken = 0;
    if (need == 0) {
        taken = take_selected(c, hi, 0, false, out, k);  // exactly the scores above hi
    } else if (need <= middle_count) {
        const Boundary boundary = boundary_of(c, m, lo, hi, need, sample_size);
        // When every candidate equal to the boundary is taken (the usual case: one of them),
        // no index bounds them, and the scan for the last one taken is skipped.
        const std::uint32_t last_tie = boundary.ties == boundary.equal ? std::numeric_limits<std::uint32_t>::max()
                                                                       : index_of_tie(c, boundary.value, boundary.ties);
        taken = take_selected(c, boundary.value, last_tie, true, out, k);
    } else {
        // Fewer numbers than k (only after the full-range retry): every number, then NaNs.
        std::copy(c.indices.begin(), c.indices.begin() + static_cast<std::ptrdiff_t>(c.count), out);
        taken = c.count;
    }
    return taken;
}

// The route where a group compress is cheap (kGroupCompressIsCheap: AVX512-VBMI2). The filter
// keeps only the middle scores' values; once the boundary is known, one more pass over the
// scores writes the selected positions straight into the result. That second read of the
// scores (from L2) costs less than compressing every candidate's index in the filter and
// again in the output pass, as the other route does.

// Packs the scores in [lo, hi] (values only) into c.middle_values[0] and counts those above
// hi (c.above_hi) and those >= lo (c.count). NaN is neither. Returns the count in [lo, hi].
std::size_t filter_middle(const float* x, std::size_t n, float lo, float hi, Candidates& c) {
    std::size_t above = 0;
    const std::size_t m = pack_between(x, n, lo, hi, c.middle_values[0].data(), above);
    c.above_hi = above;
    c.count = above + m;
    return m;
}

// The index of the `tie`-th (1-based) score equal to `value`, in index order (there is one).
std::size_t index_of_tie_in_scores(const float* x, std::size_t n, float value, std::size_t tie) {
    const F32s vv(value);
    std::size_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
        unsigned equal = lane_bits(F32s::load_unaligned(x + i) == vv);
        const auto here = static_cast<std::size_t>(std::popcount(equal));
        if (here >= tie) {
            for (; tie > 1; --tie) equal &= equal - 1;
            return i + static_cast<std::size_t>(std::countr_zero(equal));
        }
        tie -= here;
    }
    for (;; ++i)
        if (x[i] == value && --tie == 0) return i;
}

// Writes, in index order, the positions of the scores > bv and of those == bv below ties_end;
// at most `room` of them. Returns how many.
std::size_t take_from_scores(const float* x, std::size_t n, float bv, std::size_t ties_end, std::int64_t* out,
                             std::size_t room) {
    const F32s vb(bv);
    // The group's lanes passing `test`, as bits. One comparison a vector: >= before ties_end,
    // > after it, both only in the group holding it (> and == on every vector: the whole call
    // 1.09x the time at k = 50 %, Zen 4, hot).
    const auto group_bits = [&](std::size_t at, auto test) {
        std::array<xsimd::batch_bool<float, Arch>, kGroupVectors> bits;
        for (std::size_t g = 0; g < kGroupVectors; ++g) bits[g] = test(F32s::load_unaligned(x + at + g * kLanes));
        return group_lane_bits(bits);
    };
    const auto at_least = [&](F32s v) { return v >= vb; };
    const auto greater = [&](F32s v) { return v > vb; };
    std::size_t taken = 0, i = 0;
    if constexpr (kGroupCompressIsCheap<Arch>) {
        for (; i + kGroup <= std::min(n, ties_end) && taken < room; i += kGroup)
            taken += compress_positions_widened<Arch>(group_bits(i, at_least), i, out + taken, room - taken);
        if (i + kGroup <= n && i < ties_end && taken < room) {  // the group holding ties_end
            const std::uint64_t equal_taken = (std::uint64_t{1} << (ties_end - i)) - 1;
            taken += compress_positions_widened<Arch>(group_bits(i, greater) | (group_bits(i, at_least) & equal_taken), i,
                                                      out + taken, room - taken);
            i += kGroup;
        }
        for (; i + kGroup <= n && taken < room; i += kGroup)
            taken += compress_positions_widened<Arch>(group_bits(i, greater), i, out + taken, room - taken);
    }
    for (; i < n && taken < room; ++i)
        if (x[i] > bv || (i < ties_end && x[i] == bv)) out[taken++] = static_cast<std::int64_t>(i);
    return std::min(taken, room);
}

// The selection on that route: filter, boundary, output; returns how many numbers it wrote.
std::size_t select_from_scores(const float* x, std::size_t n, std::size_t k, float lo, float hi, std::int64_t* out,
                               Candidates& c, std::size_t sample_size) {
    std::size_t m = filter_middle(x, n, lo, hi, c);
    if (c.count < k || c.above_hi > k) {  // the sample misled us (rare): every number a candidate
        lo = -std::numeric_limits<float>::infinity();
        hi = std::numeric_limits<float>::infinity();
        m = filter_middle(x, n, lo, hi, c);
    }
    const std::size_t need = k - std::min(k, c.above_hi);
    if (need == 0) return take_from_scores(x, n, hi, 0, out, k);  // exactly the scores above hi
    if (need > m) return take_from_scores(x, n, -std::numeric_limits<float>::infinity(), n, out, k);  // every number
    const Boundary b = boundary_of(c, m, lo, hi, need, sample_size);
    const std::size_t ties_end = b.ties == b.equal ? n : index_of_tie_in_scores(x, n, b.value, b.ties) + 1;
    return take_from_scores(x, n, b.value, ties_end, out, k);
}

// The value at descending rank `rank` (clamped) of sample[0, size): a quickselect whose
// partition is branch-free, compress-storing the scores above and below the pivot into two of
// the three scratch buffers that are not its input. std::nth_element's data-dependent
// branches took 12 us on 1024 samples (2.4 us warm) right after a caller's own large
// selection had retrained the branch predictor, the bracket's biggest cost in a pipeline. The
// last handful (kSmallSet) is ranked by rank_in_small_set, not std::nth_element, for the same
// reason (the bracket's two quickselects: 4.2-4.7 -> 3.0-3.6 k TSC ticks after a std::nth_element
// between calls, unchanged hot).
float sample_rank(const float* sample, std::size_t size, std::size_t rank, std::array<float*, 3> scratch) {
    rank = std::min(rank, size - 1);
    const float* in = sample;
    while (size > kSmallSet) {
        float a = in[0], b = in[size / 2], c = in[size - 1];  // median of three as the pivot
        if (a > b) std::swap(a, b);
        const float pivot = std::max(a, std::min(b, c));
        float* above = scratch[0] == in ? scratch[1] : scratch[0];
        float* below = scratch[2] == in ? scratch[1] : scratch[2];
        const F32s vp(pivot);
        std::size_t greater = 0, less = 0, i = 0;
        for (; i + kLanes <= size; i += kLanes) {
            const F32s v = F32s::load_unaligned(in + i);
            greater += compress_store(v, lane_bits(v > vp), above + greater);
            less += compress_store(v, lane_bits(v < vp), below + less);
        }
        for (; i < size; ++i) {
            above[greater] = below[less] = in[i];
            greater += in[i] > pivot;
            less += in[i] < pivot;
        }
        if (rank < greater) {
            in = above, size = greater;
        } else if (rank >= size - less) {
            in = below, rank -= size - less, size = less;
        } else {
            return pivot;  // among the scores equal to the pivot
        }
    }
    return rank_in_small_set(in, size, rank);
}

// The bracket's ends in a sample: lo = the value at descending rank lo_rank when that is below
// `size` (else lo is left), hi = the value at rank hi_rank when that is >= 0 (else hi is left);
// hi_rank < lo_rank. One quickselect over the whole sample: hi is selected among the values
// above lo only (those are the ranks below lo's; a rank past them is lo itself).
void sample_bracket(const float* sample, std::size_t size, double lo_rank, double hi_rank, float& lo, float& hi,
                    std::array<float*, 3> scratch) {
    if (lo_rank >= static_cast<double>(size)) {
        if (hi_rank >= 0.0) hi = sample_rank(sample, size, static_cast<std::size_t>(hi_rank), scratch);
        return;
    }
    lo = sample_rank(sample, size, static_cast<std::size_t>(lo_rank), scratch);
    if (hi_rank < 0.0) return;
    // The values above lo, into a scratch buffer (sample_rank leaves the other two to itself).
    float* above = scratch[0];
    const F32s vlo(lo);
    std::size_t greater = 0, i = 0;
    for (; i + kLanes <= size; i += kLanes) {
        const F32s v = F32s::load_unaligned(sample + i);
        greater += compress_store(v, lane_bits(v > vlo), above + greater);
    }
    for (; i < size; ++i) {
        above[greater] = sample[i];
        greater += sample[i] > lo;
    }
    const auto rank = static_cast<std::size_t>(hi_rank);
    hi = rank < greater ? sample_rank(above, greater, rank, scratch) : lo;
}

// `c` was reserved for (n, k, sample_size) before the call (TopkScratch::reserve): no
// resize below allocates, so the kernel may run inside a worker.
void topk(const float* x, std::size_t n, std::size_t k, kvfuse_topk_order order, std::int64_t* out,
          detail::TopkScratch& c, std::size_t sample_size) {
    if (c.values.size() < n + kLanes) {
        c.values.resize(n + kLanes);
        c.indices.resize(n + kLanes);
        for (int set = 0; set < 2; ++set) {
            c.middle_values[set].resize(n + kLanes);
        }
    }
    // The bracket [lo, hi] around the k-th largest value, from a strided sample of the numbers.
    const std::size_t sample_room = sample_size + kLanes;  // the sample, then three selection buffers
    if (c.sample.size() < 4 * sample_room) c.sample.resize(4 * sample_room);
    float* sample = c.sample.data();
    const std::size_t stride = std::max<std::size_t>(1, n / sample_size);
    // Every sampled score stored at its own slot, NaNs dropped afterwards: a store slot that
    // counted the numbers before it made each store's address wait for the previous load, and
    // the CPU held the next loads behind those stores (a chain of cache latencies, ~4 us of
    // a 30 us call at N = 131072).
    std::size_t slots = 0;
    const std::size_t ahead = kSamplePrefetchAhead * stride;
    for (std::size_t i = 0; i < n && slots < sample_size; i += stride) {
        if (i + ahead < n) __builtin_prefetch(x + i + ahead);
        sample[slots++] = x[i];
    }
    const auto sampled =
        static_cast<std::size_t>(std::remove_if(sample, sample + slots, [](float v) { return v != v; }) - sample);
    float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
    double candidate_share = 1.0;  // of the scores expected >= lo
    if (sampled >= kMinBracketSample && n >= kMinBracketedScores) {
        const double expected = static_cast<double>(k) * sampled / n;
        const double margin = bracket_margin(expected);
        const double lo_rank = expected + margin, hi_rank = expected - margin;
        const std::array<float*, 3> scratch{sample + sample_room, sample + 2 * sample_room, sample + 3 * sample_room};
        if (lo_rank < static_cast<double>(sampled)) candidate_share = lo_rank / static_cast<double>(sampled);
        sample_bracket(sample, sampled, lo_rank, hi_rank, lo, hi, scratch);
    }
    std::size_t taken = 0;
    if (kGroupCompressIsCheap<Arch> && candidate_share > kFromScoresMinShare) {
        taken = select_from_scores(x, n, k, lo, hi, out, c, sample_size);
    } else {
        taken = select_from_candidates(x, n, k, lo, hi, out, c, sample_size);
    }
    // NaNs rank last, among themselves by index: the lowest-index ones fill what is left.
    std::vector<std::int64_t>& nans = c.nans;
    nans.clear();
    for (std::size_t i = 0; i < n && taken + nans.size() < k; ++i)
        if (x[i] != x[i]) nans.push_back(static_cast<std::int64_t>(i));
    if (order == KVFUSE_TOPK_BY_SCORE) {
        // The numbers by rank key (one integer comparison each), then the NaNs.
        std::vector<std::uint64_t>& keys = c.keys;
        keys.resize(taken);
        for (std::size_t i = 0; i < taken; ++i)
            keys[i] = rank_key(x[out[i]], static_cast<std::uint32_t>(out[i]));
        std::sort(keys.begin(), keys.end(), std::greater<>());
        for (std::size_t i = 0; i < taken; ++i) out[i] = static_cast<std::uint32_t>(~keys[i]);
        std::copy(nans.begin(), nans.end(), out + taken);
    } else if (!nans.empty()) {
        std::vector<std::int64_t>& merged = c.merged;
        merged.resize(taken + nans.size());
        std::merge(out, out + taken, nans.begin(), nans.end(), merged.begin());
        std::copy(merged.begin(), merged.end(), out);
    }
}

}  // namespace

void register_topk(detail::KernelTable& table) { table.topk = &topk; }

}  // namespace kvfuse::KVFUSE_ISA_NAMESPACE
