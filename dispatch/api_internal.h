// Entry points that other entry points run as steps, with an argument the C API has no form
// for: kvfuse_ctx_select_rows quantizes a segment's keys where its layout puts them (strided
// heads, a paged block table) with the same kernel as kvfuse_quantize_keys_i8 / _i4, without a
// packed copy first.
#pragma once

#include <cstddef>

#include "kernels/common/key_layout.h"
#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {

// kvfuse_ctx_quantize_keys_i8 (bits 8) / _i4 (bits 4) of keys of `dtype` at `layout` (already
// resolved and checked by layout_checks: every block table entry the call reads included), into
// out / scales / means laid out as those calls write them. Runs as a ContextCall on `context`
// (a step of a call that holds it lends it first, LendContext).
kvfuse_status quantize_keys_in_layout(kvfuse_context& context, kvfuse_dtype dtype, const void* keys, std::size_t tokens,
                                      std::size_t kv_heads, std::size_t head_dim, const KeyLayout& layout, int bits,
                                      void* out, float* scales, float* means);

}  // namespace kvfuse::detail
