// What the fusion tests share: a random request over the tiny model's vocabulary and its chunks'
// stored caches (computed once, as the chunk store would hold them).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "fusion/pipeline.h"

namespace kvfuse::testing {

// BOS, chunks of the given sizes, and a question, with token ids drawn from [3, 39].
inline kvfuse::fusion::Request make_request(std::vector<std::size_t> chunk_sizes, std::size_t question,
                                            std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> token(3, 39);
    kvfuse::fusion::Request r;
    r.prefix = {1};
    for (std::size_t n : chunk_sizes) {
        kvfuse::fusion::TokenIds c(n);
        for (auto& t : c) t = token(rng);
        r.chunks.push_back(c);
    }
    r.question.resize(question);
    for (auto& t : r.question) t = token(rng);
    return r;
}

inline std::vector<kvfuse::fusion::ChunkKv> stored_chunks(const kvfuse::fusion::FusionModel& model,
                                                          const kvfuse::fusion::Request& r) {
    std::vector<kvfuse::fusion::ChunkKv> out;
    for (const auto& c : r.chunks) out.push_back(kvfuse::fusion::compute_chunk_kv(model, c));
    return out;
}

inline std::vector<kvfuse::fusion::ChunkKvView> views(const std::vector<kvfuse::fusion::ChunkKv>& chunks) {
    std::vector<kvfuse::fusion::ChunkKvView> out;
    for (const auto& c : chunks) out.push_back(c.view());
    return out;
}

// The full prefill's own K/V cut at the chunks of `r`, as if they were the stored caches: fused
// with them, any row set gives the full prefill's output (identity 2 of ALGORITHMS.md).
inline std::vector<kvfuse::fusion::ChunkKvView> full_prefill_views(const kvfuse::fusion::FusionModel& model,
                                                                   const kvfuse::fusion::Request& r,
                                                                   const kvfuse::fusion::FusionRun& full) {
    std::vector<kvfuse::fusion::ChunkKvView> out;
    std::size_t offset = r.prefix.size();
    for (const auto& c : r.chunks) {
        kvfuse::fusion::ChunkKvView view;
        view.start_position = static_cast<std::int64_t>(offset);
        view.tokens = c.size();
        for (int l = 0; l < model.shape().layers; ++l) {
            view.k.push_back(full.cache.k[static_cast<std::size_t>(l)].data() + offset * full.cache.row);
            view.v.push_back(full.cache.v[static_cast<std::size_t>(l)].data() + offset * full.cache.row);
        }
        out.push_back(view);
        offset += c.size();
    }
    return out;
}

}  // namespace kvfuse::testing
