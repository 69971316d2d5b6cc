// `kvfuse perplexity`: exp(mean negative log-likelihood) of a text, in windows of --ctx tokens.
// Two protocols:
// * kvfuse (default): each window is BOS then --ctx tokens of the text; every token but the
//   window's first is predicted.
// * llama.cpp: as `llama-perplexity` scores, so a user can compare with the figures they know:
//   the text is tokenized with BOS in front, cut into windows of --ctx tokens whose first token
//   is replaced by BOS, and only the second half of each window is scored (the predictions from
//   position ctx/2 onwards, ctx - 1 - ctx/2 tokens a window).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "cli/commands.h"
#include "model/regular_file.h"
#include "cli/fusion_common.h"
#include "fusion/loaded_model.h"
#include "fusion/pipeline.h"

namespace kvfuse::cli {

namespace {

using namespace kvfuse::fusion;

struct PerplexityOptions {
    std::string model, file;
    std::size_t ctx = 256;
    std::size_t max_windows = 0;  // 0 = all
    bool pretokenized = false;
    std::string protocol = "kvfuse";
};

// -log p(target) from a row of logits, in double.
double negative_log_likelihood(const float* logits, std::size_t vocab, std::int32_t target) {
    double max = logits[0];
    for (std::size_t v = 1; v < vocab; ++v) max = std::max(max, static_cast<double>(logits[v]));
    double sum = 0.0;
    for (std::size_t v = 0; v < vocab; ++v) sum += std::exp(logits[v] - max);
    return -(logits[static_cast<std::size_t>(target)] - max - std::log(sum));
}

int run(const PerplexityOptions& o) {
    const std::string path = o.model.empty() ? bundled_model_path() : o.model;
    if (path.empty()) throw std::runtime_error("no --model given and the bundled model is missing");
    const std::string text = kvfuse::model::read_regular_file(o.file);
    const LoadedModel loaded = load_model(path);
    const FusionModel& model = *loaded.model;
    if (model.shape().context > 0 && o.ctx + 1 > static_cast<std::size_t>(model.shape().context))
        throw std::invalid_argument("--ctx must leave room for BOS within the context of " + std::to_string(model.shape().context));
    TokenIds ids = o.pretokenized ? parse_token_ids(text, model.shape().vocab, o.file) : loaded.tokenize(text);
    const bool llama_cpp = o.protocol == "llama.cpp";
    if (llama_cpp) ids.insert(ids.begin(), model.bos());
    if (ids.size() < o.ctx) throw std::invalid_argument(o.file + ": fewer tokens (" + std::to_string(ids.size()) + ") than --ctx");
    const std::size_t vocab = static_cast<std::size_t>(model.shape().vocab);
    double nll = 0.0;
    std::size_t predicted = 0, windows = 0;
    FusionOptions full;
    full.method = Method::full;
    for (std::size_t start = 0; start + o.ctx <= ids.size(); start += o.ctx) {
        if (o.max_windows && windows == o.max_windows) break;
        Request r;
        r.prefix = {model.bos()};
        // Question row i holds the logits after window token i + (llama.cpp ? 1 : 0), predicting
        // the token after it.
        const auto first = ids.begin() + static_cast<std::ptrdiff_t>(start + (llama_cpp ? 1 : 0));
        r.question.assign(first, ids.begin() + static_cast<std::ptrdiff_t>(start + o.ctx));
        const FusionRun run = run_request(model, r, {}, full);
        if (llama_cpp) {
            // Window position j (0 is BOS) predicts window[j + 1]; scored from j = ctx/2.
            for (std::size_t j = o.ctx / 2; j + 1 < o.ctx; ++j) {
                nll += negative_log_likelihood(run.logits.data() + (j - 1) * vocab, vocab, ids[start + j + 1]);
                ++predicted;
            }
        } else {
            for (std::size_t i = 0; i + 1 < o.ctx; ++i) {
                nll += negative_log_likelihood(run.logits.data() + i * vocab, vocab, r.question[i + 1]);
                ++predicted;
            }
        }
        ++windows;
        std::fprintf(stderr, "\r[perplexity] %zu windows, running ppl %.4f", windows, std::exp(nll / predicted));
    }
    std::fprintf(stderr, "\n");
    std::printf("perplexity %.4f over %zu predicted tokens (%zu windows of %zu tokens%s, %s protocol) of %s\n",
                std::exp(nll / predicted), predicted, windows, o.ctx, llama_cpp ? " starting with BOS" : " after BOS",
                o.protocol.c_str(), o.file.c_str());
    return 0;
}

}  // namespace

void add_perplexity_command(CLI::App& app) {
    auto o = std::make_shared<PerplexityOptions>();
    CLI::App* cmd = app.add_subcommand("perplexity", "Perplexity of a text file");
    cmd->add_option("--model", o->model, "GGUF model file (default: the bundled stories260K)");
    cmd->add_option("--file", o->file, "text file")->required();
    cmd->add_option("--ctx", o->ctx, "tokens per window")->check(CLI::Range(2, 1 << 20));
    cmd->add_option("--max-windows", o->max_windows, "stop after this many windows (0: all)")->check(CLI::Range(0, 1 << 30));
    cmd->add_option("--protocol", o->protocol,
                    "kvfuse: BOS + ctx tokens a window, all scored; llama.cpp: as llama-perplexity (ctx tokens a window "
                    "starting with BOS, second half scored)")
        ->check(CLI::IsMember({"kvfuse", "llama.cpp"}));
    cmd->add_flag("--pretokenized", o->pretokenized, "the file holds token ids (comma or space separated)");
    cmd->callback([o] { g_exit_status = run(*o); });
}

}  // namespace kvfuse::cli
