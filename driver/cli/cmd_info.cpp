// `kvfuse info`: what is compiled, what this CPU runs, what is active.
#include <omp.h>

#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "cli/fusion_common.h"
#include "kvfuse/kvfuse.hpp"
#include "model/llama_model.h"
#include "tuning/tuner.h"

namespace kvfuse::cli {

namespace {

const char* yes_no(int flag) { return flag ? "yes" : "no"; }

int run_info(const std::string& model_path, const PlacementCliOptions& placement_options) {
    std::printf("kvfuse %s\n", kvfuse::version().c_str());
    const kvfuse::CpuFeatures f = kvfuse::cpu_features();
    std::printf("cpu: %s\n", f.brand[0] ? f.brand : "(unknown model)");
    std::printf("cpu features: avx2 %s, fma %s, f16c %s, avx512f %s, avx512bw %s, avx512dq %s, "
                "avx512vl %s, avx512_vnni %s, avx512_bf16 %s, avx512_vbmi2 %s, avx_vnni %s, neon %s, dotprod %s\n",
                yes_no(f.avx2), yes_no(f.fma), yes_no(f.f16c), yes_no(f.avx512f), yes_no(f.avx512bw),
                yes_no(f.avx512dq), yes_no(f.avx512vl), yes_no(f.avx512_vnni), yes_no(f.avx512_bf16), yes_no(f.avx512_vbmi2),
                yes_no(f.avx_vnni), yes_no(f.neon), yes_no(f.arm_dotprod));
    std::printf("os saves vector state: avx %s, avx512 %s\n", yes_no(f.os_saves_avx), yes_no(f.os_saves_avx512));
    std::printf("%-8s %-9s %s\n", "isa", "compiled", "supported");
    for (kvfuse::Isa isa : kvfuse::all_isas())
        std::printf("%-8s %-9s %s\n", kvfuse::isa_name(isa), yes_no(kvfuse::isa_compiled(isa)),
                    yes_no(kvfuse::isa_supported(isa)));
    kvfuse::Topology topo{};
    if (kvfuse::topology(topo).ok()) {
        auto kib = [](std::int64_t bytes) { return bytes > 0 ? std::to_string(bytes / 1024) + " KiB" : std::string("unknown"); };
        std::printf("topology%s: %d package(s), %d NUMA node(s), %d core(s), %d PU(s); L1d %s, L2 %s per core, L3 %s\n",
                    topo.from_hwloc ? " (hwloc)" : " (OS only)", topo.packages, topo.numa_nodes, topo.cores, topo.pus,
                    kib(topo.l1d_bytes).c_str(), kib(topo.l2_bytes).c_str(), kib(topo.l3_bytes).c_str());
    }
    {
        std::string placement;
        if (!apply_placement(placement_options, &placement)) return 2;
        if (!placement.empty()) std::printf("placement:\n%s", placement.c_str());
    }
    std::printf("openmp threads: %d\n", omp_get_max_threads());
    kvfuse::Isa active;
    const kvfuse::Status status = kvfuse::active_isa(active);
    if (!status.ok()) {
        std::fprintf(stderr, "kvfuse: error: %s\n", status.message().c_str());
        return 2;
    }
    std::printf("active isa: %s\n", kvfuse::isa_name(active));
    // Where each kernel runs: "default" is the active ISA, "profile" the tuning profile's choice,
    // "KVFUSE_ISA" one ISA forced for everything.
    std::printf("kernel isa: %s\n", kvfuse::tuner::describe_kernel_isas().c_str());
    kvfuse::RelevanceDotSchemes dots;
    if (kvfuse::relevance_dot_schemes(dots).ok())
        std::printf("scoring dot products: int8 keys %s, int4 keys %s\n", dots.int8_keys.c_str(), dots.int4_keys.c_str());
    const kvfuse::Tuning t = kvfuse::current_tuning();
    std::printf("tuning: %s\n", kvfuse::profile_status().c_str());
    std::printf("  attention key tile %u%s, row block %u; scoring rows %u; top-k sample %u\n", t.attention_key_tile,
                t.attention_key_tile == 0 ? " (from the L1 size)" : "", t.attention_row_block, t.score_query_rows,
                t.topk_sample);
    std::printf("  parallel above: rope %llu elements, attention %llu and scoring %llu multiply-adds\n",
                static_cast<unsigned long long>(t.rope_parallel_work), static_cast<unsigned long long>(t.attention_parallel_work),
                static_cast<unsigned long long>(t.score_parallel_work));
    std::printf("  parallel above: top-k rows of %llu scores, quantizers %llu values\n",
                static_cast<unsigned long long>(t.topk_parallel_work), static_cast<unsigned long long>(t.quantize_parallel_work));
    std::printf("  default profile location: %s\n", kvfuse::default_profile_path().c_str());
    if (!model_path.empty()) {
        const auto file = kvfuse::model::GgufFile::open(model_path);
        const kvfuse::model::LlamaModel model(file);
        std::printf("\nmodel: %s (GGUF v%u, %llu bytes, %zu tensors)\n", model_path.c_str(), file->version(),
                    static_cast<unsigned long long>(file->size()), file->tensors().size());
        std::printf("  %s\n", model.describe().c_str());
        const auto& rope = model.shape().rope;
        std::printf("  rope: %s pairs, base %g, rotary dims %d%s\n",
                    rope.pairing == kvfuse::RopePairing::interleaved ? "interleaved (2i, 2i+1)" : "NeoX (i, i+D/2)", rope.base,
                    rope.rotary_dims, rope.scaling == kvfuse::RopeScaling::none ? "" : ", scaled");
        std::printf("  rms epsilon %g, output %s, tokenizer: %zu tokens, BOS %d, EOS %d\n", model.rms_epsilon(),
                    file->tensor("output.weight") ? "separate" : "tied to the embedding", model.tokenizer().vocab_size(),
                    model.tokenizer().bos(), model.tokenizer().eos());
        std::printf("  fingerprint %s\n", model.fingerprint().c_str());
        std::map<std::string, int> types;
        for (const auto& t : file->tensors()) ++types[t.type_name()];
        std::printf("  tensor types:");
        for (const auto& [name, count] : types) std::printf(" %s x%d", name.c_str(), count);
        std::printf("\n");
    }
    return 0;
}

}  // namespace

void add_info_command(CLI::App& app) {
    CLI::App* cmd = app.add_subcommand("info", "Print compiled ISAs, CPU features and the active ISA");
    auto model = std::make_shared<std::string>();
    auto placement = std::make_shared<PlacementCliOptions>();
    cmd->add_option("--model", *model, "also describe this GGUF model file");
    add_placement_options(*cmd, *placement);
    cmd->callback([model, placement] { g_exit_status = run_info(*model, *placement); });
}

}  // namespace kvfuse::cli
