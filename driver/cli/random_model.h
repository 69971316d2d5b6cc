// Random-weight GGUF models of llama, qwen2 or qwen3 shape, so that timing and end-to-end tests
// never depend on downloads. The file holds everything the driver's loader reads: architecture keys, a
// synthetic SentencePiece vocabulary, and weights drawn from a seeded normal distribution.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvfuse::cli {

struct RandomModelSpec {
    int dim = 1024;
    int layers = 16;
    int heads = 16;
    int kv_heads = 4;
    std::string arch = "llama";  // llama, qwen2 (Q/K/V biases, NeoX RoPE) or qwen3 (per-head Q/K RMSNorm, NeoX RoPE)
    int head_dim = 0;  // 0: dim / heads; any other even size is written as attention.key_length
    int hidden = 2816;
    int vocab = 32000;
    int context = 32768;  // above 16K, so an end-to-end sweep to 16K tokens plus a question fits
    double rope_base = 10000.0;
    // Llama 3.1's RoPE scaling as a rope_freqs.weight tensor (factor 8, low 1, high 4, original
    // context 8192: the values llama.cpp's converter writes for Llama 3.1).
    bool rope_freqs = false;
    // "", or a family of model/chat_template.h (llama3, chatml, mistral, phi3, gemma): a
    // tokenizer.chat_template of that family and its markers as control tokens (the last ids).
    std::string chat_template;
    std::string dtype = "f32";  // matrices in any type kvfuse reads ("f32", "bf16", "q4_k", ...); norms are always f32
    std::uint64_t seed = 1;
    // Quantized matrices drawn as random blocks (cli/random_blocks.h: uniform codes, scales giving
    // the same deviation) instead of the seed's normal weights run through the type table's
    // quantizer: an 8B Q4_K_M file in the time the disk takes to write it. q4_k, q6_k, q4_k_m.
    bool random_codes = false;
};

// Throws std::invalid_argument naming the first inconsistent or out-of-range setting.
void validate(const RandomModelSpec& spec);

// The head size the spec gives (head_dim, or dim / heads).
int head_size(const RandomModelSpec& spec);

// Llama 3.1's per-pair RoPE divisors for `rotary_dims` rotary dims and this base (what
// --rope-freqs writes as rope_freqs.weight).
std::vector<float> llama31_rope_freqs(int rotary_dims, double base);

struct RandomModelInfo {
    std::uint64_t parameters = 0;
    std::uint64_t bytes = 0;  // file size
};

// Writes the model to `path` through a temporary file in the same directory, renamed into
// place only when complete, so `path` never holds a half-written model. Refuses to replace an
// existing file unless `replace`. Throws std::invalid_argument (bad spec) or
// std::runtime_error (I/O, naming the file and the system error).
RandomModelInfo write_random_model(const RandomModelSpec& spec, const std::string& path, bool replace);

}  // namespace kvfuse::cli
