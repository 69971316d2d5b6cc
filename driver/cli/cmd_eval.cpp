// `kvfuse eval`: many requests, each method against full prefill on the same requests; a table
// on stdout, progress on stderr, everything as JSON with --json.
#include <unistd.h>

#include <cstdio>
#include <stdexcept>

#include "cli/chat_prompt.h"
#include "cli/commands.h"
#include "cli/fusion_common.h"
#include "fusion/evaluation.h"
#include "fusion/musique.h"
#include "store/chunk_store.h"

namespace kvfuse::cli {

namespace {

using namespace kvfuse::fusion;

struct EvalCliOptions {
    FusionCliOptions fusion;
    std::string data;
    std::string kind = "continuous";
    std::vector<std::string> methods;  // empty: every fused method of the table
    std::vector<double> ratios = {0.05, 0.15, 0.30};
    std::size_t count = 100;
    std::size_t chunk_tokens = 64;
    std::size_t question_tokens = 32;
    std::size_t decode = 16;
    std::string prompt_template = "cacheblend";
    std::string json;
    std::string command_line;
    bool chat = false;
};

std::vector<Request> build_requests(const EvalCliOptions& o, const LoadedModel& loaded) {
    const auto& shape = loaded.model->shape();
    if (o.kind == "musique") {
        const PromptTemplate t = parse_prompt_template(o.prompt_template);
        auto items = load_qa_file(o.data, t);
        if (items.size() > o.count) items.resize(o.count);
        auto requests = qa_requests(items, loaded.tokenize, loaded.model->bos(), t);
        for (const auto& r : requests)
            if (shape.context > 0 && r.total_tokens() > static_cast<std::size_t>(shape.context))
                throw std::invalid_argument(r.id + " has " + std::to_string(r.total_tokens()) +
                                            " tokens, more than the model's context of " + std::to_string(shape.context) +
                                            " (this data needs a model with a longer context)");
        return requests;
    }
    StoryRequestOptions s;
    s.count = o.count;
    s.chunk_tokens = o.chunk_tokens;
    s.question_tokens = o.question_tokens;
    s.seed = o.fusion.seed;
    return story_requests(o.data, o.kind, loaded, s);
}

int run(const EvalCliOptions& o) {
    EvalOptions options;
    options.methods.clear();
    for (const auto& m : o.methods) options.methods.push_back(parse_method(m));
    if (o.methods.empty()) options.methods = fused_methods();
    options.ratios = o.ratios;
    for (double r : options.ratios)
        if (!(r > 0.0 && r <= 1.0)) throw std::invalid_argument("every ratio must be in (0, 1]");
    if (options.ratios.empty()) throw std::invalid_argument("give at least one ratio");
    options.base = to_fusion_options(o.fusion, Method::full);
    options.decode_tokens = o.decode;
    const std::string model_path = o.fusion.model.empty() ? bundled_model_path() : o.fusion.model;
    if (model_path.empty()) throw std::runtime_error("no --model given and the bundled model is missing");
    const LoadedModel loaded = load_model(model_path);
    if (o.fusion.check_layer >= loaded.model->shape().layers)
        throw std::invalid_argument("--check-layer must be below the model's " + std::to_string(loaded.model->shape().layers) + " layers");
    std::vector<Request> requests = build_requests(o, loaded);
    if (o.chat)
        for (Request& r : requests) wrap_in_chat_turn(r, *loaded.tokenizer);
    auto store = open_store(o.fusion);
    ChunkSource source(*loaded.model, store.get());
    source.set_streaming(!o.fusion.no_stream);
    source.set_threads(o.fusion.placement.threads);
    std::fprintf(stderr, "kvfuse eval: %zu %s requests on %s; precomputing chunk caches...\n", requests.size(),
                 o.kind.c_str(), loaded.description.c_str());
    source.precompute(requests);
    const bool tty = ::isatty(2);
    const EvalResult result = evaluate(loaded, requests, source, options, [&](std::size_t done, std::size_t total) {
        const int width = 40;
        const int filled = static_cast<int>(width * done / total);
        if (tty || done == total || done % 10 == 0)
            std::fprintf(stderr, "%s[%.*s%*s] %zu/%zu requests%s", tty ? "\r" : "", filled,
                         "========================================", width - filled, "", done, total, tty ? "" : "\n");
    });
    if (tty) std::fprintf(stderr, "\n");
    std::printf("%s", format_table(result, o.kind == "musique").c_str());
    if (!o.json.empty()) {
        write_json(result, o.json, o.command_line);
        std::fprintf(stderr, "kvfuse eval: wrote %s\n", o.json.c_str());
    }
    return 0;
}

}  // namespace

void add_eval_command(CLI::App& app) {
    auto o = std::make_shared<EvalCliOptions>();
    CLI::App* cmd = app.add_subcommand("eval", "Evaluate fusion methods against full prefill on many requests");
    add_fusion_options(*cmd, o->fusion);
    cmd->add_option("--data", o->data, "TinyStories text (continuous, mixed) or a CacheBlend-format JSON (musique)")->required();
    cmd->add_option("--kind", o->kind, "continuous, mixed or musique");
    cmd->add_flag("--chat", o->chat, "put each request in the model's chat format (tokenizer.chat_template)");
    std::string ratio_methods;
    for (const MethodInfo& info : method_table())
        if (info.takes_ratio) ratio_methods += (ratio_methods.empty() ? "" : ", ") + std::string(info.name);
    cmd->add_option("--methods", o->methods, "methods to compare with full prefill (default: " + method_names(", ", false) + ")")
        ->delimiter(',');
    cmd->add_option("--ratios", o->ratios, "recompute ratios of " + ratio_methods)->delimiter(',');
    cmd->add_option("--count", o->count, "requests")->check(CLI::Range(1, 100000));
    cmd->add_option("--chunk-tokens", o->chunk_tokens, "tokens per chunk (story data)")->check(CLI::Range(1, 100000));
    cmd->add_option("--question-tokens", o->question_tokens, "tokens of the question (story data)")->check(CLI::Range(1, 100000));
    cmd->add_option("--decode", o->decode, "greedy tokens compared with full prefill's")->check(CLI::Range(1, 4096));
    cmd->add_option("--template", o->prompt_template, "musique prompt: cacheblend or raw");
    cmd->add_option("--json", o->json, "write every measurement and summary here");
    cmd->callback([o, cmd] {
        o->command_line = "kvfuse eval";
        for (const auto& opt : cmd->get_options())
            if (opt->count() > 0 && !opt->get_lnames().empty())
                o->command_line += " --" + opt->get_lnames().front() + (opt->get_expected_min() > 0 ? " " + opt->as<std::string>() : "");
        if (!apply_placement_reporting_on_stderr(o->fusion.placement)) {
            g_exit_status = 2;
            return;
        }
        g_exit_status = run(*o);
    });
}

}  // namespace kvfuse::cli
