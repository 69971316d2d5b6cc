// A3: at the check layer, the `budget` document rows the question attends to most (heads
// merged, softmax per question row, summed over the question, optionally smoothed), as
// docs/ALGORITHMS.md defines it; one set for every later layer.
#include "fusion/selectors/a3_relevance.h"

namespace kvfuse::fusion::selectors {

std::vector<float> a3_check_layer_relevance(const SelectionContext& c) {
    const ModelShape& s = c.model.shape();
    const std::size_t M = c.question_rows, T = c.total_rows;
    return a3_relevance(c.kernels, s, c.q + (T - M) * s.q_row(), M, c.k, c.prefix_rows, T, c.options.a3_smoothing,
                        c.options.a3_scoring);
}

std::vector<float> a3_later_layer_relevance(const SelectionContext& c, int layer, const float* q, const float* k,
                                            std::size_t n) {
    const ModelShape& s = c.model.shape();
    const std::size_t M = c.question_rows;
    const float* q_question = q + (n - M) * s.q_row();
    return c.options.a3_stored_keys
               ? a3_relevance_stored(c.kernels, s, q_question, M, k + (n - M) * s.kv_row(), c.chunks, c.chunk_offsets, layer,
                                     c.options.a3_smoothing, c.options.a3_scoring)
               : a3_relevance(c.kernels, s, q_question, M, c.cache.k[static_cast<std::size_t>(layer)].data(), c.prefix_rows,
                              c.total_rows, c.options.a3_smoothing, c.options.a3_scoring);
}

Selection a3(const SelectionContext& context) {
    return {top_rows(context.kernels, a3_check_layer_relevance(context), context.budget, context.prefix_rows)};
}

}  // namespace kvfuse::fusion::selectors
