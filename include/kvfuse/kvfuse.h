/*
 * kvfuse C API: runtime-dispatched SIMD kernels for KV-cache fusion.
 *
 * Every function returns a kvfuse_status. KVFUSE_OK is 0; anything else is an error whose
 * generic text is kvfuse_status_message(status) and whose specific detail for the calling thread
 * (which argument, which value) is kvfuse_last_error(). No function aborts on bad input.
 *
 * Every enum has *_MIN_ENUM and *_MAX_ENUM members only to make it int-sized with every int in
 * its range: any int a C caller puts in an enum argument or field (negative ones included) is
 * read as that int and range-checked; one outside the enumerators gets
 * KVFUSE_ERROR_INVALID_ARGUMENT (KVFUSE_ERROR_UNKNOWN_ISA for an ISA), "unknown" from the name
 * functions, 0 from kvfuse_isa_compiled/_supported.
 *
 * Tensors are row-major. A "row" is one token; within a row, heads are contiguous and each head
 * holds head_dim elements. token_stride is the distance between consecutive tokens in ELEMENTS
 * (not bytes) and must be at least heads * head_dim.
 *
 * Sizes: every product and sum of size arguments is computed with overflow checks. A tensor whose
 * extent, ((rows - 1) * stride + row elements) * element size in bytes, wraps size_t or exceeds
 * PTRDIFF_MAX is refused with KVFUSE_ERROR_INVALID_ARGUMENT before anything is read or written.
 *
 * Pointers: each must be aligned to its element type (float, int32_t: 4 bytes; int64_t, size_t:
 * 8; bf16 and f16 as uint16_t: 2; int8_t, uint8_t: 1). A misaligned pointer is refused with
 * KVFUSE_ERROR_INVALID_ARGUMENT naming the argument. No wider (vector) alignment is ever needed.
 *
 * No C++ exception leaves the library: running out of memory is KVFUSE_ERROR_OUT_OF_MEMORY,
 * anything else unexpected KVFUSE_ERROR_INTERNAL with the detail in kvfuse_last_error().
 *
 * Versioned structs: every struct the caller allocates and passes in or has filled (args,
 * configs, options, tuning, CPU features, topology) starts with `size_t struct_size`, the
 * sizeof() the caller was compiled with. Set it with the struct's *_init function (static
 * inline here: the size is that of the header the caller compiled against) before filling the
 * fields. Fields are only ever appended, so the library reads a struct of an older version (a
 * size it lists in KVFUSE_*_SIZE_V<n> below) and gives the fields after it their defaults, and
 * writes an output struct only up to its struct_size. Any other struct_size -- 0 (never set),
 * a size from a newer header than the library, one between versions -- is refused with
 * KVFUSE_ERROR_STRUCT_SIZE and nothing is read or written.
 */
#ifndef KVFUSE_KVFUSE_H
#define KVFUSE_KVFUSE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kvfuse/version.h"

#if defined(_WIN32)
#define KVFUSE_API
#else
#define KVFUSE_API __attribute__((visibility("default")))
#endif
/* The *_init helpers: compiled into the caller, so struct_size is the caller's sizeof. */
#define KVFUSE_INLINE static inline

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status ------------------------------------------------------------------------------ */

typedef enum kvfuse_status {
    KVFUSE_OK = 0,
    KVFUSE_ERROR_INVALID_ARGUMENT = 1, /* a size, count or option is out of range */
    KVFUSE_ERROR_NULL_POINTER = 2,     /* a required pointer is NULL */
    KVFUSE_ERROR_UNKNOWN_ISA = 3,      /* an ISA name (KVFUSE_ISA or a force call) is not known */
    KVFUSE_ERROR_UNSUPPORTED_ISA = 4,  /* the ISA is known but not compiled in or not on this CPU */
    KVFUSE_ERROR_OUT_OF_MEMORY = 5,
    KVFUSE_ERROR_INTERNAL = 6,
    KVFUSE_ERROR_IO = 7,               /* a file could not be read or written */
    KVFUSE_ERROR_BAD_PROFILE = 8,      /* a tuning profile is malformed or made for another machine */
    KVFUSE_ERROR_STRUCT_SIZE = 9,      /* a struct's struct_size is not one this library knows */
    KVFUSE_STATUS_MIN_ENUM = -0x7fffffff - 1,
    KVFUSE_STATUS_MAX_ENUM = 0x7fffffff /* keeps the enum int-sized; any int is in range */
} kvfuse_status;

/* Generic text of a status; never NULL. */
KVFUSE_API const char* kvfuse_status_message(kvfuse_status status);
/* Detail of the last error raised on this thread ("" if none); valid until the next call. */
KVFUSE_API const char* kvfuse_last_error(void);

/* ---- version ----------------------------------------------------------------------------- */

KVFUSE_API const char* kvfuse_version_string(void);
/* KVFUSE_VERSION_MAJOR * 10000 + MINOR * 100 + PATCH of the library actually linked. */
KVFUSE_API int kvfuse_version_number(void);

/* ---- ISA dispatch ------------------------------------------------------------------------ */

typedef enum kvfuse_isa {
    KVFUSE_ISA_SCALAR = 0, /* the plain reference code: always available */
    KVFUSE_ISA_AVX2 = 1,   /* AVX2 + FMA */
    KVFUSE_ISA_AVX512 = 2, /* AVX-512 F + BW + DQ + VL */
    KVFUSE_ISA_NEON = 3,   /* AArch64 Advanced SIMD */
    KVFUSE_ISA_MIN_ENUM = -0x7fffffff - 1,
    KVFUSE_ISA_MAX_ENUM = 0x7fffffff
} kvfuse_isa;

#define KVFUSE_ISA_COUNT 4

/* "scalar", "avx2", "avx512", "neon"; "unknown" for other values. */
KVFUSE_API const char* kvfuse_isa_name(kvfuse_isa isa);
/* Parses a name as KVFUSE_ISA accepts it (case-insensitive). */
KVFUSE_API kvfuse_status kvfuse_isa_from_name(const char* name, kvfuse_isa* isa);
/* 1 if the library was built with kernels for this ISA. */
KVFUSE_API int kvfuse_isa_compiled(kvfuse_isa isa);
/* 1 if compiled in AND this CPU and OS can run it. */
KVFUSE_API int kvfuse_isa_supported(kvfuse_isa isa);
/* The ISA whose kernels run now. Fails if KVFUSE_ISA named something unknown or unsupported:
 * the library then refuses to run any kernel rather than fall back silently. */
KVFUSE_API kvfuse_status kvfuse_active_isa(kvfuse_isa* isa);
/* Forces an ISA for the whole process (tests, tuning). Fails if not supported. */
KVFUSE_API kvfuse_status kvfuse_force_isa(kvfuse_isa isa);
/* Undoes kvfuse_force_isa: back to the start-up choice (KVFUSE_ISA, else the best ISA). */
KVFUSE_API void kvfuse_reset_isa(void);

/* Per-kernel ISA choice. Each kernel may run on another compiled ISA than the active one where
 * that is faster on this CPU (a tuning profile's "kernel_isa", or the program). KVFUSE_ISA and
 * kvfuse_force_isa override every per-kernel choice: one ISA for everything. A kernel runs its
 * ISA's variants (VNNI, dotprod) wherever this CPU has them. */
typedef enum kvfuse_kernel {
    KVFUSE_KERNEL_ROPE = 0,      /* kvfuse_rope_rotate* */
    KVFUSE_KERNEL_ATTENTION = 1, /* kvfuse_sparse_attention */
    KVFUSE_KERNEL_TOPK = 2,      /* kvfuse_topk* */
    KVFUSE_KERNEL_RELEVANCE = 3, /* kvfuse_a3_relevance */
    KVFUSE_KERNEL_MIN_ENUM = -0x7fffffff - 1,
    KVFUSE_KERNEL_MAX_ENUM = 0x7fffffff
} kvfuse_kernel;

#define KVFUSE_KERNEL_COUNT 4

/* "rope", "attention", "topk", "relevance"; "unknown" for other values. */
KVFUSE_API const char* kvfuse_kernel_name(kvfuse_kernel kernel);
KVFUSE_API kvfuse_status kvfuse_kernel_from_name(const char* name, kvfuse_kernel* kernel);
/* Runs `kernel` on *isa from now on (NULL: back to the active ISA). Fails if the ISA is not
 * compiled in or not supported by this CPU; nothing changes then. */
KVFUSE_API kvfuse_status kvfuse_set_kernel_isa(kvfuse_kernel kernel, const kvfuse_isa* isa);
/* The ISA `kernel` runs on now, and (optional) where that came from: "KVFUSE_ISA",
 * "kvfuse_force_isa", "profile", "program" (kvfuse_set_kernel_isa) or "default" (the active
 * ISA). A static string. Fails like kvfuse_active_isa. */
KVFUSE_API kvfuse_status kvfuse_kernel_isa(kvfuse_kernel kernel, kvfuse_isa* isa, const char** source);

typedef struct kvfuse_cpu_features {
    size_t struct_size; /* kvfuse_cpu_features_init sets it */
    int avx2, fma, f16c, avx512f, avx512bw, avx512dq, avx512vl;
    int avx512_vnni, avx512_bf16, avx_vnni; /* x86 extensions the kernels may use */
    int os_saves_avx, os_saves_avx512;      /* XCR0 says the OS saves the vector state */
    int neon, arm_dotprod;
    char brand[64]; /* CPU model string, "" when unknown */
    int avx512_vbmi2; /* (V2) byte compress: the top-k filter's variant */
} kvfuse_cpu_features;

#define KVFUSE_CPU_FEATURES_SIZE_V1 offsetof(kvfuse_cpu_features, avx512_vbmi2)
#define KVFUSE_CPU_FEATURES_SIZE_V2 sizeof(kvfuse_cpu_features)

