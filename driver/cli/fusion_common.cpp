#include "cli/fusion_common.h"

#include <cctype>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "driver_errors.h"
#include "model/regular_file.h"
#include "store/open_backend.h"

namespace kvfuse::cli {

void add_fusion_options(CLI::App& cmd, FusionCliOptions& o) {
    cmd.add_option("--model", o.model, "GGUF model file (default: the bundled stories260K)");
    std::string at_check_layer;  // the methods that select there, from the method table
    for (const kvfuse::fusion::MethodInfo& info : kvfuse::fusion::method_table())
        if (info.where == kvfuse::fusion::SelectAt::check_layer || info.where == kvfuse::fusion::SelectAt::every_later_layer)
            at_check_layer += (at_check_layer.empty() ? "" : ", ") + std::string(info.name);
    cmd.add_option("--check-layer", o.check_layer, "layer where " + at_check_layer + " select rows")->check(CLI::Range(1, 1000));
    cmd.add_option("--epic-tokens", o.epic_tokens, "epic: leading tokens of each chunk recomputed")->check(CLI::Range(1, 100000));
    cmd.add_flag("--no-smoothing", o.no_smoothing, "a3: no width-5 moving average of the relevance");
    cmd.add_option("--a3-scoring", o.a3_scoring, "a3: score with f32 keys and queries, or int8 / int4 keys and int8 queries")
        ->check(CLI::IsMember({"f32", "int8", "int4"}));
    cmd.add_option("--a3-layer-keys", o.a3_layer_keys,
                   "a3-layers, a3-probe: at the later layers, score the chunks' stored keys in their own frame (stored, the quantized form for int8 / int4) "
                   "or the fused cache's keys (fused)")
        ->check(CLI::IsMember({"stored", "fused"}));
    cmd.add_flag("--pipelined-load", o.pipelined_loading,
                 "load and re-rotate layer l+1's stored rows on a thread of its own while layer l is computed");
    cmd.add_option("--store", o.store_dir, "chunk store: a directory (default $XDG_CACHE_HOME/kvfuse/chunks) or redis://host[:port][/db]");
    cmd.add_option("--store-limit", o.store_limit,
                   "most bytes of chunk files the store directory keeps (e.g. 20G); the least recently used go first "
                   "(default: no limit)")
        ->transform(CLI::AsSizeValue(false));
    cmd.add_flag("--no-store", o.no_store, "keep chunk caches in memory only");
    cmd.add_flag("--no-stream", o.no_stream,
                 "read each stored chunk whole before a request starts (default: streamed, its later layers arriving "
                 "while the earlier ones are computed)");
    cmd.add_option("--seed", o.seed, "seed of the random method")->check(CLI::NonNegativeNumber);
    add_placement_options(cmd, o.placement);
}

kvfuse::fusion::FusionOptions to_fusion_options(const FusionCliOptions& o, kvfuse::fusion::Method method) {
    kvfuse::fusion::FusionOptions f;
    f.method = method;
    f.ratio = o.ratio;
    f.check_layer = o.check_layer;
    f.epic_tokens = o.epic_tokens;
    f.a3_smoothing = !o.no_smoothing;
    f.a3_scoring = o.a3_scoring == "int8"   ? kvfuse::fusion::ScoreKeys::int8
                   : o.a3_scoring == "int4" ? kvfuse::fusion::ScoreKeys::int4
                                            : kvfuse::fusion::ScoreKeys::f32;
    f.a3_stored_keys = o.a3_layer_keys == "stored";
    f.pipelined_loading = o.pipelined_loading;
    f.seed = o.seed;
    f.threads = o.placement.threads;
    return f;
}

std::vector<std::int32_t> parse_token_ids(const std::string& text, int vocab, const std::string& where) {
    std::vector<std::int32_t> ids;
    std::string item;
    auto flush = [&] {
        if (item.empty()) return;
        std::size_t used = 0;
        long long value = -1;
        try {
            value = std::stoll(item, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used != item.size()) throw std::invalid_argument(where + ": '" + item + "' is not a token id");
        if (value < 0 || value >= vocab)
            throw std::invalid_argument(where + ": token id " + item + " is outside the vocabulary of " + std::to_string(vocab));
        ids.push_back(static_cast<std::int32_t>(value));
        item.clear();
    };
    for (char ch : text) {
        if (ch == ',' || std::isspace(static_cast<unsigned char>(ch)))
            flush();
        else
            item.push_back(ch);
    }
    flush();
    return ids;
}

std::unique_ptr<kvfuse::store::ChunkBackend> open_store(const FusionCliOptions& o) {
    if (o.no_store) return nullptr;
    kvfuse::store::BackendOptions options;
    options.directory.sync_writes = false;  // a lost chunk is only recomputed; atomicity is kept
    options.directory.disk_limit_bytes = o.store_limit;
    auto store = kvfuse::store::open_backend(o.store_dir, std::move(options));
    return kvfuse::driver::value_or_throw(std::move(store), "chunk store");
}

void add_placement_options(CLI::App& cmd, PlacementCliOptions& options) {
    cmd.add_flag("--place", options.place, "pin OpenMP threads one per physical core (hwloc)");
    cmd.add_flag("--smt", options.smt, "with --place: also use SMT siblings (one thread per PU)");
    cmd.add_option("--cores", options.cores, "with --place: these cores (hwloc logical indices, comma-separated)")
        ->delimiter(',');
    cmd.add_option("--threads", options.threads,
                   "this many threads: placed (with --place; default one per core used), and each kernel call's workers")
        ->check(CLI::NonNegativeNumber);
}

bool apply_placement(const PlacementCliOptions& options, std::string* description) {
    if (!options.place && !options.smt && options.cores.empty() && options.threads == 0) return true;
    const kvfuse::Status placed = kvfuse::place_threads(options.threads, options.smt, description, options.cores);
    if (!placed.ok()) {
        std::fprintf(stderr, "kvfuse: error: thread placement: %s\n", placed.message().c_str());
        return false;
    }
    return true;
}

bool apply_placement_reporting_on_stderr(const PlacementCliOptions& options) {
    std::string description;
    if (!apply_placement(options, &description)) return false;
    if (!description.empty()) std::fprintf(stderr, "placement:\n%s", description.c_str());
    return true;
}

std::vector<kvfuse::fusion::Request> story_requests(const std::string& path, const std::string& kind,
                                                    const kvfuse::fusion::LoadedModel& loaded,
                                                    kvfuse::fusion::StoryRequestOptions options) {
    using namespace kvfuse::fusion;
    const std::string text = kvfuse::model::read_regular_file(path);
    // JSON read as story text would still build requests (of braces and quotes) and print a
    // table: refuse it, the user meant --kind musique.
    const auto first = text.find_first_not_of(" \t\r\n");
    if (first != std::string::npos && (text[first] == '[' || text[first] == '{'))
        throw std::invalid_argument(path + " looks like JSON, not story text: CacheBlend-format QA data needs --kind musique");
    const auto& shape = loaded.model->shape();
    options.max_total_tokens = shape.context > 0 ? static_cast<std::size_t>(shape.context) : 1u << 20;
    options.bos = loaded.model->bos();
    const auto paragraphs = split_paragraphs(text);
    std::vector<Request> requests;
    if (kind == "continuous")
        requests = continuous_requests(paragraphs, loaded.tokenize, options);
    else if (kind == "mixed")
        requests = mixed_requests(paragraphs, loaded.tokenize, options);
    else
        throw std::invalid_argument("unknown --kind '" + kind + "' (use continuous, mixed or musique)");
    if (requests.size() < options.count)
        std::fprintf(stderr, "kvfuse: the text gave only %zu of %zu requests\n", requests.size(), options.count);
    if (requests.empty()) throw std::runtime_error(path + ": no request could be built from this text");
    return requests;
}

}  // namespace kvfuse::cli
