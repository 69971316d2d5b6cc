// Where the rows of a key tensor are: strides per token and per head, and the paged form (a
// block table), as kvfuse.h's "RoPE on strided and paged caches" describes them. The API layer
// resolves every default (no zero stride reaches a kernel) and checks every table entry the call
// reads before a kernel runs; kernels, the scalar ISA and the reference compute addresses here.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvfuse::detail {

struct KeyLayout {
    std::size_t token_stride = 0;  // elements
    std::size_t head_stride = 0;
    const std::int32_t* block_table = nullptr;  // null: not paged
    std::size_t block_size = 1;
    std::size_t block_stride = 0;
    std::size_t token_offset = 0;

    // Element offset of the call's token t (its first head) from the tensor's base.
    std::size_t row(std::size_t t) const {
        const std::size_t logical = token_offset + t;
        if (block_table == nullptr) return logical * token_stride;
        return static_cast<std::size_t>(block_table[logical / block_size]) * block_stride +
               logical % block_size * token_stride;
    }
    std::size_t at(std::size_t t, std::size_t head) const { return row(t) + head * head_stride; }
    // A plain token-major tensor: what the calls without a layout read.
    static KeyLayout packed(std::size_t token_stride, std::size_t head_dim) {
        KeyLayout l;
        l.token_stride = token_stride;
        l.head_stride = head_dim;
        return l;
    }
};

}  // namespace kvfuse::detail
