// How much quantizing the keys (int8, int4; queries int8) changes what A3 selects: relevance
// from quantized keys against relevance from f32 keys, on keys from a real model's prefill and
// on synthetic keys with outlier channels. `kvfuse score-accuracy` prints and writes these.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "fusion/fusion_model.h"
#include "fusion/pipeline.h"
#include "fusion/requests.h"

namespace kvfuse::fusion {

// One set of inputs (a layer of the model, or a synthetic shape), one key precision: the
// agreement of its relevance with the f32 relevance of the same inputs, over the samples
// (requests, or synthetic draws).
struct ScoreAgreement {
    std::string inputs;  // "layer 2", "synthetic, outlier channels x20"
    ScoreKeys keys = ScoreKeys::int8;
    std::size_t samples = 0;
    double overlap_mean = 0.0, overlap_min = 0.0;    // top_set_overlap at `fraction`
    double spearman_mean = 0.0, spearman_min = 0.0;  // spearman_correlation
};

struct ScoreAccuracyOptions {
    double fraction = 0.15;  // the share of document rows selected
    bool smoothing = true;   // the width-5 moving average, as A3 runs by default
};

// For each request, a full prefill; at every layer the A3 relevance of the document rows (the
// chunks) from the question rows' queries, with f32, int8 and int4 keys through the scoring
// kernel. Rows: every layer x {int8, int4}, then all layers together.
std::vector<ScoreAgreement> model_score_accuracy(const FusionModel& model, std::span<const Request> requests,
                                                 const ScoreAccuracyOptions& options);

// Synthetic keys and queries: normal values, every 17th channel of the keys scaled by
// `outlier` (1: none), `draws` independent draws of `tokens` keys (the last `question_rows` the
// question's), H query and Hkv KV heads of head_dim. Rows: {int8, int4}.
struct SyntheticShape {
    std::size_t tokens = 4096, question_rows = 32, heads = 32, kv_heads = 8, head_dim = 128, draws = 3;
    float outlier = 20.0f;
    std::uint32_t seed = 1;
};
std::vector<ScoreAgreement> synthetic_score_accuracy(const SyntheticShape& shape, const ScoreAccuracyOptions& options);

const char* score_keys_name(ScoreKeys keys);

}  // namespace kvfuse::fusion