KVFUSE_INLINE void kvfuse_cpu_features_init(kvfuse_cpu_features* features) {
    memset(features, 0, sizeof *features);
    features->struct_size = sizeof *features;
}
/* Fills *features up to its struct_size (kvfuse_cpu_features_init first). */
KVFUSE_API kvfuse_status kvfuse_get_cpu_features(kvfuse_cpu_features* features);

/* ---- storage types ----------------------------------------------------------------------- */

typedef enum kvfuse_dtype {
    KVFUSE_DTYPE_F32 = 0,
    KVFUSE_DTYPE_BF16 = 1, /* stored as uint16_t: the top half of an IEEE f32 */
    KVFUSE_DTYPE_F16 = 2,  /* stored as uint16_t: IEEE binary16 (llama.cpp's default KV type); K/V
                              only: RoPE, attention, relevance keys, quantizer input, gather /
                              scatter; not gemm weights */
    KVFUSE_DTYPE_Q8_BLOCK32 = 3, /* packed gemm weights only (kvfuse_pack_quantized_weights): per 32
                                    consecutive k of a row, 8-bit codes u, a scale s and an offset
                                    m, w = s u - m; every other call rejects it */
    KVFUSE_DTYPE_Q4_BLOCK32 = 4, /* the same with 4-bit codes */
    KVFUSE_DTYPE_Q4_SUPER256 = 5, /* packed gemm weights only: 4-bit codes, per 32 k an 8-bit
                                     sub-scale and sub-offset, per 256 k an f32 super-scale and
                                     super-offset (Q4_K's form: 4.75 bits a weight) */
    KVFUSE_DTYPE_Q6_SUPER256 = 6, /* packed gemm weights only: 6-bit codes u, w = super * sub *
                                     (u - 32) with a signed 8-bit sub-scale per 16 k and an f32
                                     super-scale per 256 k (Q6_K's form: 6.625 bits a weight) */
    KVFUSE_DTYPE_MIN_ENUM = -0x7fffffff - 1,
    KVFUSE_DTYPE_MAX_ENUM = 0x7fffffff
} kvfuse_dtype;

/* ---- RoPE -------------------------------------------------------------------------------- */

typedef enum kvfuse_rope_pairing {
    KVFUSE_ROPE_NEOX = 0,       /* pairs (i, i + rotary_dims/2): HF Llama/Mistral/Qwen layout */
    KVFUSE_ROPE_INTERLEAVED = 1, /* pairs (2i, 2i+1): GPT-J, and GGUF `llama` tensors */
    KVFUSE_ROPE_PAIRING_MIN_ENUM = -0x7fffffff - 1,
    KVFUSE_ROPE_PAIRING_MAX_ENUM = 0x7fffffff
} kvfuse_rope_pairing;

typedef enum kvfuse_rope_scaling {
    KVFUSE_ROPE_SCALING_NONE = 0,
    KVFUSE_ROPE_SCALING_LINEAR = 1, /* every frequency divided by scaling_factor */
    KVFUSE_ROPE_SCALING_LLAMA3 = 2, /* Llama 3.1 wavelength-dependent scaling */
    KVFUSE_ROPE_SCALING_MIN_ENUM = -0x7fffffff - 1,
    KVFUSE_ROPE_SCALING_MAX_ENUM = 0x7fffffff
} kvfuse_rope_scaling;

typedef struct kvfuse_rope_config {
    size_t struct_size;  /* kvfuse_rope_config_init sets it */
    int32_t head_dim;    /* D, elements per head */
    int32_t rotary_dims; /* leading dims of each head that rotate; even, <= head_dim; 0 = D */
    double base;         /* theta; frequency i is base^(-2i/rotary_dims) */
    kvfuse_rope_pairing pairing;
    kvfuse_rope_scaling scaling;
    double scaling_factor;           /* linear and llama3: > 0 */
    double llama3_low_freq_factor;   /* llama3 only */
    double llama3_high_freq_factor;  /* llama3 only, > low */
    int32_t llama3_original_context; /* llama3 only, > 0 */
    /* V2. NULL, or rotary_dims / 2 per-pair divisors, each finite and > 0: the frequency of pair
     * i (after the scaling above) is divided by freq_factors[i] -- Llama 3.1/3.2 GGUF files store
     * them as the tensor rope_freqs.weight. Read during each call only (the library keeps a copy
     * of the values, not the pointer). */
    const float* freq_factors;
} kvfuse_rope_config;

#define KVFUSE_ROPE_CONFIG_SIZE_V1 offsetof(kvfuse_rope_config, freq_factors)
#define KVFUSE_ROPE_CONFIG_SIZE_V2 sizeof(kvfuse_rope_config)

/* Defaults: rotary_dims = head_dim, base 10000, NeoX pairing, no scaling (llama3 fields set to
 * Llama 3.1's values so that switching scaling on is enough). */
KVFUSE_INLINE void kvfuse_rope_config_init(kvfuse_rope_config* config, int32_t head_dim) {
    memset(config, 0, sizeof *config);
    config->struct_size = sizeof *config;
    config->head_dim = head_dim;
    config->rotary_dims = 0;
    config->base = 10000.0;
    config->pairing = KVFUSE_ROPE_NEOX;
    config->scaling = KVFUSE_ROPE_SCALING_NONE;
    config->scaling_factor = 1.0;
    config->llama3_low_freq_factor = 1.0;
    config->llama3_high_freq_factor = 4.0;
    config->llama3_original_context = 8192;
    config->freq_factors = NULL;
}

/* Rotates token t of keys[tokens x heads x head_dim] in place by deltas[t] positions.
 * Rotating by the absolute position from 0 is ordinary RoPE; rotating a cached key by
 * new_pos - old_pos re-positions it. The angle is computed in double, cos/sin rounded to f32,
 * the rotation done in f32 and rounded once to the storage type (bf16 and f16: to nearest even;
 * f16 results beyond its range become +-Inf, NaN stays NaN). */
KVFUSE_API kvfuse_status kvfuse_rope_rotate(const kvfuse_rope_config* config, kvfuse_dtype dtype,
                                            void* keys, size_t tokens, size_t heads,
                                            size_t token_stride, const int64_t* deltas);
/* Same with one delta for all tokens (a whole chunk moved to a new offset). */
KVFUSE_API kvfuse_status kvfuse_rope_rotate_span(const kvfuse_rope_config* config,
                                                 kvfuse_dtype dtype, void* keys, size_t tokens,
                                                 size_t heads, size_t token_stride, int64_t delta);
/* Copying forms: read src, write the rotated keys to dst (the fused load from a stored chunk
 * into the request's cache). Non-rotary dims are copied. src and dst must not overlap unless
 * they are the same pointer with the same stride. */
KVFUSE_API kvfuse_status kvfuse_rope_rotate_copy(const kvfuse_rope_config* config,
                                                 kvfuse_dtype dtype, const void* src,
                                                 size_t src_token_stride, void* dst,
                                                 size_t dst_token_stride, size_t tokens,
                                                 size_t heads, const int64_t* deltas);
KVFUSE_API kvfuse_status kvfuse_rope_rotate_span_copy(const kvfuse_rope_config* config,
                                                      kvfuse_dtype dtype, const void* src,
                                                      size_t src_token_stride, void* dst,
                                                      size_t dst_token_stride, size_t tokens,
                                                      size_t heads, int64_t delta);

/* ---- RoPE on strided and paged caches -----------------------------------------------------
 * kvfuse_rope_rotate_layout reads and writes keys wherever an engine keeps them. Each side (dst,
 * and src for the copying form) is described by the same fields, in ELEMENTS of dtype:
 *   token_stride  between consecutive tokens (0: heads * head_stride)
 *   head_stride   between the heads of one token (0: head_dim)
 *   block_table   paged form (NULL: not paged): logical block b of the sequence lives in physical
 *                 block block_table[b] (int32, vLLM's block tables); token t of the sequence is
 *                 row t % block_size of block block_table[t / block_size], at
 *                 base + block_table[b] * block_stride + (t % block_size) * token_stride
 *   block_size    tokens per block (> 0 when paged; 1 is a per-token table)
 *   block_stride  between physical blocks (0: block_size * token_stride)
 *   blocks_total  physical blocks in the pool at base: every entry the call reads is checked to
 *                 lie in [0, blocks_total) (KVFUSE_ERROR_INVALID_ARGUMENT naming the entry), and
 *                 the pool's extent, (blocks_total - 1) * block_stride + one block, must fit
 *   token_offset  the sequence's token the call's first token is (paged or not)
 * Head h of token t starts at row(t) + h * head_stride. Heads must not overlap, nor tokens, nor
 * blocks where the call writes (dst): token_stride >= (heads - 1) * head_stride + head_dim
 * (token-major), or head_stride >= (tokens per block - 1) * token_stride + head_dim with
 * token_stride >= head_dim (head-major: FlashInfer's HND pages); a paged block_stride must hold
 * a whole block. That each physical block appears once in the part of the table a call writes is
 * the caller's to keep (not checked: a block listed twice is written twice).
 *
 * How engines' caches map on these fields, for one layer's keys:
 *   llama.cpp: k_l is [kv_size cells x n_embd_k_gqa] f16 (cells are rows). A sequence's tokens
 *     sit in cells: block_table = the cell of each token, block_size 1, token_stride =
 *     n_embd_k_gqa (= heads * head_dim), head_stride 0, block_stride 0, blocks_total = kv_size.
 *   vLLM: key_cache[num_blocks, block_size, num_kv_heads, head_size] (the flash layout): the
 *     sequence's row of block_tables, block_size, token_stride = num_kv_heads * head_size,
 *     head_stride 0, block_stride 0, blocks_total = num_blocks; with K and V in one tensor
 *     [num_blocks, 2, block_size, ...], block_stride = 2 * block_size * num_kv_heads *
 *     head_size. FlashInfer's HND pages [num_blocks, num_kv_heads, block_size, head_size]:
 *     token_stride = head_size, head_stride = block_size * head_size. vLLM's older paged-attention
 *     key layout [num_blocks, num_kv_heads, head_size / x, block_size, x] splits a head's
 *     elements across tokens and cannot be described (copy it out first).
 * The rotation of each row is that of kvfuse_rope_rotate_copy, bit for bit: the same keys in any
 * layout come out with the same bits. */
