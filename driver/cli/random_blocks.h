// Quantized blocks drawn directly from a seeded counter stream, for `make-model --random-codes`:
// valid Q4_K / Q6_K blocks whose codes are uniform and whose scales give the weights a chosen
// deviation around zero. Quantizing normal f32 weights with the type table's quantizers fits
// every sub-block's scale by a least-squares search (~40 divisions and roundings a weight), which
// writes an 8B model at a few MB/s; drawing the blocks costs one 64-bit hash per 8 bytes, so the
// file is written as fast as the disk takes it. The weights are then uniform per sub-block, not
// normal: no matter for a random model, which only needs the shape, the file format and finite
// activations.
#pragma once

#include <cstddef>
#include <cstdint>

#include "model/gguf_types.h"

namespace kvfuse::cli {

// splitmix64's finalizer: position i of a counter stream (the generator of every random value
// make-model writes, so the same seed gives the same file on every platform and thread count).
inline std::uint64_t mix64(std::uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// Whether draw_blocks can write this type.
bool can_draw_blocks(kvfuse::model::GgmlType type);

// Blocks [first_block, first_block + blocks) of the tensor whose stream is `stream`, into `out`
// (blocks x the type's block bytes). Every weight has mean 0 (Q4_K exactly per sub-block; Q6_K
// per sub-block up to half a code step, its sign random) and the root mean square `stddev` over
// the tensor (up to the half-precision rounding of the super-scale). Requires can_draw_blocks.
void draw_blocks(kvfuse::model::GgmlType type, std::uint64_t stream, std::uint64_t first_block, std::size_t blocks,
                 float stddev, std::uint8_t* out);

}  // namespace kvfuse::cli
