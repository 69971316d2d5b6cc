// kvfuse: inspect the kernels and run the fusion pipeline from the command line.
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "kvfuse/kvfuse.hpp"
#include "tuning/tuner.h"

namespace kvfuse::cli {
int g_exit_status = 0;
}

int main(int argc, char** argv) {
    CLI::App app{"kvfuse " + kvfuse::version() + ": SIMD kernels for LLM KV-cache fusion"};
    app.require_subcommand(1);
    kvfuse::cli::add_info_command(app);
    kvfuse::cli::add_rope_demo_command(app);
    kvfuse::cli::add_run_command(app);
    kvfuse::cli::add_eval_command(app);
    kvfuse::cli::add_score_accuracy_command(app);
    kvfuse::cli::add_generate_command(app);
    kvfuse::cli::add_perplexity_command(app);
    kvfuse::cli::add_tune_command(app);
    kvfuse::cli::add_make_model_command(app);
    kvfuse::cli::add_tokenize_command(app);
    kvfuse::cli::add_serve_command(app);
    // This machine's tuning profile (`kvfuse tune` writes it), unless KVFUSE_PROFILE names one.
    if (const std::string why = kvfuse::tuner::load_machine_profile(); !why.empty())
        std::fprintf(stderr, "kvfuse: warning: %s\n", why.c_str());
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "kvfuse: error: %s\n", e.what());
        return 1;
    }
    return kvfuse::cli::g_exit_status;
}