typedef struct kvfuse_rope_args {
    size_t struct_size;               /* kvfuse_rope_args_init sets it */
    const kvfuse_rope_config* config; /* required */
    kvfuse_dtype dtype;               /* of src and dst: f32, bf16 or f16 */
    size_t tokens;                    /* 0 is valid: nothing to do */
    size_t heads;
    const int64_t* deltas;            /* token t (of the call) turns by deltas[t]; NULL: by delta */
    int64_t delta;
    /* destination: rotated in place when src is NULL */
    void* dst;
    size_t dst_token_stride;
    size_t dst_head_stride;
    const int32_t* dst_block_table;
    size_t dst_block_size;
    size_t dst_block_stride;
    size_t dst_blocks_total;
    size_t dst_token_offset;
    /* source of the copying form (NULL: in place). It must not overlap dst's extent, unless it
     * is dst with the same layout (then in place) */
    const void* src;
    size_t src_token_stride;
    size_t src_head_stride;
    const int32_t* src_block_table;
    size_t src_block_size;
    size_t src_block_stride;
    size_t src_blocks_total;
    size_t src_token_offset;
    /* V2: the copying form may also change the element type on the way (an engine's fresh f32
     * keys from the K projection rotated straight into its f16 or bf16 cache): with convert
     * nonzero, src holds src_dtype and dst holds dtype. The rotation runs in f32 on src widened
     * exactly and is rounded once to dst's type (nearest even): on the SIMD ISAs bit for bit the
     * f32 rotation followed by kvfuse_f32_to_f16 / kvfuse_f32_to_bf16. Needs src (not in place).
     * convert = 0: both hold dtype (src_dtype is not read). */
    int convert;
    kvfuse_dtype src_dtype;
} kvfuse_rope_args;

/* V1: up to src_token_offset. V2: this header's struct. */
#define KVFUSE_ROPE_ARGS_SIZE_V1 offsetof(kvfuse_rope_args, convert)
#define KVFUSE_ROPE_ARGS_SIZE_V2 sizeof(kvfuse_rope_args)

/* Every field 0 / NULL (dtype f32: in place, packed, not paged), struct_size set. */
KVFUSE_INLINE void kvfuse_rope_args_init(kvfuse_rope_args* args) {
    memset(args, 0, sizeof *args);
    args->struct_size = sizeof *args;
    args->dtype = KVFUSE_DTYPE_F32;
}

/* RoPE re-rotation of keys in any layout above: in place, or copied from src to dst (a stored
 * contiguous chunk into a paged cache at dst_token_offset: the fused load). */
KVFUSE_API kvfuse_status kvfuse_rope_rotate_layout(const kvfuse_rope_args* args);

/* ---- sparse-row attention ---------------------------------------------------------------- */

typedef struct kvfuse_attention_args {
    size_t struct_size;       /* kvfuse_attention_args_init sets it */
    const float* queries;     /* rows x query_heads x head_dim, row stride query_row_stride (elements) */
    size_t rows;              /* n selected rows (0 is valid: nothing to do) */
    size_t query_heads;       /* H, a multiple of kv_heads: query head h reads kv head h / (H / kv_heads) */
    size_t head_dim;          /* D */
    size_t query_row_stride;
    const int64_t* positions; /* per row: row r sees keys j with 0 <= j <= positions[r] (exact causal mask) */
    const void* keys;         /* kv_tokens x kv_heads x head_dim, row stride kv_token_stride */
    const void* values;       /* same layout as keys */
    kvfuse_dtype kv_dtype;    /* KVFUSE_DTYPE_F32, KVFUSE_DTYPE_BF16 or KVFUSE_DTYPE_F16 */
    size_t kv_tokens;         /* T */
    size_t kv_heads;          /* Hkv */
    size_t kv_token_stride;
    float scale;              /* multiplies q.k; usually 1/sqrt(D) */
    float* out;               /* rows x query_heads x head_dim, row stride out_row_stride */
    size_t out_row_stride;
    /* ---- V2: the layouts engines keep. Every field 0 / NULL is V1's behaviour. ----
     *
     * Per-head strides (elements; 0 = head_dim): head h of query row r starts at
     * queries[r * query_row_stride + h * query_head_stride], and so on for out and for K/V
     * (kv_head_stride with kv_token_stride). Each head's head_dim elements are contiguous. A
     * tensor must not overlap itself: with the head stride <= the row (token) stride, the head
     * stride is >= head_dim and the row stride >= (heads - 1) * head stride + head_dim (token
     * major, e.g. a fused QKV row); with the head stride larger (head major, [heads, rows, D]),
     * the row stride is >= head_dim and the head stride >= (rows - 1) * row stride + head_dim,
     * rows being the rows of out / queries, the tokens of one K/V block (paged) or kv_tokens. */
    size_t query_head_stride;
    size_t kv_head_stride;
    size_t out_head_stride;
    /* Paged K/V (used when kv_block_table is set): keys and values point at the base of the
     * block pools; logical token t of a sequence lives in physical block
     * p = table[t / kv_block_size], token slot t % kv_block_size, at element
     *   p * kv_block_stride + (t % kv_block_size) * kv_token_stride + head * kv_head_stride,
     * table being the sequence's row of kv_block_table (below). kv_block_stride 0 =
     * kv_block_size * kv_token_stride. kv_blocks_total is the number of physical blocks in the
     * pool (> 0): the extent checked is kv_blocks_total blocks, and every table entry the call
     * may read -- the first ceil(L / kv_block_size) of each sequence of L keys -- must lie in
     * [0, kv_blocks_total), else KVFUSE_ERROR_INVALID_ARGUMENT names the entry. Entries after
     * those and token slots after a sequence's last key are never read (they may hold anything).
     * With several sequences (below) sequence s's table is
     * kv_block_table + s * kv_block_table_stride (>= the entries of the longest sequence);
     * with one, kv_block_table_stride is not read.
     *   vLLM (flash layout: key_cache[num_blocks, block_size, num_kv_heads, head_size]): keys =
     *     key_cache, kv_block_size = block_size, kv_token_stride = num_kv_heads * head_size,
     *     kv_head_stride 0, kv_block_stride 0, kv_blocks_total = num_blocks, kv_block_table =
     *     block_tables[num_seqs, max_blocks] (int32), kv_block_table_stride = max_blocks.
     *     [num_blocks, num_kv_heads, block_size, head_size] (head major in a block): kv_token_stride
     *     = head_size, kv_head_stride = block_size * head_size, kv_block_stride = num_kv_heads *
     *     block_size * head_size. (vLLM's older split layout [.., head_size / x, block_size, x]
     *     and a value cache transposed to [.., head_size, block_size] are not expressible.)
     *   llama.cpp (K cache [cells, n_embd_k_gqa], V not transposed, as with flash attention):
     *     keys = the cache tensor, kv_block_size = 1, kv_token_stride = n_embd_k_gqa (its row
     *     stride in elements), kv_blocks_total = cells, kv_block_table = the sequence's cell
     *     indices in key order (or no table: the cells of one sequence at consecutive indices
     *     are a contiguous tensor, keys = its first cell). */
    const int32_t* kv_block_table;
    size_t kv_block_size;
    size_t kv_block_stride;
    size_t kv_blocks_total;
    size_t kv_block_table_stride;
    /* Several sequences in one call (varlen, as FlashAttention's cu_seqlens; sequences 0 = one
     * sequence: the call above). cu_rows and cu_kv_tokens each hold sequences + 1 non-decreasing
     * entries from 0: rows cu_rows[s] .. cu_rows[s + 1] - 1 belong to sequence s
     * (cu_rows[sequences] == rows), and sequence s has L_s = cu_kv_tokens[s + 1] - cu_kv_tokens[s]
     * keys (cu_kv_tokens[sequences] == kv_tokens). Its keys are tokens cu_kv_tokens[s] ..
     * cu_kv_tokens[s + 1] - 1 of keys / values, or, paged, tokens 0 .. L_s - 1 of its own block
     * table. positions[r] counts from the start of the row's sequence (0 <= positions[r] < L_s):
     * each sequence has its own causal frame. Both arrays must be NULL when sequences is 0. */
    size_t sequences;
    const int64_t* cu_rows;
    const int64_t* cu_kv_tokens;
    /* Log-sum-exp (optional, when lse is set): lse[r * lse_row_stride + h] = the natural log of
     * sum_j exp(scale * q_(r,h) . k_j) over the keys j row r sees (lse_row_stride 0 =
     * query_heads). Outputs of the same rows over disjoint key sets (split-K, paged shards) merge
     * exactly: lse = log(sum_i exp(lse_i)), out = sum_i exp(lse_i - lse) * out_i. A row whose
     * scores hold NaN gets NaN. */
    float* lse;
    size_t lse_row_stride;
} kvfuse_attention_args;

/* V1: the fields up to out_row_stride (contiguous heads, one sequence, no table, no lse).
 * V2: this header's struct. */
#define KVFUSE_ATTENTION_ARGS_SIZE_V1 offsetof(kvfuse_attention_args, query_head_stride)
#define KVFUSE_ATTENTION_ARGS_SIZE_V2 sizeof(kvfuse_attention_args)

