// The top-k kernel's working buffers, one per worker of a call, owned by the execution context
// (kvfuse_context) and kept across calls: a fresh 200 KiB allocation cost more in page faults
// than the whole selection. ISA-neutral (every ISA's kernel reads the same members); its special
// members and reserve() are out of line in topk_scratch.cpp so that no ISA's object carries an
// inline copy of them (kernels/README.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvfuse::detail {

// The most buckets of the kernel's histogram (topk-inl.h's boundary_key), which reserve() gives
// room for: 16384 buckets, two 4-byte counters each, are 128 KiB, about what stays in L2 beside
// the candidates; a larger set is narrowed by a sampled round first. Internal linkage, not
// `inline`: every ISA's object ODR-uses it (std::clamp binds a reference), and GCC's AddressSanitizer
// emits an instrumented inline variable outside its COMDAT group, so two ISA objects then
// define the same symbol and the link fails.
constexpr std::size_t kTopkMaxBuckets = 16384;

struct TopkScratch {
    TopkScratch();
    ~TopkScratch();
    TopkScratch(const TopkScratch&) = delete;
    TopkScratch& operator=(const TopkScratch&) = delete;

    // Gives every buffer the capacity a selection of k of n scores with a `sample`-score bracket
    // sample needs on any ISA, so that the kernel's resizes never allocate. May throw
    // std::bad_alloc; call before the workers start.
    void reserve(std::size_t n, std::size_t k, std::size_t sample);

    std::vector<float> values;           // scores >= lo, in index order
    std::vector<std::uint32_t> indices;  // their indices
    // The values of the candidates in [lo, hi] as the bracket narrows: two sets, one narrowed
    // into the other.
    std::vector<float> middle_values[2];
    std::vector<std::uint32_t> histogram;
    std::vector<std::uint64_t> keys;     // rank keys of the result, sorted by score
    std::vector<float> sample;
    std::vector<std::int64_t> nans;      // indices of NaN scores that are selected
    std::vector<std::int64_t> merged;    // by-position result with NaNs merged in
    std::size_t count = 0;
    std::size_t above_hi = 0;  // scores > hi
};

}  // namespace kvfuse::detail
