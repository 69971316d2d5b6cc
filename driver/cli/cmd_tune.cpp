// `kvfuse tune`: finds the shapes to tune for (a GGUF model's, or a default set), runs the
// tuner (tuning/tuner.h: per-kernel ISA, kernel parameters, parallel thresholds) and writes the
// profile the library loads at start-up.
#include <omp.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "cli/commands.h"
#include "kvfuse/kvfuse.hpp"
#include "model/gguf.h"
#include "model/llama_model.h"
#include "tuning/tuner.h"

namespace kvfuse::cli {

namespace {

int run_tune(const std::string& model_path, std::string out_path, bool quick) {
    tuner::Shapes shapes;
    if (!model_path.empty()) {
        const auto file = model::GgufFile::open(model_path);
        const model::LlamaModel model(file);
        const auto& s = model.shape();
        shapes.heads = static_cast<std::size_t>(s.heads);
        shapes.kv_heads = static_cast<std::size_t>(s.kv_heads);
        shapes.head_dim = static_cast<std::size_t>(s.head_dim);
        shapes.context = static_cast<std::size_t>(s.context);
        shapes.source = model_path;
    }
    if (out_path.empty()) out_path = default_profile_path();
    if (out_path.empty()) {
        std::fprintf(stderr, "kvfuse: error: no default profile location (set HOME or XDG_CACHE_HOME) and no --out\n");
        return 1;
    }
    {
        // Fail before minutes of measuring, not after, when the profile cannot be written there.
        std::error_code ec;
        const std::filesystem::path parent = std::filesystem::path(out_path).parent_path();
        if (!parent.empty()) std::filesystem::create_directories(parent, ec);
        if (ec || (!parent.empty() && !std::filesystem::is_directory(parent))) {
            std::fprintf(stderr, "kvfuse: error: cannot create %s for the profile: %s\n", parent.c_str(),
                         ec ? ec.message().c_str() : "not a directory");
            return 1;
        }
    }
    Isa isa = Isa::scalar;
    if (Status s = active_isa(isa); !s.ok()) {
        std::fprintf(stderr, "kvfuse: error: %s\n", s.message().c_str());
        return 1;
    }
    std::fprintf(stderr, "tune: isa %s, %d threads, shapes from %s: H %zu, Hkv %zu, D %zu, context %zu%s\n",
                 isa_name(isa), omp_get_max_threads(), shapes.source.c_str(), shapes.heads, shapes.kv_heads,
                 shapes.head_dim, shapes.context, quick ? " (quick)" : "");
    tuner::Options options;
    options.quick = quick;
    options.progress = [](const std::string& line) { std::fprintf(stderr, "tune: %s\n", line.c_str()); };
    tuner::Result result;
    try {
        result = tuner::tune(shapes, options);
    } catch (const std::runtime_error& e) {
        std::fprintf(stderr, "kvfuse: error: tuning failed: %s\n", e.what());
        return 1;
    }
    // The profile records the per-kernel ISAs in force: put the chosen ones in force to save them.
    if (Status applied = tuner::apply(result.settings); !applied.ok()) {
        std::fprintf(stderr, "kvfuse: error: %s\n", applied.message().c_str());
        return 1;
    }
    const Tuning& tuned = result.settings.tuning;
    const Status saved = save_profile(out_path, tuned, result.measurements_json);
    if (!saved.ok()) {
        std::fprintf(stderr, "kvfuse: error: %s\n", saved.message().c_str());
        return 1;
    }
    if (Status loaded = load_profile(out_path); !loaded.ok()) {
        std::fprintf(stderr, "kvfuse: error: the profile just written does not load: %s\n", loaded.message().c_str());
        return 1;
    }
    std::printf("profile written: %s\n", out_path.c_str());
    std::printf("kernel isa: %s\n", tuner::describe_kernel_isas().c_str());
    std::printf("attention key tile %u%s, row block %u; scoring rows %u; top-k sample %u;\n"
                "parallel above: rope %llu, attention %llu, scoring %llu, quantizers %llu\n",
                tuned.attention_key_tile, tuned.attention_key_tile == 0 ? " (from L1 size)" : "", tuned.attention_row_block,
                tuned.score_query_rows, tuned.topk_sample, static_cast<unsigned long long>(tuned.rope_parallel_work),
                static_cast<unsigned long long>(tuned.attention_parallel_work),
                static_cast<unsigned long long>(tuned.score_parallel_work),
                static_cast<unsigned long long>(tuned.quantize_parallel_work));
    return 0;
}

}  // namespace

void add_tune_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("tune", "Measure each kernel's ISA and parameters on this machine and write its profile");
    auto model = std::make_shared<std::string>();
    auto out = std::make_shared<std::string>();
    auto quick = std::make_shared<bool>(false);
    cmd->add_option("--model", *model, "GGUF model whose shapes to tune for (default: 32/8 heads of 128, 4096 tokens)")
        ->check(CLI::ExistingFile);
    cmd->add_option("--out", *out, "Profile path (default: this machine's default location, see `kvfuse info`)");
    cmd->add_flag("--quick", *quick, "Small problem sizes and single runs: seconds, for a smoke test");
    cmd->callback([=] { g_exit_status = run_tune(*model, *out, *quick); });
}

}  // namespace kvfuse::cli