/* Every field 0 / NULL (kv_dtype f32), struct_size set. */
KVFUSE_INLINE void kvfuse_attention_args_init(kvfuse_attention_args* args) {
    memset(args, 0, sizeof *args);
    args->struct_size = sizeof *args;
    args->kv_dtype = KVFUSE_DTYPE_F32;
}

/* Softmax attention of n selected query rows against all T keys with the exact causal mask.
 * Rows may come in any order and repeat. With every row selected (positions 0..T-1) it is full
 * causal attention. Accumulation in f32 with an online softmax; bf16 and f16 K/V are widened
 * exactly (f16: F16C on x86, fcvtl on AArch64). On an ISA and tuning, a row's result depends
 * on its query and the keys it sees only: strided, paged and multi-sequence calls give bit for
 * bit the results of the same rows called on contiguous tensors one sequence at a time. */
KVFUSE_API kvfuse_status kvfuse_sparse_attention(const kvfuse_attention_args* args);

/* Row gather / scatter for the fusion pipeline: dst row i = src row rows[i] (gather), and
 * dst row rows[i] = src row i (scatter). row_elements elements of dtype per row. */
KVFUSE_API kvfuse_status kvfuse_gather_rows(kvfuse_dtype dtype, const void* src, size_t src_rows,
                                            size_t src_row_stride, const int64_t* rows, size_t count,
                                            void* dst, size_t dst_row_stride, size_t row_elements);
KVFUSE_API kvfuse_status kvfuse_scatter_rows(kvfuse_dtype dtype, const void* src, size_t src_row_stride,
                                             const int64_t* rows, size_t count, void* dst, size_t dst_rows,
                                             size_t dst_row_stride, size_t row_elements);

/* ---- top-k selection --------------------------------------------------------------------- */

typedef enum kvfuse_topk_order {
    KVFUSE_TOPK_BY_POSITION = 0, /* indices ascending: what a pipeline gathers */
    KVFUSE_TOPK_BY_SCORE = 1,    /* best first */
    KVFUSE_TOPK_ORDER_MIN_ENUM = -0x7fffffff - 1,
    KVFUSE_TOPK_ORDER_MAX_ENUM = 0x7fffffff
} kvfuse_topk_order;

/* The k largest of n scores, exactly: ranked by score (larger first), ties by lower index; a NaN
 * ranks below every number (-Inf included), NaNs among themselves by index. Writes
 * min(k, n) indices to `indices` in the requested order and that count to *count.
 * k = 0 is valid (nothing written). */
KVFUSE_API kvfuse_status kvfuse_topk(const float* scores, size_t n, size_t k, kvfuse_topk_order order,
                                     int64_t* indices, size_t* count);
/* Row r of an rows x n matrix (row stride row_stride) -> indices[r * indices_stride ...],
 * min(k, n) per row. For per-layer selection. */
KVFUSE_API kvfuse_status kvfuse_topk_batched(const float* scores, size_t rows, size_t n, size_t row_stride,
                                             size_t k, kvfuse_topk_order order, int64_t* indices,
                                             size_t indices_stride);

/* ---- quantized question->key scoring (A3 relevance) ------------------------------------- */

/* Keys [tokens x kv_heads x head_dim] (token stride in elements) -> int8 keys (same shape,
 * contiguous), one scale per (token, KV head) and one mean per (KV head, dim). Each KV head's
 * mean over tokens is subtracted first: exact for softmax (it shifts every logit of a query
 * row by the same amount) and it removes the large shared components that would otherwise
 * dominate the int8 range (the mean: each column's f32 sum in token order over the f32 token
 * count). Then symmetric int8: scale = max|x| / 127, q = x * (1 / scale) with the reciprocal
 * rounded to f32 once (as llama.cpp's quantizers do; a true x / scale when 1 / scale is
 * not a normal f32), clamped to [-127, 127] and rounded half to even (as lrint in the default
 * rounding mode). A head of zeros has scale 0 and quantizes to 0. Non-finite input never fails: max|x| ignores NaN; a
 * value whose quotient is NaN (a NaN, or an infinity over an infinite scale) quantizes to +127;
 * an infinity gives its head an infinite scale (its finite values quantize to 0). Here a
 * non-finite key also makes its column's mean non-finite, so it reaches that column in every
 * token. */
KVFUSE_API kvfuse_status kvfuse_quantize_keys_i8(const float* keys, size_t tokens, size_t kv_heads,
                                                 size_t head_dim, size_t token_stride, int8_t* out,
                                                 float* scales, float* means);
/* The same with int4 keys, packed two per byte: per (token, KV head) (head_dim + 1) / 2 bytes,
 * dimension 2i in the low nibble and 2i + 1 in the high one (two's complement; an odd
 * head_dim leaves the last high nibble 0). Symmetric: scale = max|x| / 7, values in [-7, 7]. */
KVFUSE_API kvfuse_status kvfuse_quantize_keys_i4(const float* keys, size_t tokens, size_t kv_heads,
                                                 size_t head_dim, size_t token_stride, uint8_t* out,
                                                 float* scales, float* means);
/* Rows [rows x heads x head_dim] -> int8 per (row, head), no mean (for queries). */
KVFUSE_API kvfuse_status kvfuse_quantize_rows_i8(const float* x, size_t rows, size_t heads, size_t head_dim,
                                                 size_t row_stride, int8_t* out, float* scales);

/* The three quantizers above from keys or rows of any KV type (dtype: KVFUSE_DTYPE_F32, _BF16 or
 * _F16; token_stride / row_stride in elements of it; keys / x aligned to it). Each value is
 * widened exactly to f32 as it is read, so the result is bit for bit that of the f32 call on the
 * widened tensor (never copied: the kernels convert in registers). */
KVFUSE_API kvfuse_status kvfuse_quantize_keys_i8_typed(kvfuse_dtype dtype, const void* keys, size_t tokens,
                                                       size_t kv_heads, size_t head_dim, size_t token_stride,
                                                       int8_t* out, float* scales, float* means);
KVFUSE_API kvfuse_status kvfuse_quantize_keys_i4_typed(kvfuse_dtype dtype, const void* keys, size_t tokens,
                                                       size_t kv_heads, size_t head_dim, size_t token_stride,
                                                       uint8_t* out, float* scales, float* means);
KVFUSE_API kvfuse_status kvfuse_quantize_rows_i8_typed(kvfuse_dtype dtype, const void* x, size_t rows, size_t heads,
                                                       size_t head_dim, size_t row_stride, int8_t* out, float* scales);
/* Threads: the six quantizers run on the calling thread's default context (OpenMP); their
 * kvfuse_ctx_quantize_* forms ("execution context" below) on a context's workers, with its
 * scratch and its tuning. A call of fewer than the tuning's quantize_parallel_work input values
 * runs on one thread. */

/* One range of candidates with its own keys and queries (see segment_count below). */
typedef struct kvfuse_relevance_segment {
    size_t struct_size;         /* kvfuse_relevance_segment_init sets it; the same in every element */
    size_t keys;                /* candidates in this segment; the segments' keys add up to `candidates` */
    const float* queries_f32;   /* f32 path: M x H x D, in this segment's frame */
    const float* keys_f32;      /* f32 path: keys x Hkv x D */
    const int8_t* queries_i8;   /* int paths: M x H x D, with query_scales (M x H) */
    const float* query_scales;
    const int8_t* keys_i8;      /* int8 path: keys x Hkv x D */
    const uint8_t* keys_i4;     /* int4 path: keys x Hkv x (D + 1) / 2 */
    const float* key_scales;    /* int paths: keys x Hkv */
    const float* bias;          /* M values added to the merged-head logit before 1 / sqrt(H * D); NULL: 0 */
    /* V2: f32 path with keys of another type, read in place (widened in registers as each tile
     * is laid out, never copied whole): typed_keys of keys_dtype (f32, bf16 or f16) instead of
     * keys_f32 */
    kvfuse_dtype keys_dtype;
    const void* typed_keys;
    /* V2: the segment's keys (keys_f32, typed_keys, keys_i8 or keys_i4) in any layout, as the
     * key_* fields of kvfuse_relevance_args below; its key_scales stay [keys x Hkv], packed */
    size_t key_token_stride;
    size_t key_head_stride;
    const int32_t* key_block_table;
    size_t key_block_size;
    size_t key_block_stride;
    size_t key_blocks_total;
    size_t key_token_offset;
} kvfuse_relevance_segment;

/* V1: up to `bias` (keys packed, f32 / int8 / int4). V2: this header's struct. */
#define KVFUSE_RELEVANCE_SEGMENT_SIZE_V1 offsetof(kvfuse_relevance_segment, keys_dtype)
#define KVFUSE_RELEVANCE_SEGMENT_SIZE_V2 sizeof(kvfuse_relevance_segment)

KVFUSE_INLINE void kvfuse_relevance_segment_init(kvfuse_relevance_segment* segment) {
    memset(segment, 0, sizeof *segment);
    segment->struct_size = sizeof *segment;
}

