// `kvfuse info`: what is compiled, what this CPU runs, what is active.
#include <omp.h>

#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "kvfuse/kvfuse.hpp"

namespace kvfuse::cli {

namespace {

const char* yes_no(int flag) { return flag ? "yes" : "no"; }

int run_info() {
    std::printf("kvfuse %s\n", kvfuse::version().c_str());
    const kvfuse::CpuFeatures f = kvfuse::cpu_features();
    std::printf("cpu: %s\n", f.brand[0] ? f.brand : "(unknown model)");
    std::printf("cpu features: avx2 %s, fma %s, f16c %s, avx512f %s, avx512bw %s, avx512dq %s, "
                "avx512vl %s, avx512_vnni %s, avx512_bf16 %s, avx_vnni %s, neon %s, dotprod %s\n",
                yes_no(f.avx2), yes_no(f.fma), yes_no(f.f16c), yes_no(f.avx512f), yes_no(f.avx512bw),
                yes_no(f.avx512dq), yes_no(f.avx512vl), yes_no(f.avx512_vnni), yes_no(f.avx512_bf16),
                yes_no(f.avx_vnni), yes_no(f.neon), yes_no(f.arm_dotprod));
    std::printf("os saves vector state: avx %s, avx512 %s\n", yes_no(f.os_saves_avx), yes_no(f.os_saves_avx512));
    std::printf("%-8s %-9s %s\n", "isa", "compiled", "supported");
    for (kvfuse::Isa isa : kvfuse::all_isas())
        std::printf("%-8s %-9s %s\n", kvfuse::isa_name(isa), yes_no(kvfuse::isa_compiled(isa)),
                    yes_no(kvfuse::isa_supported(isa)));
    std::printf("openmp threads: %d\n", omp_get_max_threads());
    kvfuse::Isa active;
    const kvfuse::Status status = kvfuse::active_isa(active);
    if (!status.ok()) {
        std::fprintf(stderr, "kvfuse: error: %s\n", status.message().c_str());
        return 2;
    }
    std::printf("active isa: %s\n", kvfuse::isa_name(active));
    return 0;
}

}  // namespace

void add_info_command(CLI::App& app) {
    CLI::App* cmd = app.add_subcommand("info", "Print compiled ISAs, CPU features and the active ISA");
    cmd->callback([] { g_exit_status = run_info(); });
}

}  // namespace kvfuse::cli
