/* The C API fuzz target's calls, made from C: a C caller may pass any int as an enum (kvfuse.h
 * promises every int is in range and reported), which a C++ caller cannot do without undefined
 * behaviour of its own. The harness (fuzz_c_api.cpp) passes plain ints here. */
#include "c_api_calls.h"

kvfuse_status call_rope(int variant, const kvfuse_rope_config* config, int dtype, void* src, size_t src_stride,
                        void* dst, size_t dst_stride, size_t tokens, size_t heads, const int64_t* deltas,
                        int64_t delta) {
    const kvfuse_dtype d = (kvfuse_dtype)dtype;
    switch (variant) {
        case 0: return kvfuse_rope_rotate(config, d, src, tokens, heads, src_stride, deltas);
        case 1: return kvfuse_rope_rotate_span(config, d, src, tokens, heads, src_stride, delta);
        case 2: return kvfuse_rope_rotate_copy(config, d, src, src_stride, dst, dst_stride, tokens, heads, deltas);
        default: return kvfuse_rope_rotate_span_copy(config, d, src, src_stride, dst, dst_stride, tokens, heads, delta);
    }
}

void set_rope_enums(kvfuse_rope_config* config, int pairing, int scaling) {
    config->pairing = (kvfuse_rope_pairing)pairing;
    config->scaling = (kvfuse_rope_scaling)scaling;
}

void set_attention_dtype(kvfuse_attention_args* args, int dtype) { args->kv_dtype = (kvfuse_dtype)dtype; }

void set_rope_args_dtype(kvfuse_rope_args* args, int dtype) { args->dtype = (kvfuse_dtype)dtype; }
void set_rope_args_src_dtype(kvfuse_rope_args* args, int dtype) { args->src_dtype = (kvfuse_dtype)dtype; }

kvfuse_status call_gather(int dtype, const void* src, size_t src_rows, size_t src_stride, const int64_t* rows,
                          size_t count, void* dst, size_t dst_stride, size_t row_elements) {
    return kvfuse_gather_rows((kvfuse_dtype)dtype, src, src_rows, src_stride, rows, count, dst, dst_stride,
                              row_elements);
}

kvfuse_status call_scatter(int dtype, const void* src, size_t src_stride, const int64_t* rows, size_t count,
                           void* dst, size_t dst_rows, size_t dst_stride, size_t row_elements) {
    return kvfuse_scatter_rows((kvfuse_dtype)dtype, src, src_stride, rows, count, dst, dst_rows, dst_stride,
                               row_elements);
}

kvfuse_status call_topk(const float* scores, size_t n, size_t k, int order, int64_t* indices, size_t* count) {
    return kvfuse_topk(scores, n, k, (kvfuse_topk_order)order, indices, count);
}

kvfuse_status call_topk_batched(const float* scores, size_t rows, size_t n, size_t row_stride, size_t k, int order,
                                int64_t* indices, size_t indices_stride) {
    return kvfuse_topk_batched(scores, rows, n, row_stride, k, (kvfuse_topk_order)order, indices, indices_stride);
}

int call_isa_queries(int isa) {
    kvfuse_isa parsed;
    int sum = kvfuse_isa_compiled((kvfuse_isa)isa) + kvfuse_isa_supported((kvfuse_isa)isa);
    sum += kvfuse_isa_name((kvfuse_isa)isa)[0];
    sum += kvfuse_status_message((kvfuse_status)isa)[0];
    if (kvfuse_isa_from_name(kvfuse_isa_name((kvfuse_isa)isa), &parsed) == KVFUSE_OK) sum += (int)parsed;
    return sum;
}
