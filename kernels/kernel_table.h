// The table of kernel entry points that dispatch/ fills once per ISA. Every SIMD kernel's
// register_<kernel>() (in its -inl.h, instantiated per ISA) writes its slots; dispatch/ fills the
// scalar table from reference/. Internal: never installed.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/common/key_layout.h"
#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {

struct RopePlan;
struct TopkScratch;

// Every kernel but gemm runs in an execution context (kernels/call_context.h): its tuning, its
// workers and its scratch. One call per context at a time (the API layer makes sure).

// Rotates `tokens` tokens of `heads` heads from src to dst, each side addressed by its layout
// (kernels/common/key_layout.h; src == dst with the same layout is in place). Token t turns by
// deltas[t], or by `delta` when deltas is null. Arguments are already validated by the API layer
// (every block table entry read included).
// src holds src_dtype, dst dtype (the converting copy of kvfuse_rope_args V2; equal otherwise).
using RopeRotateFn = void (*)(kvfuse_context& context, const RopePlan& plan, kvfuse_dtype dtype, kvfuse_dtype src_dtype, const void* src,
                              const KeyLayout& src_layout, void* dst, const KeyLayout& dst_layout, std::size_t tokens,
                              std::size_t heads, const std::int64_t* deltas, std::int64_t delta);

// Softmax attention of selected rows; arguments already validated (positions in range, etc.).
using SparseAttentionFn = void (*)(kvfuse_context& context, const kvfuse_attention_args& args);

// Exact top-k of n scores (0 < k < n); writes k indices in the requested order. Single-threaded
// (kvfuse_topk_batched runs rows on workers), with `scratch` already reserved for
// (n, k, sample) (TopkScratch::reserve), so that it allocates nothing.
using TopkFn = void (*)(const float* scores, std::size_t n, std::size_t k, kvfuse_topk_order order,
                        std::int64_t* indices, TopkScratch& scratch, std::size_t sample);

// A3 relevance; arguments already validated.
using RelevanceFn = void (*)(kvfuse_context& context, const kvfuse_relevance_args& args);

// kvfuse_f32_to_f16 / kvfuse_f16_to_f32 of `count` values on the ISA's conversion instructions
// (registered with RoPE, whose ISA choice they follow), bit for bit reference/f16_reference.
using F32ToF16Fn = void (*)(const float* src, std::uint16_t* dst, std::size_t count);
using F16ToF32Fn = void (*)(const std::uint16_t* src, float* dst, std::size_t count);

// kvfuse_quantize_keys_i8 (bits 8) / _i4 (bits 4): per-(head, dim) mean over tokens removed,
// then symmetric int8 / packed int4 per (token, head), bit for bit as reference::quantize_keys.
// Keys of `dtype` (f32, bf16, f16) where `layout` puts them (kernels/common/key_layout.h: token
// and head strides in elements, or a paged block table), read in place. tokens > 0, arguments
// validated by the API layer (every block table entry read included).
using QuantizeKeysFn = void (*)(kvfuse_context& context, kvfuse_dtype dtype, const void* keys, std::size_t tokens,
                                std::size_t heads, std::size_t head_dim, const KeyLayout& layout, int bits, void* out,
                                float* scales, float* means);
// kvfuse_quantize_rows_i8 (no mean), bit for bit as reference::quantize_rows_i8; rows > 0.
using QuantizeRowsFn = void (*)(kvfuse_context& context, kvfuse_dtype dtype, const void* x, std::size_t rows,
                                std::size_t heads, std::size_t head_dim, std::size_t row_stride, std::int8_t* out,
                                float* scales);

// C[n x out] = A[n x in] W^T, plus beta C (beta = 0: C is not read), with W packed
// (kernels/gemm/gemm_packed.h). lda >= in, ldc >= out, n > 0, validated by the API layer.
// Runs at most `workers` (>= 1, chosen by the API layer: gemm_workers) tasks on the context's
// workers, with its scratch for the packed activations.
using GemmFn = void (*)(kvfuse_context& context, const kvfuse_packed_weights& w, const float* a, std::size_t n,
                        std::size_t lda, float beta, float* c, std::size_t ldc, std::size_t workers);

// Between two stores of a register_* function. Those functions run on every CPU (start-up
// builds the table of every ISA compiled in, supported or not), so they must hold no instruction
// of their ISA; without a barrier the compiler may merge adjacent pointer stores into one vector
// store (GCC did, with vmovq/vpinsrq, in avx2's register_quantize: SIGILL on a CPU without AVX).
#define KVFUSE_REGISTER_STORE_BARRIER() asm volatile("" ::: "memory")

struct KernelTable {
    kvfuse_isa isa = KVFUSE_ISA_SCALAR;
    // Which objects fill it: the ISA's name, or a variant's ("avx2_vnni") once one registered.
    const char* build = "scalar";
    RopeRotateFn rope_rotate = nullptr;
    F32ToF16Fn f32_to_f16 = nullptr;
    F16ToF32Fn f16_to_f32 = nullptr;
    SparseAttentionFn sparse_attention = nullptr;
    TopkFn topk = nullptr;
    RelevanceFn relevance = nullptr;
    // The integer dot schemes `relevance` runs for int8 and int4 keys (score_dot.h's names), so
    // that a user can see which instruction this CPU's copy uses. The scalar table runs the
    // reference.
    const char* int8_dot = "reference";
    const char* int4_dot = "reference";
    // The quantizers that feed `relevance` (chosen with it by kvfuse_set_kernel_isa).
    QuantizeKeysFn quantize_keys = nullptr;
    QuantizeRowsFn quantize_rows = nullptr;
    GemmFn gemm = nullptr;
    // How `gemm` multiplies bf16 weights: "dpbf16ps" (AVX512-BF16), "widened_fma" (pairs widened
    // to f32 in registers) or "reference".
    const char* gemm_bf16_scheme = "reference";
    // The same product with block-quantized weights (w.quantized()): activations quantized to
    // int8 per block of 32 (kernels/qgemm), and the integer dot it runs on.
    GemmFn qgemm = nullptr;
    const char* gemm_int8_scheme = "reference";
};

}  // namespace kvfuse::detail
