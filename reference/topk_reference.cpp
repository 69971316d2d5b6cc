#include "reference/topk_reference.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace kvfuse::reference {

bool topk_ranks_before(float a, std::size_t ia, float b, std::size_t ib) {
    const bool a_nan = std::isnan(a), b_nan = std::isnan(b);
    if (a_nan != b_nan) return b_nan;
    if (!a_nan && a != b) return a > b;
    return ia < ib;
}

void topk(const float* scores, std::size_t n, std::size_t k, kvfuse_topk_order order, std::int64_t* indices) {
    std::vector<std::size_t> all(n);
    std::iota(all.begin(), all.end(), 0);
    std::sort(all.begin(), all.end(),
              [&](std::size_t x, std::size_t y) { return topk_ranks_before(scores[x], x, scores[y], y); });
    all.resize(k);
    if (order == KVFUSE_TOPK_BY_POSITION) std::sort(all.begin(), all.end());
    for (std::size_t i = 0; i < k; ++i) indices[i] = static_cast<std::int64_t>(all[i]);
}

}  // namespace kvfuse::reference
