// kvfuse_ctx_select_rows's working memory, kept in its execution context (dispatch/context.h)
// so that a call at a shape it has run before allocates nothing: every buffer is a vector that
// is resized, never shrunk (a resize within its capacity does not allocate). Plain data only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {

// One segment's keys in the form the precision reads: f32 / bf16 / f16 in place with their
// layout (the f32 path reads it), or int8 / int4 with scales and means (stored, or quantized by
// the call into SelectScratch's buffers).
struct SelectSegmentKeys {
    const void* typed = nullptr;
    kvfuse_dtype dtype = KVFUSE_DTYPE_F32;
    const std::int8_t* i8 = nullptr;
    const std::uint8_t* i4 = nullptr;
    const float* scales = nullptr;
    const float* means = nullptr;
};

struct SelectScratch {
    std::vector<kvfuse_select_segment> segments;   // the caller's, at this header's version
    std::vector<SelectSegmentKeys> keys;
    std::vector<kvfuse_relevance_segment> relevance;
    std::vector<float> queries;                    // per segment, M x H x D in its frame
    std::vector<std::int8_t> queries_i8;
    std::vector<float> query_scales, bias, scores;
    // Keys the call quantizes, all segments one after another, and their scales and means.
    std::vector<std::int8_t> keys_i8;
    std::vector<std::uint8_t> keys_i4;
    std::vector<float> key_scales, key_means;
};

}  // namespace kvfuse::detail