typedef struct kvfuse_relevance_args {
    size_t struct_size;   /* kvfuse_relevance_args_init sets it */
    size_t question_rows; /* M: the last M candidates are the question's own keys */
    size_t candidates;    /* keys [P, T): documents first, then the M question rows */
    size_t query_heads;   /* H, a multiple of kv_heads */
    size_t kv_heads;
    size_t head_dim;
    /* f32 path: queries [M x H x D] and keys [candidates x Hkv x D], contiguous */
    const float* queries_f32;
    const float* keys_f32;
    /* int8 path (used when keys_i8 is set): as quantized above */
    const int8_t* queries_i8;
    const float* query_scales; /* M x H */
    const int8_t* keys_i8;
    const float* key_scales;   /* candidates x Hkv */
    int smoothing;             /* width-5 moving average, zero padded, divided by 5 */
    float* out;                /* candidates - M relevances of the document keys */
    /* int4 path (used when keys_i4 is set, instead of keys_i8): packed as quantized above,
     * with key_scales, queries_i8 and query_scales as for int8 */
    const uint8_t* keys_i4;
    /* Segments (optional): the candidates split into consecutive ranges, each with its own
     * keys, queries and bias. For keys stored in another frame -- a chunk's keys kept at the
     * positions it was computed at, its per-head mean removed -- pass the question's queries
     * rotated into that frame (RoPE is relative: q(p) . k(o + j) = q(p - o + s) . k(s + j)) and
     * bias[m] = sum_h q_h . mean_(h / group): the logits are then those of the fused keys,
     * and the stored quantized keys are read as they are. With segment_count > 0 the queries,
     * keys and scales above are ignored; every segment uses the same path (f32, int8 or int4).
     * The library steps through the array by the elements' struct_size (every element the
     * same: KVFUSE_RELEVANCE_SEGMENT_SIZE_V1 or _V2). */
    size_t segment_count;
    const kvfuse_relevance_segment* segments;
    /* f16 / bf16 keys (V3; the f32 path, used when `keys` is set instead of keys_f32): keys
     * [candidates x Hkv x D] of keys_dtype (KVFUSE_DTYPE_F32, _BF16 or _F16), scored directly:
     * widened exactly in registers as each tile is laid out, never copied whole. With
     * queries_f32. With segments, each segment carries its own (typed_keys, keys_dtype) and
     * this must be NULL. */
    kvfuse_dtype keys_dtype;
    const void* keys;
    /* V4: where the keys are (keys_f32, keys, keys_i8 or keys_i4; with segments each segment
     * has these fields instead, and these must be 0), as kvfuse_rope_args describes a side
     * ("RoPE on strided and paged caches": strides, the block table, how llama.cpp's and vLLM's
     * caches map on them), in elements of the key array: bytes for int8, packed bytes for int4
     * (key_head_stride 0: (head_dim + 1) / 2). Candidate j is token key_token_offset + j of the
     * table's sequence. All 0 / NULL: packed [candidates x Hkv x D], as before. The result is bit
     * for bit that of the same keys packed.
     * int8 / int4 keys take the layout too, but their key_scales stay [candidates x Hkv], packed:
     * those keys are kvfuse's own quantizer output (a scale per (token, head), each chunk's mean
     * removed), which the quantizer writes packed per chunk; an engine's quantized KV cache (per
     * tensor or per head scales, no mean removed) is another format that these paths cannot
     * read. From such a cache, score its f32 / bf16 / f16 keys, or quantize them per request. */
    size_t key_token_stride;
    size_t key_head_stride;
    const int32_t* key_block_table;
    size_t key_block_size;
    size_t key_block_stride;
    size_t key_blocks_total;
    size_t key_token_offset;
} kvfuse_relevance_args;

/* V1: the f32 and int8 paths, fields up to `out`; keys_i4 and the segments read as NULL / 0.
 * V2: up to `segments`; keys_dtype and keys read as f32 / NULL. V3: up to `keys`; the key
 * layout reads as packed. V4: this header's struct. */
#define KVFUSE_RELEVANCE_ARGS_SIZE_V1 offsetof(kvfuse_relevance_args, keys_i4)
#define KVFUSE_RELEVANCE_ARGS_SIZE_V2 offsetof(kvfuse_relevance_args, keys_dtype)
#define KVFUSE_RELEVANCE_ARGS_SIZE_V3 offsetof(kvfuse_relevance_args, key_token_stride)
#define KVFUSE_RELEVANCE_ARGS_SIZE_V4 sizeof(kvfuse_relevance_args)

KVFUSE_INLINE void kvfuse_relevance_args_init(kvfuse_relevance_args* args) {
    memset(args, 0, sizeof *args);
    args->struct_size = sizeof *args;
}

/* A3 relevance: heads merged into one logit per (question row m, key j) =
 * sum_h q_h . k_(h / group) / sqrt(H * D); question row m sees key j only if
 * j <= candidates - M + m; softmax per row in f32; column sums over the rows for the document
 * keys; optional smoothing. Integer dot products are exact; scales applied per (row, head). */
KVFUSE_API kvfuse_status kvfuse_a3_relevance(const kvfuse_relevance_args* args);

/* The integer dot-product schemes kvfuse_a3_relevance runs on the active ISA, for int8 and for
 * int4 keys: "pairs_s16" (two s16 products per 32-bit lane: pmaddwd), "quads_u8s8_s16" (int4:
 * four u8 x s8 per lane, pmaddubsw with s16 sums), "quads_u8s8" (VNNI vpdpbusd), "quads_s8s8"
 * (NEON sdot), or "reference" on the scalar ISA. Static strings; either pointer may be null. */
KVFUSE_API kvfuse_status kvfuse_relevance_dot_schemes(const char** int8_keys, const char** int4_keys);

/* ---- row selection: A3 or CacheBlend in one call ----------------------------------------
 * Candidates are the document rows [P, P + documents) of a request laid out as prefix (P rows,
 * never candidates) | documents | question (M rows). The call scores them and returns the ids
 * of the k best, ascending (P + index): the rows a fusion pipeline recomputes besides its
 * prefix and question rows. */
typedef enum kvfuse_select_method {
    KVFUSE_SELECT_A3 = 0,         /* the question's queries against the candidates' keys (A3 relevance) */
    KVFUSE_SELECT_CACHEBLEND = 1, /* KV deviation: sum over the row of (fresh - reused)^2 */
    KVFUSE_SELECT_METHOD_MIN_ENUM = -0x7fffffff - 1,
    KVFUSE_SELECT_METHOD_MAX_ENUM = 0x7fffffff
} kvfuse_select_method;

typedef enum kvfuse_key_precision {
    KVFUSE_KEYS_F32 = 0,  /* f32 queries and keys */
    KVFUSE_KEYS_INT8 = 1, /* int8 keys (stored, or quantized by the call) and int8 queries */
    KVFUSE_KEYS_INT4 = 2, /* int4 keys (stored, or quantized by the call) and int8 queries */
    KVFUSE_KEY_PRECISION_MIN_ENUM = -0x7fffffff - 1,
    KVFUSE_KEY_PRECISION_MAX_ENUM = 0x7fffffff
} kvfuse_key_precision;

/* A3: consecutive candidate keys kept in one frame: a stored chunk's keys at the positions it
 * was computed at (position_shift = its fused position - its stored position), or keys already
 * in the request's frame (shift 0). The question's queries are rotated back by the shift, so the
 * keys are read as they are. */
typedef struct kvfuse_select_segment {
    size_t struct_size;       /* kvfuse_select_segment_init sets it; the same in every element */
    size_t tokens;
    int64_t position_shift;
    const float* keys_f32;    /* tokens x kv_heads x head_dim, row stride key_row_stride (0: packed) */
    size_t key_row_stride;
    /* The segment's stored quantized form (kvfuse_quantize_keys_i8/_i4 over these keys), read
     * when the precision asks for it; NULL: the call quantizes keys_f32 itself. */
    const int8_t* keys_i8;
    const uint8_t* keys_i4;
    const float* key_scales;  /* tokens x kv_heads */
    const float* key_means;   /* kv_heads x head_dim: its mean, returned to the logits as the bias
                               * sum_h q_h . mean_(h / group) when there are several segments */
    /* V2: keys of keys_dtype (f32, bf16 or f16; llama.cpp's f16 cache), instead of keys_f32,
     * row stride key_row_stride in its elements: read in place (scored by the f32 path without
     * a copy, or quantized straight from them by kvfuse_quantize_keys_*_typed) */
    kvfuse_dtype keys_dtype;
    const void* keys;
    /* V3: where the keys (keys_f32 or keys) are, as the key_* fields of kvfuse_relevance_args
     * (V4) and a side of kvfuse_rope_args describe it ("RoPE on strided and paged caches": the
     * block table, how llama.cpp's and vLLM's caches map on it), in elements of the keys' type;
     * key_row_stride above is the token stride (key_token_stride there). The segment's token j is
     * token key_token_offset + j of the table's sequence: a chunk placed in an engine's paged
     * cache, or the question's keys read where the engine wrote them. Every table entry the call
     * reads is checked before any kernel runs (KVFUSE_ERROR_INVALID_ARGUMENT naming
     * segments[i].key_block_table[b]). All 0 / NULL: token-major rows key_row_stride apart, as
     * in V1 / V2. Scores and rows are bit for bit those of the same keys packed, at every
     * precision: the f32 path reads the layout in place, and so does the quantizer of int8 /
     * int4 keys quantized by the call (no packed copy). Stored quantized keys (keys_i8 /
     * keys_i4) stay packed: the layout applies to keys_f32 / keys only. */
    size_t key_head_stride;
    const int32_t* key_block_table;
    size_t key_block_size;
    size_t key_block_stride;
    size_t key_blocks_total;
    size_t key_token_offset;
} kvfuse_select_segment;

/* V1: up to key_means (f32 keys). V2: up to keys (f32 / bf16 / f16 keys, token-major rows). V3:
 * this header's struct. The library steps through the array by the elements' struct_size (every
 * element the same). */
#define KVFUSE_SELECT_SEGMENT_SIZE_V1 offsetof(kvfuse_select_segment, keys_dtype)
#define KVFUSE_SELECT_SEGMENT_SIZE_V2 offsetof(kvfuse_select_segment, key_head_stride)
#define KVFUSE_SELECT_SEGMENT_SIZE_V3 sizeof(kvfuse_select_segment)

/* Every field 0 / NULL, struct_size set. */
KVFUSE_INLINE void kvfuse_select_segment_init(kvfuse_select_segment* segment) {
    memset(segment, 0, sizeof *segment);
    segment->struct_size = sizeof *segment;
}

