// `kvfuse score-accuracy`: how far A3 relevance from int8 and int4 keys is from the f32
// relevance, on the model's own keys (a full prefill of story requests, every layer) and on
// synthetic keys with outlier channels; top-set overlap and Spearman rank correlation.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "cli/commands.h"
#include "cli/fusion_common.h"
#include "fusion/evaluation.h"
#include "fusion/loaded_model.h"
#include "fusion/requests.h"
#include "fusion/score_accuracy.h"

namespace kvfuse::cli {

namespace {

using namespace kvfuse::fusion;

struct ScoreAccuracyCliOptions {
    std::string model, data, json;
    std::size_t count = 50, chunk_tokens = 64, question_tokens = 32;
    double fraction = 0.15;
    bool no_smoothing = false;
    SyntheticShape synthetic;
    bool no_synthetic = false;
    std::uint32_t seed = 1;
    std::string command_line;
};

std::string table(const std::vector<ScoreAgreement>& rows, double fraction) {
    std::ostringstream out;
    char line[256];
    std::snprintf(line, sizeof line, "| inputs | keys | samples | top-%g %% overlap, mean | min | Spearman, mean | min |\n",
                  fraction * 100.0);
    out << line << "|---|---|---|---|---|---|---|\n";
    for (const ScoreAgreement& a : rows) {
        std::snprintf(line, sizeof line, "| %s | %s | %zu | %.3f | %.3f | %.4f | %.4f |\n", a.inputs.c_str(), score_keys_name(a.keys),
                      a.samples, a.overlap_mean, a.overlap_min, a.spearman_mean, a.spearman_min);
        out << line;
    }
    return out.str();
}

nlohmann::json to_json(const std::vector<ScoreAgreement>& rows) {
    nlohmann::json out = nlohmann::json::array();
    for (const ScoreAgreement& a : rows)
        out.push_back({{"inputs", a.inputs},
                       {"keys", score_keys_name(a.keys)},
                       {"samples", a.samples},
                       {"overlap_mean", a.overlap_mean},
                       {"overlap_min", a.overlap_min},
                       {"spearman_mean", a.spearman_mean},
                       {"spearman_min", a.spearman_min}});
    return out;
}

int run(const ScoreAccuracyCliOptions& o) {
    if (!(o.fraction > 0.0 && o.fraction <= 1.0)) throw std::invalid_argument("--fraction must be in (0, 1]");
    ScoreAccuracyOptions options;
    options.fraction = o.fraction;
    options.smoothing = !o.no_smoothing;
    const std::string model_path = o.model.empty() ? bundled_model_path() : o.model;
    if (model_path.empty()) throw std::runtime_error("no --model given and the bundled model is missing");
    const std::string data_path = o.data.empty() ? bundled_text_path() : o.data;
    if (data_path.empty()) throw std::runtime_error("no --data given and the bundled text is missing");
    const LoadedModel loaded = load_model(model_path);
    StoryRequestOptions s;
    s.count = o.count;
    s.chunk_tokens = o.chunk_tokens;
    s.question_tokens = o.question_tokens;
    s.seed = o.seed;
    const std::vector<Request> requests = story_requests(data_path, "continuous", loaded, s);
    std::fprintf(stderr, "kvfuse score-accuracy: %zu requests on %s, every layer...\n", requests.size(), loaded.description.c_str());
    const std::vector<ScoreAgreement> model_rows = model_score_accuracy(*loaded.model, requests, options);
    std::printf("A3 relevance from quantized keys against f32 keys, %s, %zu requests (%zu x %zu-token chunks at most, %zu-token "
                "question), %s smoothing:\n\n%s",
                loaded.description.c_str(), requests.size(), s.max_chunks, s.chunk_tokens, s.question_tokens,
                options.smoothing ? "with" : "without", table(model_rows, o.fraction).c_str());
    std::vector<ScoreAgreement> synthetic_rows;
    if (!o.no_synthetic) {
        std::fprintf(stderr, "kvfuse score-accuracy: synthetic keys, %zu draws of %zu tokens...\n", o.synthetic.draws,
                     o.synthetic.tokens);
        SyntheticShape plain = o.synthetic;
        plain.outlier = 1.0f;
        synthetic_rows = synthetic_score_accuracy(plain, options);
        const auto with_outliers = synthetic_score_accuracy(o.synthetic, options);
        synthetic_rows.insert(synthetic_rows.end(), with_outliers.begin(), with_outliers.end());
        std::printf("\nSynthetic normal keys and queries, T = %zu, M = %zu, H = %zu, Hkv = %zu, D = %zu (every 17th key channel "
                    "scaled in the outlier rows):\n\n%s",
                    o.synthetic.tokens, o.synthetic.question_rows, o.synthetic.heads, o.synthetic.kv_heads, o.synthetic.head_dim,
                    table(synthetic_rows, o.fraction).c_str());
    }
    if (!o.json.empty()) {
        nlohmann::json out = {{"command", o.command_line},
                              {"model", loaded.description},
                              {"requests", requests.size()},
                              {"fraction", o.fraction},
                              {"smoothing", options.smoothing},
                              {"model_keys", to_json(model_rows)},
                              {"synthetic", to_json(synthetic_rows)}};
        write_text_atomically(o.json, out.dump(2) + "\n");
        std::fprintf(stderr, "kvfuse score-accuracy: wrote %s\n", o.json.c_str());
    }
    return 0;
}

}  // namespace

void add_score_accuracy_command(CLI::App& app) {
    auto o = std::make_shared<ScoreAccuracyCliOptions>();
    CLI::App* cmd = app.add_subcommand(
        "score-accuracy", "How far A3 relevance from int8 / int4 keys is from f32 (model keys and synthetic outlier keys)");
    cmd->add_option("--model", o->model, "GGUF model (default: the bundled stories260K)");
    cmd->add_option("--data", o->data, "TinyStories-style text the requests are built from (default: the bundled text)");
    cmd->add_option("--count", o->count, "requests")->check(CLI::Range(1, 100000));
    cmd->add_option("--chunk-tokens", o->chunk_tokens, "tokens per chunk")->check(CLI::Range(1, 100000));
    cmd->add_option("--question-tokens", o->question_tokens, "tokens of the question")->check(CLI::Range(1, 100000));
    cmd->add_option("--fraction", o->fraction, "share of the document rows in the compared top set (default 0.15)");
    cmd->add_flag("--no-smoothing", o->no_smoothing, "relevance without the width-5 moving average");
    cmd->add_option("--seed", o->seed, "request sampling seed")->check(CLI::NonNegativeNumber);
    cmd->add_flag("--no-synthetic", o->no_synthetic, "skip the synthetic keys");
    cmd->add_option("--synthetic-tokens", o->synthetic.tokens, "keys per synthetic draw")->check(CLI::Range(33, 1 << 20));
    cmd->add_option("--synthetic-draws", o->synthetic.draws, "synthetic draws")->check(CLI::Range(1, 1000));
    cmd->add_option("--outlier", o->synthetic.outlier, "scale of the synthetic outlier channels (default 20)")
        ->check(CLI::Range(1e-3, 1e6));
    cmd->add_option("--json", o->json, "write every row here");
    cmd->callback([o, cmd] {
        o->command_line = "kvfuse score-accuracy";
        for (const auto& opt : cmd->get_options())
            if (opt->count() > 0 && !opt->get_lnames().empty())
                o->command_line += " --" + opt->get_lnames().front() + (opt->get_expected_min() > 0 ? " " + opt->as<std::string>() : "");
        g_exit_status = run(*o);
    });
}

}  // namespace kvfuse::cli
