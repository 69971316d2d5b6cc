// The engine's KV cache: per layer one pool of f16 key blocks and one of value blocks, laid out
// as vLLM's flash layout key_cache[num_blocks, block_size, kv_heads, head_dim], and a block
// allocator that hands blocks out in the order they were freed (a FIFO ring, shuffled at start),
// so a sequence's blocks are scattered over the pool as in a real engine. Nothing allocates
// after construction.
//
// KvView is one layer's K or V of one sequence as kvfuse reads it: paged (a block table) or, for
// the example's own checks, a contiguous [tokens, kv_heads, head_dim] array.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include <kvfuse/kvfuse.h>

struct KvView {
    std::uint16_t* base = nullptr;       // the pool (paged) or token 0 (contiguous)
    const std::int32_t* table = nullptr; // NULL: contiguous
    std::size_t block_size = 0, blocks_total = 0;
    std::size_t token_elements = 0;      // kv_heads * head_dim: the token stride
    std::size_t cells_total = 0;         // token rows at base: the pool's (paged) or the array's

    // The row `token` is, counted in rows from base (llama.cpp's cell of the token).
    std::size_t cell(std::size_t token) const {
        if (table == nullptr) return token;
        return static_cast<std::size_t>(table[token / block_size]) * block_size + token % block_size;
    }
    std::uint16_t* row(std::size_t token) const { return base + cell(token) * token_elements; }

    // Where kvfuse_rope_rotate_layout writes rows that are not consecutive tokens (fresh rows at
    // scattered positions): the call's token t goes to row cells[t], a per-token table of block
    // size 1 over every row at base, as llama.cpp's cells are described.
    void describe_rope_dst_cells(kvfuse_rope_args& args, const std::int32_t* cells) const {
        args.dst = base;
        args.dst_token_stride = token_elements;
        args.dst_block_table = cells;
        args.dst_block_size = 1;
        args.dst_blocks_total = cells_total;
    }

    // Where kvfuse_select_rows reads a segment's keys: f16 in place, from token `first` on.
    void describe_select_keys(kvfuse_select_segment& segment, std::size_t first) const {
        segment.keys_dtype = KVFUSE_DTYPE_F16;
        segment.keys = base;
        segment.key_row_stride = token_elements;
        segment.key_block_table = table;
        segment.key_block_size = table != nullptr ? block_size : 0;
        segment.key_blocks_total = table != nullptr ? blocks_total : 0;
        segment.key_token_offset = first;
    }

    // Where kvfuse_rope_rotate_layout writes (its dst side).
    void describe_rope_dst(kvfuse_rope_args& args) const {
        args.dst = base;
        args.dst_token_stride = token_elements;
        args.dst_block_table = table;
        args.dst_block_size = table != nullptr ? block_size : 0;
        args.dst_blocks_total = table != nullptr ? blocks_total : 0;
    }
};

// Sets the K/V fields of an attention call (kvfuse_attention_args V2) from two views of the
// same shape.
inline void describe_attention_kv(kvfuse_attention_args& args, const KvView& keys, const KvView& values) {
    args.keys = keys.base;
    args.values = values.base;
    args.kv_dtype = KVFUSE_DTYPE_F16;
    args.kv_token_stride = keys.token_elements;
    args.kv_block_table = keys.table;
    args.kv_block_size = keys.table != nullptr ? keys.block_size : 0;
    args.kv_blocks_total = keys.table != nullptr ? keys.blocks_total : 0;
}

class PagedKvCache {
public:
    PagedKvCache(std::size_t layers, std::size_t blocks, std::size_t block_size, std::size_t token_elements,
                 std::uint64_t shuffle_seed)
        : blocks_(blocks), block_size_(block_size), token_elements_(token_elements),
          keys_(layers * blocks * block_size * token_elements), values_(keys_.size()), free_ring_(blocks) {
        for (std::size_t b = 0; b < blocks; ++b) free_ring_[b] = static_cast<std::int32_t>(b);
        std::mt19937_64 generator(shuffle_seed);
        std::shuffle(free_ring_.begin(), free_ring_.end(), generator);
        free_count_ = blocks;
    }

    std::size_t block_size() const { return block_size_; }
    std::size_t blocks_for(std::size_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }

    // Takes `count` free blocks into table[0..count); false (nothing taken) if too few are free.
    bool allocate(std::size_t count, std::int32_t* table) {
        if (count > free_count_) return false;
        for (std::size_t i = 0; i < count; ++i) {
            table[i] = free_ring_[free_head_];
            free_head_ = (free_head_ + 1) % blocks_;
        }
        free_count_ -= count;
        return true;
    }
    void release(const std::int32_t* table, std::size_t count) {
        for (std::size_t i = 0; i < count; ++i) free_ring_[(free_head_ + free_count_ + i) % blocks_] = table[i];
        free_count_ += count;
    }

    KvView keys(std::size_t layer, const std::int32_t* table) { return view(keys_, layer, table); }
    KvView values(std::size_t layer, const std::int32_t* table) { return view(values_, layer, table); }

private:
    KvView view(std::vector<std::uint16_t>& pool, std::size_t layer, const std::int32_t* table) {
        KvView v;
        v.base = pool.data() + layer * blocks_ * block_size_ * token_elements_;
        v.table = table;
        v.block_size = block_size_;
        v.blocks_total = blocks_;
        v.token_elements = token_elements_;
        v.cells_total = blocks_ * block_size_;
        return v;
    }

    std::size_t blocks_, block_size_, token_elements_;
    std::vector<std::uint16_t> keys_, values_;
    std::vector<std::int32_t> free_ring_;
    std::size_t free_head_ = 0, free_count_ = 0;
};