typedef struct kvfuse_select_args {
    size_t struct_size;   /* kvfuse_select_args_init sets it */
    kvfuse_select_method method;
    size_t prefix_rows;   /* P */
    size_t documents;     /* candidate rows */
    size_t question_rows; /* M (A3: > 0) */
    size_t k;             /* rows to select; 0: floor(ratio * (P + documents)) (ALGORITHMS.md's r (T - M)) */
    double ratio;         /* in [0, 1], used when k = 0 */
    /* A3 */
    size_t query_heads;   /* H, a multiple of kv_heads */
    size_t kv_heads;
    size_t head_dim;
    const float* queries; /* M x H x head_dim, the question rows' queries at their fused positions */
    size_t query_row_stride;          /* elements; 0: packed */
    kvfuse_key_precision key_precision;
    int smoothing;                    /* width-5 moving average of the relevance */
    const kvfuse_rope_config* rope;   /* the model's RoPE; needed when a shift is not 0 */
    size_t segment_count;             /* the keys of the documents, then of the question, in order: */
    const kvfuse_select_segment* segments; /* tokens add up to documents + M */
    /* CacheBlend: the documents' rows (kv_heads x head_dim each, e.g. V at the check layer)
     * freshly computed and as reused from the stored caches */
    const float* fresh;
    size_t fresh_row_stride;          /* elements; 0: packed */
    const float* reused;
    size_t reused_row_stride;
    /* outputs */
    int64_t* rows;        /* room for min(k, documents) ids */
    size_t rows_capacity;
    size_t* row_count;    /* ids written */
    float* scores;        /* optional (NULL): the documents' scores */
} kvfuse_select_args;

#define KVFUSE_SELECT_ARGS_SIZE_V1 sizeof(kvfuse_select_args)

/* Every field 0 / NULL (method A3, f32 keys), struct_size set. */
KVFUSE_INLINE void kvfuse_select_args_init(kvfuse_select_args* args) {
    memset(args, 0, sizeof *args);
    args->struct_size = sizeof *args;
}

/* Row selection on the calling thread's default context: kvfuse_ctx_select_rows(NULL, args). */
KVFUSE_API kvfuse_status kvfuse_select_rows(const kvfuse_select_args* args);

/* ---- dense layers (GEMM) ----------------------------------------------------------------
 * C[n x out] = A[n x in] W^T (+ beta C): a linear layer over n tokens, W its [out x in] weight
 * matrix (out rows of in, like a BLAS call with W transposed). W is packed once into an opaque
 * handle (weights are constant; pack them at model load) and the handle is then read-only:
 * several threads may run kvfuse_gemm on one handle at once. The packed layout is the same for
 * every ISA, so a handle stays valid when the ISA is forced afterwards. */

typedef struct kvfuse_packed_weights kvfuse_packed_weights;

/* Packs W [out x in] of src_dtype (row stride row_stride >= in, in elements) as packed_dtype:
 * KVFUSE_DTYPE_F32, or KVFUSE_DTYPE_BF16 (half the memory; f32 weights rounded to nearest even;
 * faster where the CPU has AVX512-BF16). out and in must be > 0. On success *packed owns the
 * copy (free it with kvfuse_packed_weights_free); on failure *packed is NULL. */
KVFUSE_API kvfuse_status kvfuse_pack_weights(kvfuse_dtype src_dtype, const void* weights, size_t out, size_t in,
                                             size_t row_stride, kvfuse_dtype packed_dtype,
                                             kvfuse_packed_weights** packed);
/* Frees a handle (NULL is ignored). */
KVFUSE_API void kvfuse_packed_weights_free(kvfuse_packed_weights* packed);
/* The handle's sizes and packed type; any output pointer may be NULL. */
KVFUSE_API kvfuse_status kvfuse_packed_weights_info(const kvfuse_packed_weights* packed, size_t* out, size_t* in,
                                                    kvfuse_dtype* packed_dtype);

/* C[i][j] = beta * C[i][j] + sum_k A[i][k] W[j][k] for i < n, j < out; row strides (elements)
 * lda >= in and ldc >= out. beta = 0 overwrites C without reading it (a NaN there does not
 * leak in). Sums are f32 (with FMA); NaN and Inf propagate as in plain f32 arithmetic. With
 * bf16 weights the activations are rounded to bf16 (nearest even) before the products, on
 * every ISA, and sums are f32. With block-quantized weights (kvfuse_pack_quantized_weights) A
 * is quantized to int8 per block of 32 as described there. C must not overlap A. Runs on the calling thread's default context
 * (kvfuse_ctx_gemm for another): threads > 0 uses at most that many OpenMP threads (and at most
 * 256); 0 the OpenMP default (one thread for products too small to gain from more). Results do
 * not depend on the thread count. n = 0 is valid (nothing to do). */
KVFUSE_API kvfuse_status kvfuse_gemm(const kvfuse_packed_weights* weights, const float* a, size_t n, size_t lda,
                                     float beta, float* c, size_t ldc, int threads);

/* Block-quantized weights (the block types of GGUF files: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K,
 * Q5_K all have this form exactly): W[j][k] = scales[j][b] * codes[j][k] - offsets[j][b] with
 * b = k / 32, integer codes in [0, 2^code_bits); Q6_K has the V3 form below. kvfuse_gemm multiplies such weights with the
 * activations quantized to int8 (below) on the CPU's integer dot (VNNI vpdpbusd, pmaddubsw,
 * NEON sdot). */
typedef struct kvfuse_quantized_weights {
    size_t struct_size;    /* kvfuse_quantized_weights_init sets it */
    size_t out, in;        /* W is [out x in]; in must be a multiple of 32 */
    int code_bits;         /* 8 (packed as KVFUSE_DTYPE_Q8_BLOCK32) or 4 (KVFUSE_DTYPE_Q4_BLOCK32, or
                              KVFUSE_DTYPE_Q4_SUPER256 with sub_scales below), or 6 (V3:
                              KVFUSE_DTYPE_Q6_SUPER256 with signed_sub_scales below) */
    const uint8_t* codes;  /* out rows of in codes, one byte each, row stride codes_stride bytes */
    size_t codes_stride;   /* >= in */
    const float* scales;   /* out rows of in / 32, row stride block_stride floats */
    const float* offsets;  /* the same shape as scales */
    size_t block_stride;   /* >= in / 32 */
    /* V2 (appended): the compact two-level form, used when sub_scales is set (code_bits 4,
     * scales and offsets NULL; packed as KVFUSE_DTYPE_Q4_SUPER256): block b of row j has
     * scale = super_scales[j][b / 8] * sub_scales[j][b] and offset = super_offsets[j][b / 8] *
     * sub_offsets[j][b], each one f32 product (exact when the super value is an f16 one, as in
     * Q4_K: 11 + 8 significant bits). Sub values share block_stride; super values super_stride. */
    const uint8_t* sub_scales;
    const uint8_t* sub_offsets;
    const float* super_scales;  /* out rows of ceil(in / 256) */
    const float* super_offsets;
    size_t super_stride;        /* >= ceil(in / 256) */
    /* V3 (appended): Q6_K's form, used when code_bits is 6 (scales, offsets, sub_scales,
     * sub_offsets and super_offsets NULL; packed as KVFUSE_DTYPE_Q6_SUPER256): W[j][k] =
     * super_scales[j][k / 256] * signed_sub_scales[j][k / 16] * (codes[j][k] - 32), codes in
     * [0, 64), the super value's product with a sub-scale one f32 product (exact for an f16
     * super value, as in Q6_K: 11 + 8 bits) and its product with a code exact too (11 + 8 + 6
     * bits fit f32's 24, since |sub| <= 128 and |u - 32| <= 32). */
    const int8_t* signed_sub_scales; /* out rows of in / 16, row stride signed_sub_stride */
    size_t signed_sub_stride;        /* >= in / 16 */
} kvfuse_quantized_weights;

#define KVFUSE_QUANTIZED_WEIGHTS_SIZE_V1 offsetof(kvfuse_quantized_weights, sub_scales)
#define KVFUSE_QUANTIZED_WEIGHTS_SIZE_V2 offsetof(kvfuse_quantized_weights, signed_sub_scales)
#define KVFUSE_QUANTIZED_WEIGHTS_SIZE_V3 sizeof(kvfuse_quantized_weights)

KVFUSE_INLINE void kvfuse_quantized_weights_init(kvfuse_quantized_weights* w) {
    memset(w, 0, sizeof *w);
    w->struct_size = sizeof *w;
}

/* Packs block-quantized W into a handle for kvfuse_gemm (exactly: no value is requantized). A
 * code >= 2^code_bits is an error. 4-bit codes take 6 bits a weight packed (4 + a float scale
 * and offset per 32), 8-bit 10, the two-level form (sub_scales set) 4.75; its products are
 * bit-identical to those of the one-level form with the same (f32 product) scales and offsets. kvfuse_gemm then quantizes each row of A per block of 32 k to
 * int8: d = max|a| / 127, q = round-to-nearest-even(a * (1 / d)) (d = 0: q = 0), and returns
 * C[i][j] = beta C[i][j] + sum over blocks of (s d (sum_k u q) - m d (sum_k q)), that is the
 * product of W with the dequantized activations d q, in f32 (the integer sums are exact). A
 * block of A holding a NaN or an infinity makes that row's outputs NaN. Results do not depend
 * on the thread count.
 * Q6_K's form (code_bits 6, 6.625 bits a weight packed; Q6_K's file has 6.5625) uses the same
 * activations; per block of 32 the integer D = sub0 (sum_k u q - 32 sum_k q) + sub1 (the same
 * over the block's second 16 k) is exact (|D| < 2^24), and the block adds float(D) * (super d)
 * to the f32 sum. */
