#include "kernels/topk/topk_scratch.h"

namespace kvfuse::detail {

namespace {
// The widest vector of any ISA (AVX-512: 16 floats): the kernel keeps one vector of room past
// its candidates, and a sample's three selection buffers each one vector past the sample.
constexpr std::size_t kMaxLanes = 16;
}  // namespace

TopkScratch::TopkScratch() = default;
TopkScratch::~TopkScratch() = default;

void TopkScratch::reserve(std::size_t n, std::size_t k, std::size_t sample_size) {
    values.reserve(n + kMaxLanes);
    indices.reserve(n + kMaxLanes);
    for (int set = 0; set < 2; ++set) {
        middle_values[set].reserve(n + kMaxLanes);
    }
    histogram.reserve(2 * kTopkMaxBuckets);
    keys.reserve(k);
    sample.reserve(4 * (sample_size + kMaxLanes));
    nans.reserve(k);
    merged.reserve(k);
}

}  // namespace kvfuse::detail
