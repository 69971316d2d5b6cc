// Top-k by a full stable sort: obviously right, the ground truth of the top-k tests and the
// `scalar` ISA.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvfuse/kvfuse.h"

namespace kvfuse::reference {

// True when score a at index ia ranks before score b at index ib: larger first, NaN last,
// ties (and NaNs among themselves) by lower index.
bool topk_ranks_before(float a, std::size_t ia, float b, std::size_t ib);

// Same contract as the kernel: 0 < k < n, k indices in the requested order.
void topk(const float* scores, std::size_t n, std::size_t k, kvfuse_topk_order order, std::int64_t* indices);

}  // namespace kvfuse::reference
