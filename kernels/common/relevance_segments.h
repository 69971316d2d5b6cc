// The candidates of an A3 relevance call as segments (kvfuse_relevance_args::segments): the
// reference and every kernel read keys and queries through this, so a call without segments is
// simply one segment made of the top-level fields.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {

// The non-empty segments of a call (1 without segments): what split_relevance_segments writes.
inline std::size_t count_relevance_segments(const kvfuse_relevance_args& a) {
    if (a.segment_count == 0) return 1;
    std::size_t count = 0;
    for (std::size_t i = 0; i < a.segment_count; ++i) count += a.segments[i].keys > 0;
    return count;
}

// Writes the segments to list[0, count) and where each starts to starts[0, count] (count as
// count_relevance_segments says), into storage the caller owns (a kernel's scratch).
inline void split_relevance_segments(const kvfuse_relevance_args& a, kvfuse_relevance_segment* list,
                                     std::size_t* starts) {
    std::size_t count = 0;
    if (a.segment_count == 0) {
        kvfuse_relevance_segment one{};
        one.keys = a.candidates;
        one.queries_f32 = a.queries_f32;
        one.keys_f32 = a.keys_f32;
        one.queries_i8 = a.queries_i8;
        one.query_scales = a.query_scales;
        one.keys_i8 = a.keys_i8;
        one.keys_i4 = a.keys_i4;
        one.key_scales = a.key_scales;
        list[count++] = one;
    } else {
        // Empty segments hold nothing to read (their pointers may be null): dropped.
        for (std::size_t i = 0; i < a.segment_count; ++i)
            if (a.segments[i].keys > 0) list[count++] = a.segments[i];
    }
    starts[0] = 0;
    for (std::size_t i = 0; i < count; ++i) starts[i + 1] = starts[i] + list[i].keys;
}

// The index of the segment holding candidate j, of `count` segments starting at starts[].
inline std::size_t relevance_segment_of(const std::size_t* starts, std::size_t count, std::size_t j) {
    return static_cast<std::size_t>(std::upper_bound(starts + 1, starts + count + 1, j) - (starts + 1));
}

struct RelevanceSegments {
    std::vector<kvfuse_relevance_segment> list;  // the non-empty segments, in order
    std::vector<std::size_t> starts;  // list.size() + 1 entries: segment i covers [starts[i], starts[i + 1])

    explicit RelevanceSegments(const kvfuse_relevance_args& a) {
        if (a.segment_count == 0) {
            kvfuse_relevance_segment one{};
            one.keys = a.candidates;
            one.queries_f32 = a.queries_f32;
            one.keys_f32 = a.keys_f32;
            one.queries_i8 = a.queries_i8;
            one.query_scales = a.query_scales;
            one.keys_i8 = a.keys_i8;
            one.keys_i4 = a.keys_i4;
            one.key_scales = a.key_scales;
            list.push_back(one);
        } else {
            // Empty segments hold nothing to read (their pointers may be null): dropped.
            for (std::size_t i = 0; i < a.segment_count; ++i)
                if (a.segments[i].keys > 0) list.push_back(a.segments[i]);
        }
        starts.push_back(0);
        for (const auto& segment : list) starts.push_back(starts.back() + segment.keys);
    }

    // The index in `list` of the segment holding candidate j.
    std::size_t of(std::size_t j) const {
        return static_cast<std::size_t>(std::upper_bound(starts.begin() + 1, starts.end(), j) - (starts.begin() + 1));
    }
};

}  // namespace kvfuse::detail
