// `kvfuse make-model`: writes a random-weight GGUF model (llama, qwen2 or qwen3) (cli/random_model.h),
// so benchmarks and end-to-end tests need no download.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "cli/random_model.h"

namespace kvfuse::cli {

namespace {

struct MakeModelOptions {
    RandomModelSpec spec;
    std::string out;
    bool force = false;
};

int run(const MakeModelOptions& o) {
    const RandomModelInfo info = write_random_model(o.spec, o.out, o.force);
    const int head_dim = head_size(o.spec);
    std::printf("%s: %s, %d layers, dim %d, %d heads (%d KV, head dim %d), ffn %d, vocab %d, context %d, %s, "
                "seed %llu%s: %.1f M parameters, %.1f MiB\n",
                o.out.c_str(), o.spec.arch.c_str(), o.spec.layers, o.spec.dim, o.spec.heads, o.spec.kv_heads, head_dim, o.spec.hidden,
                o.spec.vocab, o.spec.context, o.spec.dtype.c_str(), static_cast<unsigned long long>(o.spec.seed),
                o.spec.random_codes ? ", random codes" : "", static_cast<double>(info.parameters) / 1e6, static_cast<double>(info.bytes) / (1024.0 * 1024.0));
    return 0;
}

}  // namespace

void add_make_model_command(CLI::App& app) {
    auto o = std::make_shared<MakeModelOptions>();
    CLI::App* cmd = app.add_subcommand("make-model", "Write a random-weight llama, qwen2 or qwen3 GGUF model (for benchmarks and tests)");
    cmd->add_option("--out", o->out, "file to write (through a temporary file renamed into place)")->required();
    cmd->add_option("--dim", o->spec.dim, "hidden size")->capture_default_str();
    cmd->add_option("--layers", o->spec.layers, "transformer blocks")->capture_default_str();
    cmd->add_option("--heads", o->spec.heads, "query heads")->capture_default_str();
    cmd->add_option("--kv-heads", o->spec.kv_heads, "key/value heads (grouped-query attention)")->capture_default_str();
    cmd->add_option("--arch", o->spec.arch, "architecture: llama, qwen2 (Q/K/V biases) or qwen3 (per-head Q/K RMSNorm)")
        ->capture_default_str();
    cmd->add_option("--head-dim", o->spec.head_dim,
                    "head size, written as attention.key_length (default: dim / heads; Qwen3 and Mistral-Nemo differ)");
    cmd->add_option("--hidden", o->spec.hidden, "feed-forward size")->capture_default_str();
    cmd->add_option("--vocab", o->spec.vocab, "vocabulary size (at least 259)")->capture_default_str();
    cmd->add_option("--context", o->spec.context, "context length")->capture_default_str();
    cmd->add_option("--rope-base", o->spec.rope_base, "RoPE frequency base")->capture_default_str();
    cmd->add_flag("--rope-freqs", o->spec.rope_freqs,
                  "Llama 3.1 RoPE scaling as a rope_freqs.weight tensor (factor 8, low 1, high 4, original context 8192)");
    cmd->add_option("--chat-template", o->spec.chat_template,
                    "a tokenizer.chat_template of this family (llama3, chatml, mistral, phi3, gemma), its markers as control tokens");
    cmd->add_option("--dtype", o->spec.dtype, "matrix storage: any type kvfuse reads (f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k ... q6_k, iq4_nl, iq4_xs, or q4_k_m: llama.cpp's mix of q4_k and q6_k; quantized by kvfuse's own quantizers); norms stay f32")->capture_default_str();
    cmd->add_flag("--random-codes", o->spec.random_codes,
                  "q4_k, q6_k, q4_k_m: draw the quantized blocks' codes and scales directly (uniform weights of the same "
                  "deviation, a valid file of the type) instead of quantizing normal weights; fast enough for 8B shapes");
    cmd->add_option("--seed", o->spec.seed, "seed of the weights (same seed, same file)")->check(CLI::NonNegativeNumber)->capture_default_str();
    cmd->add_flag("--force", o->force, "replace an existing file");
    cmd->callback([o] { g_exit_status = run(*o); });
}

}  // namespace kvfuse::cli
