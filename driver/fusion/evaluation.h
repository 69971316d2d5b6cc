// `kvfuse eval`: many requests, every method against full prefill on the same requests, with
// means, standard errors and paired differences.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "fusion/chunk_source.h"
#include "fusion/loaded_model.h"
#include "fusion/metrics.h"
#include "fusion/pipeline.h"

namespace kvfuse::fusion {

struct EvalOptions {
    std::vector<Method> methods = fused_methods();
    std::vector<double> ratios = {0.05, 0.15, 0.30};
    FusionOptions base;              // check layer, EPIC tokens, smoothing, seed
    std::size_t decode_tokens = 16;  // greedy continuation compared with full prefill's
};

// One method at one ratio on one request.
struct Measurement {
    std::string request_id;
    std::string method;
    double ratio = 0;        // 0 for methods that ignore it (MethodInfo::takes_ratio false)
    double kl = 0;           // mean KL(full || fused) over the question rows
    double top1 = 0;         // fraction of question rows whose argmax agrees
    double greedy = 0;       // tokens equal to full prefill's continuation before the first mismatch
    double kv_deviation = 0; // mean over layers of ||KV_fused - KV_full|| / ||KV_full||
    std::vector<double> kv_deviation_layers;  // the same per layer
    double ttft_ms = 0;      // chunk caches already stored: load + fuse + logits
    double recompute = 0;    // recompute fraction
    double f1 = -1;          // QA only: token F1 of the decoded answer (-1 when no answers)
    double first_token_match = -1;  // QA only: first generated token == first token of an answer
    StageTimes times;
};

// A (method, ratio) group's aggregate.
struct Summary {
    std::string method;
    double ratio = 0;
    std::map<std::string, MeanWithError> metrics;  // "kl", "top1", "greedy", "kv_dev", "ttft_ms", ...
    std::vector<MeanWithError> kv_deviation_layers;  // per layer, over the requests
};

struct EvalResult {
    std::vector<Measurement> measurements;
    std::vector<Summary> summaries;
    // "a3 - cacheblend @0.15 top1" -> paired difference on the same requests
    std::map<std::string, MeanWithError> paired;
    MeanWithError full_ttft_ms;
};

// Runs the evaluation. `progress(done, total)` is called after each request.
EvalResult evaluate(const LoadedModel& loaded, const std::vector<Request>& requests, ChunkSource& chunks,
                    const EvalOptions& options, const std::function<void(std::size_t, std::size_t)>& progress);

// The table printed on stdout, one row per (method, ratio).
std::string format_table(const EvalResult& result, bool qa);

// Everything as JSON (per-request measurements and summaries), written atomically.
void write_json(const EvalResult& result, const std::string& path, const std::string& command_line);

// Writes `text` to a file beside `path` and renames it over `path`: a reader sees the old file or
// the whole new one. Throws std::runtime_error naming the path.
void write_text_atomically(const std::string& path, const std::string& text);

}  // namespace kvfuse::fusion
