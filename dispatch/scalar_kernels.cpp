#include "dispatch/scalar_kernels.h"

#include <vector>

#include "kernels/common/bf16.h"
#include "kernels/gemm/gemm_packed.h"
#include "kernels/rope/rope_plan.h"
#include "reference/attention_reference.h"
#include "reference/f16_reference.h"
#include "reference/gemm_reference.h"
#include "reference/rope_reference.h"
#include "reference/score_reference.h"
#include "reference/topk_reference.h"

namespace kvfuse::detail {

namespace {

// The scalar ISA is the reference: one thread, its own allocations; the context is not used.
void rope_rotate_scalar(kvfuse_context& /*context*/, const RopePlan& plan, kvfuse_dtype dtype, kvfuse_dtype src_dtype,
                        const void* src, const KeyLayout& src_layout, void* dst, const KeyLayout& dst_layout,
                        std::size_t tokens, std::size_t heads, const std::int64_t* deltas, std::int64_t delta) {
    reference::rope_rotate(plan.config, dtype, src_dtype, src, src_layout, dst, dst_layout, tokens, heads, deltas, delta);
}

void sparse_attention_scalar(kvfuse_context& /*context*/, const kvfuse_attention_args& args) {
    reference::sparse_attention(args);
}

void topk_scalar(const float* scores, std::size_t n, std::size_t k, kvfuse_topk_order order, std::int64_t* indices,
                 TopkScratch& /*scratch*/, std::size_t /*sample*/) {
    reference::topk(scores, n, k, order, indices);
}

void relevance_scalar(kvfuse_context& /*context*/, const kvfuse_relevance_args& args) { reference::a3_relevance(args); }

void quantize_keys_scalar(kvfuse_context& /*context*/, kvfuse_dtype dtype, const void* keys, std::size_t tokens,
                          std::size_t heads, std::size_t head_dim, const KeyLayout& layout, int bits, void* out,
                          float* scales, float* means) {
    reference::quantize_keys(dtype, keys, tokens, heads, head_dim, layout, bits, out, scales, means);
}

void quantize_rows_scalar(kvfuse_context& /*context*/, kvfuse_dtype dtype, const void* x, std::size_t rows,
                          std::size_t heads, std::size_t head_dim, std::size_t row_stride, std::int8_t* out,
                          float* scales) {
    reference::quantize_rows_i8(dtype, x, rows, heads, head_dim, row_stride, out, scales);
}

void f32_to_f16_scalar(const float* src, std::uint16_t* dst, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) dst[i] = reference::f32_to_f16(src[i]);
}

void f16_to_f32_scalar(const std::uint16_t* src, float* dst, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) dst[i] = reference::f16_to_f32(src[i]);
}

// The reference reads plain rows: each row of W is unpacked in turn (exactly) and gives one
// column of C.
void gemm_scalar(kvfuse_context& /*context*/, const kvfuse_packed_weights& packed, const float* a, std::size_t n,
                 std::size_t lda, float beta, float* c, std::size_t ldc, std::size_t /*workers*/) {
    const PackedWeightsData& w = packed.weights;
    std::vector<float> row(w.in);
    std::vector<std::uint16_t> row_bf16(w.in);
    for (std::size_t j = 0; j < w.out; ++j) {
        unpack_weight_row(w, j, row.data());
        if (w.dtype == KVFUSE_DTYPE_F32) {
            reference::gemm(a, n, lda, row.data(), 1, w.in, w.in, beta, c + j, ldc);
        } else {
            for (std::size_t k = 0; k < w.in; ++k) row_bf16[k] = f32_to_bf16_bits(row[k]);  // exact: row is bf16
            reference::gemm_bf16(a, n, lda, row_bf16.data(), 1, w.in, w.in, beta, c + j, ldc);
        }
    }
}

void qgemm_scalar(kvfuse_context& /*context*/, const kvfuse_packed_weights& packed, const float* a, std::size_t n,
                  std::size_t lda, float beta, float* c, std::size_t ldc, std::size_t /*workers*/) {
    const PackedWeightsData& w = packed.weights;
    std::vector<std::uint8_t> codes(w.in);
    if (w.six_bit()) {
        std::vector<std::int8_t> subs(w.in / 16);
        std::vector<float> supers(w.supers());
        for (std::size_t j = 0; j < w.out; ++j) {
            unpack_q6_row(w, j, codes.data(), subs.data(), supers.data());
            reference::gemm_q6_super256(a, n, lda, codes.data(), w.in, subs.data(), subs.size(), supers.data(),
                                        supers.size(), 1, w.in, beta, c + j, ldc);
        }
        return;
    }
    std::vector<float> scales(w.blocks()), offsets(w.blocks());
    for (std::size_t j = 0; j < w.out; ++j) {
        unpack_quantized_row(w, j, codes.data(), scales.data(), offsets.data());
        reference::gemm_quantized(a, n, lda, codes.data(), w.in, scales.data(), offsets.data(), w.blocks(), 1, w.in,
                                  beta, c + j, ldc);
    }
}

}  // namespace

void register_scalar_kernels(KernelTable& table) {
    table.rope_rotate = &rope_rotate_scalar;
    table.f32_to_f16 = &f32_to_f16_scalar;
    table.f16_to_f32 = &f16_to_f32_scalar;
    table.sparse_attention = &sparse_attention_scalar;
    table.topk = &topk_scalar;
    table.relevance = &relevance_scalar;
    table.quantize_keys = &quantize_keys_scalar;
    table.quantize_rows = &quantize_rows_scalar;
    table.gemm = &gemm_scalar;
    table.qgemm = &qgemm_scalar;
}

}  // namespace kvfuse::detail
