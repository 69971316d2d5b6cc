// a3-layers (kvfuse's own): A3 at the check layer, then at every later layer the question's
// fresh queries score that layer's keys and the top `budget` rows join the recomputed set. A
// joining row is first run through the layers it missed, from the check layer on, by the
// pipeline, which counts that cost (docs/FUSION.md).
#include "fusion/selectors/a3_relevance.h"

namespace kvfuse::fusion::selectors {

Selection a3_layers(const SelectionContext& context) {
    return {top_rows(context.kernels, a3_check_layer_relevance(context), context.budget, context.prefix_rows)};
}

std::vector<std::int64_t> a3_layers_join(const SelectionContext& context, int layer, const float* q, const float* k,
                                         std::size_t n) {
    return top_rows(context.kernels, a3_later_layer_relevance(context, layer, q, k, n), context.budget, context.prefix_rows);
}

}  // namespace kvfuse::fusion::selectors
