// The A3 fields of a kvfuse_select_args, filled one way for the tests and the benchmarks that
// call row selection (test_select, test_context, bench_select): method A3, smoothing on, the
// request's shape, its question queries, key precision, RoPE and segments. Output fields (rows,
// row_count, scores) stay the caller's.
#pragma once

#include <cstddef>
#include <vector>

#include "kvfuse/kvfuse.h"

namespace kvfuse::testing {

struct A3SelectShape {
    std::size_t prefix_rows = 0, documents = 0, question_rows = 0;
    std::size_t query_heads = 0, kv_heads = 0, head_dim = 0;
    double ratio = 0.0;
};

inline kvfuse_select_args a3_select_args(const A3SelectShape& shape, const float* queries, kvfuse_key_precision precision,
                                         const kvfuse_rope_config* rope,
                                         const std::vector<kvfuse_select_segment>& segments) {
    kvfuse_select_args a;
    kvfuse_select_args_init(&a);
    a.method = KVFUSE_SELECT_A3;
    a.prefix_rows = shape.prefix_rows;
    a.documents = shape.documents;
    a.question_rows = shape.question_rows;
    a.ratio = shape.ratio;
    a.query_heads = shape.query_heads;
    a.kv_heads = shape.kv_heads;
    a.head_dim = shape.head_dim;
    a.queries = queries;
    a.key_precision = precision;
    a.smoothing = 1;
    a.rope = rope;
    a.segment_count = segments.size();
    a.segments = segments.data();
    return a;
}

}  // namespace kvfuse::testing