KVFUSE_API kvfuse_status kvfuse_pack_quantized_weights(const kvfuse_quantized_weights* weights,
                                                       kvfuse_packed_weights** packed);

/* The integer dot kvfuse_gemm uses for block-quantized weights on the active ISA: "vpdpbusd"
 * (AVX512-VNNI, AVX-VNNI), "pmaddubsw" (AVX2, AVX-512 without VNNI; 8-bit codes as widened
 * pmaddwd pairs), "sdot" (NEON dotprod), "emulated" (plain NEON) or "reference". Static. */
KVFUSE_API kvfuse_status kvfuse_gemm_int8_scheme(const char** scheme);

/* How kvfuse_gemm multiplies bf16 weights on the active ISA: "dpbf16ps" (AVX512-BF16),
 * "widened_fma" (bf16 pairs widened to f32 in registers, then FMAs) or "reference". Static. */
KVFUSE_API kvfuse_status kvfuse_gemm_bf16_scheme(const char** scheme);

/* ---- tuning ------------------------------------------------------------------------------
 * Kernel parameters a per-machine tuning run (`kvfuse tune`) chooses. They change speed only,
 * never results. At start-up the library loads the tuning profile the environment variable
 * KVFUSE_PROFILE names ("none" or unset: built-in defaults); it reads no other file on its own.
 * A program that wants this machine's profile loads it with kvfuse_load_profile
 * (kvfuse_default_profile_path says where `kvfuse tune` writes it; the `kvfuse` program does
 * this when KVFUSE_PROFILE is unset). A profile made for another CPU, ISA, core count, cache size or
 * kvfuse version, one that does not parse or validate, or a path that is not a regular file (a
 * directory, a FIFO -- never waited on --, a device) is ignored and reported by
 * kvfuse_profile_status; the defaults stay. A profile also records the ISA each kernel runs on
 * ("kernel_isa": kernel name -> ISA name or "auto"); an unknown name, or an ISA this build or
 * CPU cannot run, makes the whole profile ignored. */

typedef struct kvfuse_tuning {
    size_t struct_size;            /* kvfuse_tuning_init sets it */
    uint32_t attention_key_tile;   /* keys per attention tile: 32, 64 or 128; 0 = from L1 size */
    uint32_t attention_row_block;  /* selected rows sharing one tile: 1..64 */
    uint32_t score_query_rows;     /* scoring register block: 2, 4 or 6 query rows */
    uint32_t topk_sample;          /* top-k bracket sample: a power of two, 256..16384 */
    uint64_t rope_parallel_work;   /* below this many elements a call runs on one thread */
    uint64_t attention_parallel_work; /* in multiply-adds */
    uint64_t score_parallel_work;     /* in multiply-adds */
    uint64_t topk_parallel_work;      /* kvfuse_topk_batched: rows of fewer scores run on one thread */
    /* V2: the quantizers (kvfuse_quantize_*, and those kvfuse_select_rows runs): a call of fewer
     * input values (tokens x heads x head_dim) runs on one thread; default 65536 (64 K values,
     * ~20 us on one core: below that, starting workers costs more than it saves) */
    uint64_t quantize_parallel_work;
} kvfuse_tuning;

/* V1: up to topk_parallel_work (quantize_parallel_work reads as its default). V2: this header's. */
#define KVFUSE_TUNING_SIZE_V1 offsetof(kvfuse_tuning, quantize_parallel_work)
#define KVFUSE_TUNING_SIZE_V2 sizeof(kvfuse_tuning)

/* Every field 0, struct_size set: fill it with kvfuse_default_tuning or kvfuse_get_tuning. */
KVFUSE_INLINE void kvfuse_tuning_init(kvfuse_tuning* tuning) {
    memset(tuning, 0, sizeof *tuning);
    tuning->struct_size = sizeof *tuning;
}
/* The built-in defaults (the attention tile seeded from this machine's L1 size), written up to
 * tuning->struct_size. */
KVFUSE_API kvfuse_status kvfuse_default_tuning(kvfuse_tuning* tuning);
/* The parameters in force, written up to tuning->struct_size. */
KVFUSE_API kvfuse_status kvfuse_get_tuning(kvfuse_tuning* tuning);
/* Validates and applies; NULL restores the defaults. Affects calls that start afterwards. */
KVFUSE_API kvfuse_status kvfuse_set_tuning(const kvfuse_tuning* tuning);
/* Reads a profile, checks it was made for this machine, kvfuse version and the ISA in use,
 * and applies it (parameters and per-kernel ISAs). On failure nothing changes and the error
 * says why: KVFUSE_ERROR_IO when the path cannot be opened or is not a regular file,
 * KVFUSE_ERROR_BAD_PROFILE otherwise. */
KVFUSE_API kvfuse_status kvfuse_load_profile(const char* path);
/* Writes `tuning` as this machine's profile (JSON), with the per-kernel ISA choices now in
 * force from a profile or kvfuse_set_kernel_isa (not those of KVFUSE_ISA or kvfuse_force_isa),
 * and `measurements_json` (a JSON object or NULL) kept as a record of how it was chosen. Written to a temporary file and renamed;
 * missing directories are created. */
KVFUSE_API kvfuse_status kvfuse_save_profile(const char* path, const kvfuse_tuning* tuning,
                                             const char* measurements_json);
/* Where this machine's profile lives by default: $XDG_CACHE_HOME/kvfuse/tuning/<key>.json
 * (else ~/.cache/...), <key> naming the CPU, ISA in use, core count and cache sizes. */
KVFUSE_API kvfuse_status kvfuse_default_profile_path(char* path, size_t size);
/* One line: which profile is in force, or why none is. */
KVFUSE_API const char* kvfuse_profile_status(void);

/* ---- execution context -------------------------------------------------------------------
 * An engine creates a context once (per engine thread, or per stream of requests) and passes it
 * to the kvfuse_ctx_* forms of the kernel calls. A context carries:
 *   - how many workers a call may use: threads = 1 runs every call on the calling thread alone
 *     and never starts an OpenMP team; threads = N at most N; threads = 0 OpenMP's default
 *     (omp_get_max_threads() at the time of the call). Small calls use one worker whatever the
 *     count (the *_parallel_work thresholds of the tuning);
 *   - optionally the engine's own parallel-for: a call's workers then run as the engine's tasks,
 *     never on OpenMP threads (OpenMP stays the default when none is given);
 *   - its own scratch memory, kept and reused: once a call has run at a shape (warm-up), later
 *     calls at that shape or a smaller one make no heap allocation (on the SIMD ISAs; the scalar
 *     ISA runs the plain reference code, which does). What a call needs is allocated before any
 *     worker starts, so running out of memory is KVFUSE_ERROR_OUT_OF_MEMORY, never an abort;
 *   - its own tuning: the values given, else the built-in defaults. No profile file is read
 *     unless use_process_tuning asks for the process-wide tuning (kvfuse_set_tuning, and the
 *     start-up profile, which is then loaded as for the calls without a context).
 * A context serves one call at a time: a call on a context another call is using fails with
 * KVFUSE_ERROR_INVALID_ARGUMENT (never a data race). Give each engine thread its own; any number
 * of contexts may run at once. A NULL context is the calling thread's default context (threads
 * 0, the process-wide tuning): what the calls without _ctx_ use. The ISA the kernels run on
 * stays process-wide (KVFUSE_ISA, kvfuse_force_isa, kvfuse_set_kernel_isa). */

typedef struct kvfuse_context kvfuse_context;

/* One task of a parallel-for, called with index in [0, n_tasks). */
typedef void (*kvfuse_task_fn)(void* task_arg, size_t index);
/* The engine's parallel-for: runs task(task_arg, i) once for every i in [0, n_tasks) and returns
 * when every one has returned. The tasks may run at once or one after another, in any order, on
 * any threads (the calling one included): kvfuse never has a task wait for one that has not
 * started. kvfuse's tasks do not throw, do not allocate and do not call back into the engine. */
typedef void (*kvfuse_parallel_for_fn)(void* user, size_t n_tasks, kvfuse_task_fn task, void* task_arg);

typedef struct kvfuse_context_options {
    size_t struct_size;                  /* kvfuse_context_options_init sets it */
    int threads;                         /* workers per call: 0 = OpenMP default, 1 = the calling
                                            thread only, N = at most N; >= 1 with parallel_for */
    kvfuse_parallel_for_fn parallel_for; /* optional: run the workers on the engine's pool */
    void* parallel_for_user;             /* passed to parallel_for as `user` */
    const kvfuse_tuning* tuning;         /* optional, copied: NULL = the built-in defaults */
    int use_process_tuning;              /* 1: follow the process-wide tuning instead (loads the
                                            start-up profile); tuning must then be NULL */
} kvfuse_context_options;

#define KVFUSE_CONTEXT_OPTIONS_SIZE_V1 sizeof(kvfuse_context_options)

/* threads 1, no parallel_for, built-in tuning: a context that never starts a thread. */
KVFUSE_INLINE void kvfuse_context_options_init(kvfuse_context_options* options) {
    memset(options, 0, sizeof *options);
    options->struct_size = sizeof *options;
    options->threads = 1;
}
/* Validates the options (and options->tuning, a versioned struct too) and creates a context;
 * *context is NULL on failure. */
KVFUSE_API kvfuse_status kvfuse_context_create(const kvfuse_context_options* options, kvfuse_context** context);
/* Frees the context and its scratch (NULL is ignored). Not while a call is using it. */
KVFUSE_API void kvfuse_context_destroy(kvfuse_context* context);
/* The context's tuning: validated and applied to its later calls (NULL: built-in defaults). A
 * context that follows the process-wide tuning stops following it. */
