/* Calls of the C API with enum arguments given as plain ints (see c_api_calls.c). */
#ifndef KVFUSE_FUZZ_C_API_CALLS_H
#define KVFUSE_FUZZ_C_API_CALLS_H

#include "kvfuse/kvfuse.h"

#ifdef __cplusplus
extern "C" {
#endif

/* variant 0: rotate, 1: rotate_span, 2: rotate_copy, 3: rotate_span_copy (in place: src only). */
kvfuse_status call_rope(int variant, const kvfuse_rope_config* config, int dtype, void* src, size_t src_stride,
                        void* dst, size_t dst_stride, size_t tokens, size_t heads, const int64_t* deltas,
                        int64_t delta);
void set_rope_enums(kvfuse_rope_config* config, int pairing, int scaling);
void set_attention_dtype(kvfuse_attention_args* args, int dtype);
void set_rope_args_dtype(kvfuse_rope_args* args, int dtype);
void set_rope_args_src_dtype(kvfuse_rope_args* args, int dtype);
kvfuse_status call_gather(int dtype, const void* src, size_t src_rows, size_t src_stride, const int64_t* rows,
                          size_t count, void* dst, size_t dst_stride, size_t row_elements);
kvfuse_status call_scatter(int dtype, const void* src, size_t src_stride, const int64_t* rows, size_t count,
                           void* dst, size_t dst_rows, size_t dst_stride, size_t row_elements);
kvfuse_status call_topk(const float* scores, size_t n, size_t k, int order, int64_t* indices, size_t* count);
kvfuse_status call_topk_batched(const float* scores, size_t rows, size_t n, size_t row_stride, size_t k, int order,
                                int64_t* indices, size_t indices_stride);
int call_isa_queries(int isa);

#ifdef __cplusplus
}
#endif

#endif
