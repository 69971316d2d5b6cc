// `kvfuse perplexity`: exp(mean negative log-likelihood) of a text, in windows of --ctx tokens
// each starting with BOS (every token but a window's first is predicted).
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
};

int run(const PerplexityOptions& o) {
    const std::string path = o.model.empty() ? bundled_model_path() : o.model;
    if (path.empty()) throw std::runtime_error("no --model given and the bundled model is missing");
    const std::string text = kvfuse::model::read_regular_file(o.file);
    const LoadedModel loaded = load_model(path);
    const FusionModel& model = *loaded.model;
    if (model.shape().context > 0 && o.ctx + 1 > static_cast<std::size_t>(model.shape().context))
        throw std::invalid_argument("--ctx must leave room for BOS within the context of " + std::to_string(model.shape().context));
    const TokenIds ids = o.pretokenized ? parse_token_ids(text, model.shape().vocab, o.file) : loaded.tokenize(text);
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
        r.question.assign(ids.begin() + static_cast<std::ptrdiff_t>(start), ids.begin() + static_cast<std::ptrdiff_t>(start + o.ctx));
        const FusionRun run = run_request(model, r, {}, full);
        for (std::size_t i = 0; i + 1 < o.ctx; ++i) {
            const float* logits = run.logits.data() + i * vocab;
            double max = logits[0];
            for (std::size_t v = 1; v < vocab; ++v) max = std::max(max, static_cast<double>(logits[v]));
            double sum = 0.0;
            for (std::size_t v = 0; v < vocab; ++v) sum += std::exp(logits[v] - max);
            nll -= logits[static_cast<std::size_t>(r.question[i + 1])] - max - std::log(sum);
            ++predicted;
        }
        ++windows;
        std::fprintf(stderr, "\r[perplexity] %zu windows, running ppl %.4f", windows, std::exp(nll / predicted));
    }
    std::fprintf(stderr, "\n");
    std::printf("perplexity %.4f over %zu predicted tokens (%zu windows of %zu tokens after BOS) of %s\n",
                std::exp(nll / predicted), predicted, windows, o.ctx, o.file.c_str());
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
    cmd->add_flag("--pretokenized", o->pretokenized, "the file holds token ids (comma or space separated)");
    cmd->callback([o] { g_exit_status = run(*o); });
}

}  // namespace kvfuse::cli
