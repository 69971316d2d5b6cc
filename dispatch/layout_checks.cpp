#include "dispatch/layout_checks.h"

#include <string>

#include "dispatch/api_checks.h"
#include "dispatch/errors.h"

namespace kvfuse::detail {

namespace {

std::string field(const char* prefix, std::size_t index, const char* name) {
    std::string out = index == SIZE_MAX ? std::string() : "segments[" + std::to_string(index) + "].";
    return out + prefix + name;
}

kvfuse_status invalid(const std::string& why) { return fail(KVFUSE_ERROR_INVALID_ARGUMENT, why); }

}  // namespace

kvfuse_status resolve_layout(const char* prefix, std::size_t index, const LayoutFields& f, std::size_t tokens,
                             std::size_t heads, std::size_t head_width, std::size_t element_bytes, KeyLayout& out,
                             LayoutExtent& extent, const char* token_stride_name) {
    auto name = [&](const char* what) { return field(prefix, index, what); };
    if (f.base == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, name("") + " keys are required (the base pointer is NULL)");
    if (reinterpret_cast<std::uintptr_t>(f.base) % element_bytes != 0)
        return invalid("the keys of " + name("*") + " must be aligned to " + std::to_string(element_bytes) +
                       " bytes (their element size)");
    const bool paged = f.block_table != nullptr;
    if (!paged && (f.block_size != 0 || f.block_stride != 0 || f.blocks_total != 0))
        return invalid(name("block_size") + ", " + name("block_stride") + " and " + name("blocks_total") +
                       " are set but " + name("block_table") + " is NULL");
    const std::size_t head_stride = f.head_stride != 0 ? f.head_stride : head_width;
    if (heads > 1 && head_stride < head_width)
        return invalid(name("head_stride") + " (" + std::to_string(head_stride) + ") must be >= head_dim (" +
                       std::to_string(head_width) + " elements)");
    const CheckedSize row_extent = CheckedSize(heads - 1) * head_stride + head_width;
    const CheckedSize default_token_stride = CheckedSize(heads) * head_stride;
    if (!row_extent.fits() || !default_token_stride.fits() || !(row_extent * element_bytes).fits())
        return invalid(name("head_stride") + " (" + std::to_string(head_stride) + ") times heads overflows");
    const std::size_t token_stride = f.token_stride != 0 ? f.token_stride : default_token_stride.value();
    if (paged) {
        if (f.block_size == 0) return invalid(name("block_size") + " must be > 0 with a block table");
        if (f.blocks_total == 0) return invalid(name("blocks_total") + " must be > 0 with a block table");
        if (reinterpret_cast<std::uintptr_t>(f.block_table) % alignof(std::int32_t) != 0)
            return invalid(name("block_table") + " must be aligned to 4 bytes");
    }
    // Rows of one block (or of the whole call) must not overlap: token-major or head-major.
    const std::size_t per_run = paged ? f.block_size : tokens;
    const CheckedSize head_major_need = CheckedSize(per_run - 1) * token_stride + head_width;
    const bool token_major = per_run == 1 || token_stride >= row_extent.value();
    const bool head_major = token_stride >= head_width &&
                            (heads == 1 || (head_major_need.fits() && head_stride >= head_major_need.value()));
    if (!token_major && !head_major)
        return invalid(name(token_stride_name) + " (" + std::to_string(token_stride) + ") and " + name("head_stride") + " (" +
                       std::to_string(head_stride) + ") make rows overlap: token_stride must be >= (heads - 1) * "
                       "head_stride + head_dim (" + std::to_string(row_extent.value()) +
                       "), or head_stride >= (tokens per block - 1) * token_stride + head_dim");
    const CheckedSize run_extent = CheckedSize(per_run - 1) * token_stride + row_extent;
    const CheckedSize last = CheckedSize(f.token_offset) + (tokens - 1);
    if (!last.fits()) return invalid(name("token_offset") + " + tokens overflows");
    out = KeyLayout{};
    out.token_stride = token_stride;
    out.head_stride = head_stride;
    out.token_offset = f.token_offset;
    if (!paged) {
        const CheckedSize end = (last * token_stride + row_extent) * element_bytes;
        if (!end.fits())
            return invalid("the keys of " + name("*") + " ((token_offset + tokens - 1) * token_stride + a row) span more "
                           "bytes than memory can hold");
        extent.begin = f.token_offset * token_stride * element_bytes;  // <= end: no overflow
        extent.end = end.value();
        return KVFUSE_OK;
    }
    if (!run_extent.fits()) return invalid(name("block_size") + " times " + name(token_stride_name) + " overflows");
    const std::size_t block_stride = f.block_stride != 0 ? f.block_stride : (CheckedSize(f.block_size) * token_stride).value();
    if (block_stride < run_extent.value())
        return invalid(name("block_stride") + " (" + std::to_string(block_stride) + ") must hold a whole block (" +
                       std::to_string(run_extent.value()) + " elements): blocks would overlap");
    const CheckedSize pool = (CheckedSize(f.blocks_total - 1) * block_stride + run_extent) * element_bytes;
    if (!pool.fits() || !(CheckedSize(f.block_size) * token_stride).fits())
        return invalid("the pool of " + name("blocks_total") + " (" + std::to_string(f.blocks_total) +
                       ") blocks spans more bytes than memory can hold");
    const std::size_t first_block = f.token_offset / f.block_size, last_block = last.value() / f.block_size;
    // The table holds an entry for every block up to the last one the call reads; a table that
    // long must itself fit in memory before any entry is read.
    if (!((CheckedSize(last_block) + 1) * sizeof(std::int32_t)).fits())
        return invalid(name("block_table") + " would need " + std::to_string(last_block) + " + 1 entries (" +
                       name("token_offset") + " + tokens over " + name("block_size") +
                       "), more than memory can hold");
    for (std::size_t b = first_block; b <= last_block; ++b) {
        const std::int32_t entry = f.block_table[b];
        if (entry < 0 || static_cast<std::size_t>(entry) >= f.blocks_total)
            return invalid(name("block_table") + "[" + std::to_string(b) + "] (" + std::to_string(entry) +
                           ") is not a block of the pool: it must be in [0, " + name("blocks_total") + " = " +
                           std::to_string(f.blocks_total) + ")");
    }
    out.block_table = f.block_table;
    out.block_size = f.block_size;
    out.block_stride = block_stride;
    extent.begin = 0;
    extent.end = pool.value();
    return KVFUSE_OK;
}

bool same_layout(const KeyLayout& a, const KeyLayout& b) {
    return a.token_stride == b.token_stride && a.head_stride == b.head_stride && a.block_table == b.block_table &&
           a.block_size == b.block_size && a.block_stride == b.block_stride && a.token_offset == b.token_offset;
}

}  // namespace kvfuse::detail
