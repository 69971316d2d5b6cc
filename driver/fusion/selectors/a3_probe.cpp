// a3-probe (kvfuse's own): per-layer A3 decided once, at the check layer. The prefix and
// question rows first run on through the later layers over the stored cache (as full reuse
// would), which gives the question's queries at every layer; every layer's relevance, one
// batched top-k, and the union of the per-layer sets is recomputed from the check layer on.
// The probe's rows are counted in the recompute fraction.
#include <algorithm>

#include "fusion/selectors/a3_relevance.h"

namespace kvfuse::fusion::selectors {

Selection a3_probe(const SelectionContext& c) {
    const ModelShape& s = c.model.shape();
    const int l = c.layer, L = s.layers;
    const std::vector<float> score = a3_check_layer_relevance(c);
    const std::span<const std::int64_t> always = c.always;
    const std::size_t n_p = always.size(), docs = score.size();
    std::vector<float> scores(static_cast<std::size_t>(L - l) * docs), hp(n_p * static_cast<std::size_t>(s.dim)),
        qp(n_p * s.q_row()), kp(n_p * s.kv_row()), vp(n_p * s.kv_row()), ap(n_p * s.q_row());
    std::copy(score.begin(), score.end(), scores.begin());
    gather_rows(c.hidden, static_cast<std::size_t>(s.dim), always, hp.data());
    gather_rows(c.q, s.q_row(), always, qp.data());
    gather_rows(c.k, s.kv_row(), always, kp.data());
    gather_rows(c.v, s.kv_row(), always, vp.data());
    Selection out;
    for (int m = l; m < L; ++m) {
        c.wait_for_layer(m);
        // Written over by the main pass's fresh rows before it reads them; first, so that
        // scoring the fused cache reads the question's fresh keys.
        if (m > l) c.model.project_qkv(c.kernels, m, hp.data(), n_p, always.data(), qp.data(), kp.data(), vp.data());
        scatter_fresh_rows(c.cache, m, always, kp.data(), vp.data());
        if (m > l) {
            const std::vector<float> layer_score = a3_later_layer_relevance(c, m, qp.data(), kp.data(), n_p);
            std::copy(layer_score.begin(), layer_score.end(), scores.begin() + static_cast<std::ptrdiff_t>((m - l) * docs));
        }
        if (m + 1 == L) break;  // the last layer's output is not needed
        attend_cache(c.kernels, s, qp.data(), always, c.cache, m, ap.data());
        c.model.finish_layer(c.kernels, m, ap.data(), n_p, hp.data());
        out.extra_rows += n_p;
    }
    // One top-k per layer, one call; the union is recomputed.
    const std::size_t layers = static_cast<std::size_t>(L - l), per_row = std::min(c.budget, docs);
    std::vector<std::int64_t> picked(layers * per_row);
    throw_if_failed(kvfuse::topk_batched(c.kernels, scores.data(), layers, docs, docs, per_row, kvfuse::TopkOrder::by_position,
                                         picked.data(), per_row),
                    "batched top-k");
    std::sort(picked.begin(), picked.end());
    picked.erase(std::unique(picked.begin(), picked.end()), picked.end());
    for (std::int64_t idx : picked) out.rows.push_back(idx + static_cast<std::int64_t>(c.prefix_rows));
    return out;
}

}  // namespace kvfuse::fusion::selectors
