// Subcommands of the `kvfuse` program. Each adds itself to the app and returns the exit status
// through the callback it installs.
#pragma once

#include <CLI/CLI.hpp>

namespace kvfuse::cli {

// Set by a subcommand's callback; main() returns it.
extern int g_exit_status;

void add_info_command(CLI::App& app);
void add_rope_demo_command(CLI::App& app);
void add_run_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_score_accuracy_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_perplexity_command(CLI::App& app);
void add_tune_command(CLI::App& app);
void add_make_model_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_serve_command(CLI::App& app);

}  // namespace kvfuse::cli
