// `kvfuse generate`: full prefill of a prompt and greedy decoding, with prefill and decode speed.
#include <chrono>
#include <cstdio>
#include <stdexcept>

#include "cli/commands.h"
#include "cli/fusion_common.h"
#include "fusion/loaded_model.h"
#include "fusion/metrics.h"
#include "fusion/pipeline.h"

namespace kvfuse::cli {

namespace {

using namespace kvfuse::fusion;

struct GenerateOptions {
    std::string model;
    std::string prompt;
    std::string ids;  // parsed once the vocabulary is known
    bool ids_given = false;
    std::size_t tokens = 32;
};

int run(const GenerateOptions& o) {
    const std::string path = o.model.empty() ? bundled_model_path() : o.model;
    if (path.empty()) throw std::runtime_error("no --model given and the bundled model is missing");
    if (o.prompt.empty() && !o.ids_given) throw std::invalid_argument("give a non-empty --prompt or --ids");
    const LoadedModel loaded = load_model(path);
    const FusionModel& model = *loaded.model;
    Request request;
    request.prefix = {model.bos()};
    request.question = o.ids_given ? parse_token_ids(o.ids, model.shape().vocab, "--ids") : loaded.tokenize(o.prompt);
    // `--ids ''` (or only separators) must not become a prompt of token 0, nor a prompt of
    // nothing whose "next token" is read from before the first row.
    if (request.question.empty())
        throw std::invalid_argument(o.ids_given ? "--ids holds no token id" : "the prompt gives no tokens");
    const std::size_t total = request.total_tokens() + o.tokens;
    if (model.shape().context > 0 && total > static_cast<std::size_t>(model.shape().context))
        throw std::invalid_argument("prompt + generated tokens (" + std::to_string(total) + ") exceed the context of " +
                                    std::to_string(model.shape().context));
    FusionOptions full;
    full.method = Method::full;
    const auto t0 = std::chrono::steady_clock::now();
    FusionRun run = run_request(model, request, {}, full);
    const auto t1 = std::chrono::steady_clock::now();
    const std::size_t vocab = static_cast<std::size_t>(model.shape().vocab), m = request.question.size();
    const auto first = argmax_row(run.logits, m - 1, vocab);
    const auto generated = greedy_decode(model, run.cache, first, o.tokens, run.kernels.request());
    const auto t2 = std::chrono::steady_clock::now();
    const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
    const double decode_s = std::chrono::duration<double>(t2 - t1).count();
    std::printf("%s%s\n", !o.ids_given ? o.prompt.c_str() : loaded.detokenize(request.question).c_str(),
                loaded.detokenize(generated).c_str());
    std::fprintf(stderr, "prefill: %zu tokens in %.2f ms (%.0f tokens/s); decode: %zu tokens in %.2f ms (%.0f tokens/s)\n",
                 request.total_tokens(), prefill_s * 1e3, request.total_tokens() / prefill_s, generated.size(),
                 decode_s * 1e3, generated.size() / decode_s);
    return 0;
}

}  // namespace

void add_generate_command(CLI::App& app) {
    auto o = std::make_shared<GenerateOptions>();
    CLI::App* cmd = app.add_subcommand("generate", "Greedy generation from a prompt (full prefill, then decoding)");
    cmd->add_option("--model", o->model, "GGUF model file (default: the bundled stories260K)");
    CLI::Option* prompt = cmd->add_option("-p,--prompt", o->prompt, "prompt text");
    cmd->add_option("--ids", o->ids, "pre-tokenized prompt (token ids, comma or space separated; BOS is added)")
        ->excludes(prompt);
    cmd->add_option("-n,--tokens", o->tokens, "tokens to generate")->check(CLI::Range(1, 1 << 20));
    cmd->callback([o, cmd] {
        o->ids_given = cmd->count("--ids") > 0;
        g_exit_status = run(*o);
    });
}

}  // namespace kvfuse::cli
