// Random-weight GGUF models of llama shape, so that timing and end-to-end tests never depend on
// downloads. The file holds everything the driver's loader reads: llama architecture keys, a
// synthetic SentencePiece vocabulary, and weights drawn from a seeded normal distribution.
#pragma once

#include <cstdint>
#include <string>

namespace kvfuse::cli {

struct RandomModelSpec {
    int dim = 1024;
    int layers = 16;
    int heads = 16;
    int kv_heads = 4;
    int head_dim = 0;  // 0: dim / heads (the loader derives it that way, so it must match)
    int hidden = 2816;
    int vocab = 32000;
    int context = 32768;  // above 16K, so an end-to-end sweep to 16K tokens plus a question fits
    double rope_base = 10000.0;
    std::string dtype = "f32";  // matrices in any type kvfuse reads ("f32", "bf16", "q4_k", ...); norms are always f32
    std::uint64_t seed = 1;
};

// Throws std::invalid_argument naming the first inconsistent or out-of-range setting.
void validate(const RandomModelSpec& spec);

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
