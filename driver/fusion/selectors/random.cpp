// Random rows, the control every method must beat: `budget` document rows drawn uniformly
// (std::mt19937 seeded with --seed, so a run is repeatable).
#include <algorithm>
#include <random>

#include "fusion/selector.h"

namespace kvfuse::fusion::selectors {

Selection random(const SelectionContext& context) {
    std::vector<std::int64_t> documents;
    for (std::size_t j = context.prefix_rows; j < context.total_rows - context.question_rows; ++j)
        documents.push_back(static_cast<std::int64_t>(j));
    std::mt19937 rng(context.options.seed);
    std::shuffle(documents.begin(), documents.end(), rng);
    Selection out;
    out.rows.assign(documents.begin(),
                    documents.begin() + static_cast<std::ptrdiff_t>(std::min(context.budget, documents.size())));
    return out;
}

}  // namespace kvfuse::fusion::selectors
