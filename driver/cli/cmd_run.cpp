// `kvfuse run`: one request (chunks + question) fused by each method, against full prefill:
// the answers, TTFT with its breakdown, the speed-up, and the agreement with full prefill.
// `kvfuse run --demo` runs a built-in TinyStories request on the bundled model.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "cli/chat_prompt.h"
#include "cli/commands.h"
#include "model/regular_file.h"
#include "cli/fusion_common.h"
#include "fusion/loaded_model.h"
#include "fusion/metrics.h"
#include "store/chunk_store.h"

namespace kvfuse::cli {

namespace {

using namespace kvfuse::fusion;

struct RunOptions {
    FusionCliOptions fusion;
    std::vector<std::string> chunk_files;
    std::string question;
    std::string methods = "a3";
    std::size_t tokens = 24;
    int repeats = 5;
    bool demo = false;
    bool pretokenized = false;
    bool chat = false;
    bool verbose_prompt = false;
};

std::string read_file(const std::string& path) { return kvfuse::model::read_regular_file(path); }

std::vector<Method> parse_methods(const std::string& list) {
    std::vector<Method> out;
    if (list == "all") return fused_methods();
    std::stringstream in(list);
    for (std::string name; std::getline(in, name, ',');)
        if (!name.empty()) out.push_back(parse_method(name));
    if (out.empty()) throw std::invalid_argument("no method given");
    return out;
}

// The demo: the opening of the bundled TinyStories text cut into four chunks, the question the
// text that follows.
Request demo_request(const LoadedModel& loaded) {
    const std::string path = bundled_text_path();
    if (path.empty()) throw std::runtime_error("the bundled TinyStories text is missing");
    const auto paragraphs = split_paragraphs(read_file(path));
    std::string text;
    for (std::size_t i = 0; i < paragraphs.size() && text.size() < 3000; ++i) text += (text.empty() ? "" : "\n\n") + paragraphs[i];
    const TokenIds ids = loaded.tokenize(text);
    const std::size_t chunk = 96, chunks = 4, question = 32;
    if (ids.size() < chunks * chunk + question) throw std::runtime_error("the bundled text is too short for the demo");
    Request r;
    r.id = "demo";
    r.kind = "continuous";
    r.prefix = {loaded.model->bos()};
    for (std::size_t c = 0; c < chunks; ++c) r.chunks.emplace_back(ids.begin() + c * chunk, ids.begin() + (c + 1) * chunk);
    r.question.assign(ids.begin() + chunks * chunk, ids.begin() + chunks * chunk + question);
    return r;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

int run(RunOptions& o) {
    if (o.demo) {
        if (o.methods == "a3") o.methods = "all";
    } else {
        if (o.chunk_files.empty()) throw std::invalid_argument("give --chunk FILE (one or more) or --demo");
        if (o.question.empty()) throw std::invalid_argument("give --question TEXT (non-empty) or --demo");
    }
    if (o.fusion.model.empty()) o.fusion.model = bundled_model_path();
    if (o.fusion.model.empty()) throw std::runtime_error("no --model given and the bundled model is missing");
    const std::vector<Method> methods = parse_methods(o.methods);
    const LoadedModel loaded = load_model(o.fusion.model);
    const FusionModel& model = *loaded.model;
    Request request;
    if (o.demo) {
        request = demo_request(loaded);
    } else {
        request.id = "user";
        request.kind = "user";
        request.prefix = {model.bos()};
        const int vocab = model.shape().vocab;
        if (o.pretokenized) {
            for (const auto& file : o.chunk_files) request.chunks.push_back(parse_token_ids(read_file(file), vocab, file));
            request.question = parse_token_ids(o.question, vocab, "--question");
        } else {
            // The seam rule: chunks and question tokenized as they sit in the whole prompt.
            std::vector<std::string> parts;
            for (const auto& file : o.chunk_files) parts.push_back(read_file(file));
            if (o.chat) {
                chat_request_from_text(request, parts, o.question, *loaded.tokenizer);
            } else {
                parts.push_back(o.question);
                std::vector<TokenIds> ids = loaded.tokenizer->encode_parts(parts, false);
                request.question = std::move(ids.back());
                ids.pop_back();
                request.chunks = std::move(ids);
            }
        }
        for (std::size_t c = 0; c < request.chunks.size(); ++c)
            if (request.chunks[c].empty()) throw std::invalid_argument(o.chunk_files[c] + ": the chunk is empty");
        if (request.question.empty()) throw std::invalid_argument("the question has no tokens");
    }
    if (o.chat && (o.demo || o.pretokenized)) wrap_in_chat_turn(request, *loaded.tokenizer);
    const std::size_t T = request.total_tokens(), M = request.question.size();
    const auto& shape = model.shape();
    if (shape.context > 0 && T > static_cast<std::size_t>(shape.context))
        throw std::invalid_argument("the prompt has " + std::to_string(T) + " tokens; the model's context is " +
                                    std::to_string(shape.context));
    std::printf("model: %s\n", loaded.description.c_str());
    if (o.verbose_prompt) {
        // The format of `kvfuse tokenize` (and llama-tokenize --ids), so the two compare directly.
        const TokenIds prompt = request.full_prompt();
        std::string line = "[";
        for (std::size_t i = 0; i < prompt.size(); ++i) line += (i ? ", " : "") + std::to_string(prompt[i]);
        std::printf("prompt tokens: %s]\n", line.c_str());
    }
    std::printf("request: %zu chunks (%zu tokens), question %zu tokens, %zu tokens in all\n", request.chunks.size(),
                T - M - request.prefix.size(), M, T);

    auto store = open_store(o.fusion);
    ChunkSource source(model, store.get());
    source.set_streaming(!o.fusion.no_stream);
    source.set_threads(o.fusion.placement.threads);
    const std::size_t computed = source.precompute(std::span<const Request>(&request, 1));
    std::printf("chunk caches: %zu computed now, %zu already stored%s\n", computed, request.chunks.size() - computed,
                store ? (" (" + store->location() + ")").c_str() : " (in memory, --no-store)");

    const std::size_t vocab = static_cast<std::size_t>(shape.vocab);
    // Full prefill: the reference answer and time.
    FusionOptions full_options = to_fusion_options(o.fusion, Method::full);
    std::vector<double> full_times;
    // The kernels' contexts: made by the first request, then lent to every run (as an engine
    // keeps its contexts); each timed run still starts with fresh buffers, as before.
    KernelContexts kernels;
    auto timed_run = [&](std::span<const ChunkKvView> chunks, const FusionOptions& options) {
        FusionRun run;
        run.kernels = std::move(kernels);
        run_request(model, request, chunks, options, run);
        kernels = std::move(run.kernels);
        return run;
    };
    FusionRun full;
    for (int r = 0; r < o.repeats; ++r) {
        full = timed_run({}, full_options);
        full_times.push_back(full.times.total());
    }
    const double full_ms = median(full_times);
    const auto first_full = argmax_row(full.logits, M - 1, vocab);
    // Decoding extends full prefill's own cache, which then goes with the run's working buffers:
    // the methods below compare with full.logits alone, so their runs hold one request cache
    // beside the chunk caches, not three (a copy here doubled the 8B run's KV memory).
    TokenIds full_tokens;
    {
        KvCache full_decode = std::move(full.cache);
        full.buffers = {};
        full_tokens = greedy_decode(model, full_decode, first_full, o.tokens, kernels.request());
    }
    // A chat answer is shown up to the end of its turn.
    auto shown = [&](const TokenIds& tokens) { return loaded.detokenize(o.chat ? until_end_of_turn(tokens, *loaded.tokenizer) : tokens); };
    std::printf("\nfull prefill answer: %s\n", shown(full_tokens).c_str());

    std::printf("\n%-11s %6s %9s %10s %9s %8s %8s %8s %8s %8s %8s %8s %8s %9s\n", "method", "ratio", "recompute",
                "TTFT ms", "speed-up", "load", "rotate", "full L", "select", "recomp", "logits", "KL", "top-1", "greedy");
    std::printf("%-11s %6s %9.3f %10.3f %9s\n", "full", "-", 1.0, full_ms, "1.00x");
    std::vector<std::pair<std::string, std::string>> answers;
    for (Method method : methods) {
        if (method_info(method).where == SelectAt::nowhere) continue;
        FusionOptions options = to_fusion_options(o.fusion, method);
        std::vector<double> times;
        FusionRun fused;
        StageTimes stages;
        for (int r = 0; r < o.repeats; ++r) {
            // Reading the stored caches is part of the time to first token.
            ChunkSource::Loaded chunks = source.get_all(request);
            fused = FusionRun();
            fused.kernels = std::move(kernels);
            source.run(request, chunks, options, fused);  // a chunk whose stream breaks off is recomputed
            kernels = std::move(fused.kernels);
            fused.times.kv_load += chunks.load_ms;
            times.push_back(fused.times.total());
            if (times.back() == median(times)) stages = fused.times;
        }
        const double ms = median(times);
        const LogitAgreement agreement = compare_logit_rows(full.logits, fused.logits, vocab);
        const auto first = argmax_row(fused.logits, M - 1, vocab);
        const auto tokens = greedy_decode(model, fused.cache, first, o.tokens, kernels.request());
        const bool ratio_matters = method_info(method).takes_ratio;
        std::printf("%-11s %6s %9.3f %10.3f %8.2fx %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.4f %8.3f %4zu/%-4zu\n",
                    method_name(method), ratio_matters ? std::to_string(o.fusion.ratio).substr(0, 4).c_str() : "-",
                    fused.recompute_fraction, ms, full_ms / ms, stages.kv_load, stages.rerotate, stages.full_layers,
                    stages.selection, stages.recompute, stages.logits, agreement.mean_kl, agreement.top1,
                    matching_prefix(tokens, full_tokens), full_tokens.size());
        answers.emplace_back(method_name(method), shown(tokens));
    }
    std::printf("\n(times: median of %d runs in ms; KL and top-1 over the %zu question rows; greedy = tokens equal to\n"
                " full prefill's continuation before the first difference)\n\n",
                o.repeats, M);
    for (const auto& [name, text] : answers) std::printf("%-11s answer: %s\n", name.c_str(), text.c_str());
    return 0;
}

}  // namespace

void add_run_command(CLI::App& app) {
    auto o = std::make_shared<RunOptions>();
    CLI::App* cmd = app.add_subcommand("run", "Fuse stored chunk caches into one request and compare with full prefill");
    add_fusion_options(*cmd, o->fusion);
    cmd->add_option("--chunk", o->chunk_files, "text file of one chunk (repeat, in prompt order)");
    cmd->add_option("--question", o->question, "the question (text after the chunks)");
    std::string help = "a method, a comma list, or all:";
    for (const MethodInfo& info : method_table())
        if (info.where != SelectAt::nowhere) help += std::string("\n  ") + info.name + ": " + info.summary;
    cmd->add_option("--method", o->methods, help);
    cmd->add_option("--ratio", o->fusion.ratio, "fraction of document rows recomputed, in (0, 1]")
        ->check(CLI::Range(0.0, 1.0));
    cmd->add_option("-n,--tokens", o->tokens, "tokens to generate")->check(CLI::Range(1, 4096));
    cmd->add_option("--repeat", o->repeats, "timed runs per method (median reported)")->check(CLI::Range(1, 1000));
    cmd->add_flag("--demo", o->demo, "built-in example on the bundled model, every method");
    cmd->add_flag("--chat", o->chat, "put the request in the model's chat format (tokenizer.chat_template)");
    cmd->add_flag("--verbose-prompt", o->verbose_prompt, "print the whole prompt's token ids (prefix, chunks, question) as `tokenize` does");
    cmd->add_flag("--pretokenized", o->pretokenized, "chunk files and --question hold token ids (comma or space separated)");
    cmd->callback([o] {
        if (!(o->fusion.ratio > 0.0)) throw std::invalid_argument("--ratio must be in (0, 1]");
        if (!apply_placement_reporting_on_stderr(o->fusion.placement)) {
            g_exit_status = 2;
            return;
        }
        g_exit_status = run(*o);
    });
}

}  // namespace kvfuse::cli
