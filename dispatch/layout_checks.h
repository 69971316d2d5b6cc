// Checks and resolves the key layouts of the C API (kvfuse.h, "RoPE on strided and paged
// caches"): the strides' defaults, rows that would overlap, the block table's every entry the
// call reads, the tensor's extent. Allocates nothing unless it fails (contexts stay
// allocation-free after warm-up).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/common/key_layout.h"
#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {

// One side of a call as the caller wrote it (any field 0 / NULL: its default).
struct LayoutFields {
    const void* base = nullptr;
    std::size_t token_stride = 0, head_stride = 0;
    const std::int32_t* block_table = nullptr;
    std::size_t block_size = 0, block_stride = 0, blocks_total = 0, token_offset = 0;
};

// Bytes from the base that a call may touch: [begin, end).
struct LayoutExtent {
    std::size_t begin = 0, end = 0;
};

// Resolves `f` for `tokens` tokens of `heads` heads of `head_width` elements of `element_bytes`
// into `out`, checking it. Errors name the fields `<prefix><field>` (prefix "dst_", "key_"...),
// for segments `segments[<index>].<prefix><field>` (index SIZE_MAX: none); the token stride is
// `<prefix><token_stride_name>` (kvfuse_select_segment calls it key_row_stride). tokens > 0,
// heads > 0.
kvfuse_status resolve_layout(const char* prefix, std::size_t index, const LayoutFields& f, std::size_t tokens,
                             std::size_t heads, std::size_t head_width, std::size_t element_bytes, KeyLayout& out,
                             LayoutExtent& extent, const char* token_stride_name = "token_stride");

// True when the two resolved layouts address every token's heads at the same places.
bool same_layout(const KeyLayout& a, const KeyLayout& b);

}  // namespace kvfuse::detail