KVFUSE_API kvfuse_status kvfuse_context_set_tuning(kvfuse_context* context, const kvfuse_tuning* tuning);
/* The tuning the context's next call runs with. */
KVFUSE_API kvfuse_status kvfuse_context_get_tuning(const kvfuse_context* context, kvfuse_tuning* tuning);
/* Bytes of the context's scratch block now (grown to its largest call so far; the per-worker
 * RoPE tables and top-k buffers, and kvfuse_ctx_select_rows's buffers, come on top). */
KVFUSE_API kvfuse_status kvfuse_context_scratch_bytes(const kvfuse_context* context, size_t* bytes);

/* The kernel calls with a context; each is the call of the same name without _ctx_. */
KVFUSE_API kvfuse_status kvfuse_ctx_rope_rotate(kvfuse_context* context, const kvfuse_rope_config* config,
                                                kvfuse_dtype dtype, void* keys, size_t tokens, size_t heads,
                                                size_t token_stride, const int64_t* deltas);
KVFUSE_API kvfuse_status kvfuse_ctx_rope_rotate_span(kvfuse_context* context, const kvfuse_rope_config* config,
                                                     kvfuse_dtype dtype, void* keys, size_t tokens, size_t heads,
                                                     size_t token_stride, int64_t delta);
KVFUSE_API kvfuse_status kvfuse_ctx_rope_rotate_copy(kvfuse_context* context, const kvfuse_rope_config* config,
                                                     kvfuse_dtype dtype, const void* src, size_t src_token_stride,
                                                     void* dst, size_t dst_token_stride, size_t tokens, size_t heads,
                                                     const int64_t* deltas);
KVFUSE_API kvfuse_status kvfuse_ctx_rope_rotate_span_copy(kvfuse_context* context, const kvfuse_rope_config* config,
                                                          kvfuse_dtype dtype, const void* src,
                                                          size_t src_token_stride, void* dst,
                                                          size_t dst_token_stride, size_t tokens, size_t heads,
                                                          int64_t delta);
KVFUSE_API kvfuse_status kvfuse_ctx_rope_rotate_layout(kvfuse_context* context, const kvfuse_rope_args* args);
KVFUSE_API kvfuse_status kvfuse_ctx_sparse_attention(kvfuse_context* context, const kvfuse_attention_args* args);
KVFUSE_API kvfuse_status kvfuse_ctx_topk(kvfuse_context* context, const float* scores, size_t n, size_t k,
                                         kvfuse_topk_order order, int64_t* indices, size_t* count);
KVFUSE_API kvfuse_status kvfuse_ctx_topk_batched(kvfuse_context* context, const float* scores, size_t rows,
                                                 size_t n, size_t row_stride, size_t k, kvfuse_topk_order order,
                                                 int64_t* indices, size_t indices_stride);
KVFUSE_API kvfuse_status kvfuse_ctx_a3_relevance(kvfuse_context* context, const kvfuse_relevance_args* args);
KVFUSE_API kvfuse_status kvfuse_ctx_quantize_keys_i8(kvfuse_context* context, const float* keys, size_t tokens,
                                                     size_t kv_heads, size_t head_dim, size_t token_stride, int8_t* out,
                                                     float* scales, float* means);
KVFUSE_API kvfuse_status kvfuse_ctx_quantize_keys_i4(kvfuse_context* context, const float* keys, size_t tokens,
                                                     size_t kv_heads, size_t head_dim, size_t token_stride, uint8_t* out,
                                                     float* scales, float* means);
KVFUSE_API kvfuse_status kvfuse_ctx_quantize_rows_i8(kvfuse_context* context, const float* x, size_t rows, size_t heads,
                                                     size_t head_dim, size_t row_stride, int8_t* out, float* scales);
KVFUSE_API kvfuse_status kvfuse_ctx_quantize_keys_i8_typed(kvfuse_context* context, kvfuse_dtype dtype, const void* keys,
                                                           size_t tokens, size_t kv_heads, size_t head_dim,
                                                           size_t token_stride, int8_t* out, float* scales, float* means);
KVFUSE_API kvfuse_status kvfuse_ctx_quantize_keys_i4_typed(kvfuse_context* context, kvfuse_dtype dtype, const void* keys,
                                                           size_t tokens, size_t kv_heads, size_t head_dim,
                                                           size_t token_stride, uint8_t* out, float* scales, float* means);
KVFUSE_API kvfuse_status kvfuse_ctx_quantize_rows_i8_typed(kvfuse_context* context, kvfuse_dtype dtype, const void* x,
                                                           size_t rows, size_t heads, size_t head_dim, size_t row_stride,
                                                           int8_t* out, float* scales);
/* Row selection (kvfuse_select_rows) with every step on the context: the RoPE of the queries into
 * each segment's frame, the quantizers, the relevance and the top-k run on the context's workers
 * (its thread count or its parallel_for: no OpenMP team with a parallel_for or threads = 1), and
 * the call's working memory (rotated and quantized queries, keys quantized by the call, the
 * scores) is the context's, kept: after a call at a shape, calls at that shape or a smaller one
 * make no heap allocation (SIMD ISAs, as above). The steps run one after another within this one
 * call's hold on the context. */
KVFUSE_API kvfuse_status kvfuse_ctx_select_rows(kvfuse_context* context, const kvfuse_select_args* args);
/* kvfuse_gemm on the context: at most its thread count of workers (one for products below 2^20
 * multiply-adds), its parallel-for if it has one, and the packed activations in its scratch
 * (no heap allocation after a call at that shape or a larger one). Bit for bit kvfuse_gemm's
 * result, whatever the worker count. */
KVFUSE_API kvfuse_status kvfuse_ctx_gemm(kvfuse_context* context, const kvfuse_packed_weights* weights, const float* a,
                                         size_t n, size_t lda, float beta, float* c, size_t ldc);

/* ---- topology and thread placement ------------------------------------------------------ */

typedef struct kvfuse_topology {
    size_t struct_size;                    /* kvfuse_topology_init sets it */
    int packages, numa_nodes, cores, pus; /* pus: hardware threads */
    int pus_per_core;                      /* 1 = no SMT */
    int64_t l1d_bytes, l2_bytes;           /* per core; 0 = unknown */
    int64_t l3_bytes;                      /* per package; 0 = unknown or implausible (a VM can
                                              report the whole host's) */
    int from_hwloc;                        /* 0: hwloc unavailable, counts from the OS only */
} kvfuse_topology;

#define KVFUSE_TOPOLOGY_SIZE_V1 sizeof(kvfuse_topology)

KVFUSE_INLINE void kvfuse_topology_init(kvfuse_topology* topology) {
    memset(topology, 0, sizeof *topology);
    topology->struct_size = sizeof *topology;
}
/* Fills *topology up to its struct_size. */
KVFUSE_API kvfuse_status kvfuse_get_topology(kvfuse_topology* topology);

typedef struct kvfuse_placement_options {
    size_t struct_size; /* kvfuse_placement_options_init sets it */
    int threads;      /* 0: one per physical core (or per PU with use_smt), or one per listed core */
    int use_smt;      /* also place threads on SMT siblings */
    const int* cores; /* optional: the cores (PUs with use_smt) to use, by hwloc logical index, in
                         thread order; NULL = the first ones */
    int core_count;   /* entries in cores */
} kvfuse_placement_options;

#define KVFUSE_PLACEMENT_OPTIONS_SIZE_V1 sizeof(kvfuse_placement_options)

/* threads 0, no SMT, no core list. */
KVFUSE_INLINE void kvfuse_placement_options_init(kvfuse_placement_options* options) {
    memset(options, 0, sizeof *options);
    options->struct_size = sizeof *options;
}

/* Sets the OpenMP thread count and pins each OpenMP worker to its own core (the first PU of
 * each core, or every PU with use_smt), in hwloc's order. The pinning holds for later parallel
 * regions of the same size (libgomp keeps its threads). Writes one line per thread, "thread i
 * -> PU p (core c)", to `description` when given. Fails cleanly when hwloc is unavailable. */
KVFUSE_API kvfuse_status kvfuse_place_threads(const kvfuse_placement_options* options, char* description,
                                              size_t description_size);

/* Large buffers on the NUMA node(s) of the threads that use them: memory bound (hwloc) to the
 * nodes holding the PUs of the last kvfuse_place_threads call, else those the calling thread
 * may run on. Page-granular: meant for caches of a MiB or more. Without hwloc, or when binding
 * is refused, plain page-aligned memory (first touch places it). `node` (optional) gets the
 * node's OS index when the memory is bound to exactly one, else -1. Free with
 * kvfuse_free_local and the same size. */
KVFUSE_API kvfuse_status kvfuse_alloc_local(size_t bytes, void** memory, int* node);
KVFUSE_API void kvfuse_free_local(void* memory, size_t bytes);

/* ---- bf16 and f16 helpers ---------------------------------------------------------------- */

/* Round-to-nearest-even f32 -> bf16 (NaN stays NaN), and the exact widening. */
KVFUSE_API kvfuse_status kvfuse_f32_to_bf16(const float* src, uint16_t* dst, size_t count);
KVFUSE_API kvfuse_status kvfuse_bf16_to_f32(const uint16_t* src, float* dst, size_t count);
/* f32 -> IEEE binary16, round to nearest even (as F16C's vcvtps2ph with imm 0 and AArch64's
 * fcvt): results below the smallest subnormal round to +-0, beyond 65504 to +-Inf; a NaN stays
 * a NaN with its sign and the top 10 bits of its payload, quieted. The widening is exact
 * (subnormals included); a signalling NaN comes back quieted. On the active ISA's instructions,
 * bit for bit the same on every ISA. */
KVFUSE_API kvfuse_status kvfuse_f32_to_f16(const float* src, uint16_t* dst, size_t count);
KVFUSE_API kvfuse_status kvfuse_f16_to_f32(const uint16_t* src, float* dst, size_t count);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* KVFUSE_KVFUSE_H */
