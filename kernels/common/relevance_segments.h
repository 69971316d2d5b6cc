// The candidates of an A3 relevance call as segments (kvfuse_relevance_args::segments): the
// reference and every kernel read keys and queries through this, so a call without segments is
// simply one segment made of the top-level fields. Each segment comes out resolved: the f32
// path's keys in (typed_keys, keys_dtype) whichever field held them, and its key layout's
// defaults filled in (the API layer has checked it, every block table entry included).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {

// Element i of the caller's segment array, stepping by the elements' struct_size (one known
// version, the same in every element: checked by the API layer), the fields past that version
// at their defaults.
inline kvfuse_relevance_segment relevance_segment_at(const kvfuse_relevance_segment* segments, std::size_t i) {
    std::size_t size;
    std::memcpy(&size, segments, sizeof size);
    kvfuse_relevance_segment g;
    kvfuse_relevance_segment_init(&g);
    std::memcpy(static_cast<void*>(&g), reinterpret_cast<const char*>(segments) + i * size, size);
    g.struct_size = sizeof g;
    return g;
}

// The defaults of a segment's keys filled in (see the header comment).
inline void resolve_relevance_keys(kvfuse_relevance_segment& g, std::size_t kv_heads, std::size_t head_dim) {
    if (g.keys_f32 != nullptr) {
        g.typed_keys = g.keys_f32;
        g.keys_dtype = KVFUSE_DTYPE_F32;
    }
    const std::size_t width = g.keys_i4 != nullptr ? (head_dim + 1) / 2 : head_dim;
    if (g.key_head_stride == 0) g.key_head_stride = width;
    if (g.key_token_stride == 0) g.key_token_stride = kv_heads * g.key_head_stride;
    if (g.key_block_table == nullptr) {
        g.key_block_size = 1;
        g.key_block_stride = 0;
    } else if (g.key_block_stride == 0) {
        g.key_block_stride = g.key_block_size * g.key_token_stride;
    }
}

// Element offset of key j (of the segment) of KV head kv in its key array (resolved segment).
inline std::size_t relevance_key_at(const kvfuse_relevance_segment& g, std::size_t j, std::size_t kv) {
    const std::size_t logical = g.key_token_offset + j;
    const std::size_t row = g.key_block_table == nullptr
                                ? logical * g.key_token_stride
                                : static_cast<std::size_t>(g.key_block_table[logical / g.key_block_size]) * g.key_block_stride +
                                      logical % g.key_block_size * g.key_token_stride;
    return row + kv * g.key_head_stride;
}

// The call's top-level fields as one segment, unresolved.
inline kvfuse_relevance_segment top_level_segment(const kvfuse_relevance_args& a) {
    kvfuse_relevance_segment one;
    kvfuse_relevance_segment_init(&one);
    one.keys = a.candidates;
    one.queries_f32 = a.queries_f32;
    one.keys_f32 = a.keys_f32;
    one.queries_i8 = a.queries_i8;
    one.query_scales = a.query_scales;
    one.keys_i8 = a.keys_i8;
    one.keys_i4 = a.keys_i4;
    one.key_scales = a.key_scales;
    one.keys_dtype = a.keys_dtype;
    one.typed_keys = a.keys;
    one.key_token_stride = a.key_token_stride;
    one.key_head_stride = a.key_head_stride;
    one.key_block_table = a.key_block_table;
    one.key_block_size = a.key_block_size;
    one.key_block_stride = a.key_block_stride;
    one.key_blocks_total = a.key_blocks_total;
    one.key_token_offset = a.key_token_offset;
    return one;
}

// The non-empty segments of a call (1 without segments): what split_relevance_segments writes.
inline std::size_t count_relevance_segments(const kvfuse_relevance_args& a) {
    if (a.segment_count == 0) return 1;
    std::size_t count = 0;
    for (std::size_t i = 0; i < a.segment_count; ++i) count += relevance_segment_at(a.segments, i).keys > 0;
    return count;
}

// Writes the segments, resolved, to list[0, count) and where each starts to starts[0, count]
// (count as count_relevance_segments says), into storage the caller owns (a kernel's scratch).
inline void split_relevance_segments(const kvfuse_relevance_args& a, kvfuse_relevance_segment* list,
                                     std::size_t* starts) {
    std::size_t count = 0;
    if (a.segment_count == 0) {
        list[count++] = top_level_segment(a);
    } else {
        // Empty segments hold nothing to read (their pointers may be null): dropped.
        for (std::size_t i = 0; i < a.segment_count; ++i) {
            const kvfuse_relevance_segment g = relevance_segment_at(a.segments, i);
            if (g.keys > 0) list[count++] = g;
        }
    }
    starts[0] = 0;
    for (std::size_t i = 0; i < count; ++i) {
        resolve_relevance_keys(list[i], a.kv_heads, a.head_dim);
        starts[i + 1] = starts[i] + list[i].keys;
    }
}

// The index of the segment holding candidate j, of `count` segments starting at starts[].
inline std::size_t relevance_segment_of(const std::size_t* starts, std::size_t count, std::size_t j) {
    return static_cast<std::size_t>(std::upper_bound(starts + 1, starts + count + 1, j) - (starts + 1));
}

// The same in vectors (the reference).
struct RelevanceSegments {
    std::vector<kvfuse_relevance_segment> list;  // the non-empty segments, in order, resolved
    std::vector<std::size_t> starts;  // list.size() + 1 entries: segment i covers [starts[i], starts[i + 1])

    explicit RelevanceSegments(const kvfuse_relevance_args& a)
        : list(count_relevance_segments(a)), starts(list.size() + 1) {
        split_relevance_segments(a, list.data(), starts.data());
    }

    // The index in `list` of the segment holding candidate j.
    std::size_t of(std::size_t j) const { return relevance_segment_of(starts.data(), list.size(), j); }
};

}  // namespace kvfuse::detail
