// CacheBlend: at the check layer, the `budget` document rows whose fresh V deviates most from
// the stored one (Σ over heads and dims of the squared difference), through kvfuse_select_rows.
#include "fusion/selector.h"

namespace kvfuse::fusion::selectors {

Selection cacheblend(const SelectionContext& context) {
    const ModelShape& s = context.model.shape();
    const std::size_t P = context.prefix_rows;
    std::vector<float> deviation(context.documents());
    kvfuse::SelectArgs args{};
    args.method = KVFUSE_SELECT_CACHEBLEND;
    args.prefix_rows = P;
    args.documents = deviation.size();
    args.kv_heads = static_cast<std::size_t>(s.kv_heads);
    args.head_dim = static_cast<std::size_t>(s.head_dim);
    args.fresh = context.v + P * s.kv_row();
    args.reused = context.cache.v_row(context.layer, P);
    args.scores = deviation.data();
    std::size_t no_rows = 0;  // k = 0 at ratio 0: the scores only
    args.row_count = &no_rows;
    throw_if_failed(kvfuse::select_rows(context.kernels, args), "CacheBlend deviation");
    return {top_rows(context.kernels, deviation, context.budget, P)};
}

}  // namespace kvfuse::fusion::selectors
