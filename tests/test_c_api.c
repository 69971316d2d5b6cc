/* The C API from C: compiles as C11, links, rotates a key, reports errors, and refuses bad
 * input the way a C caller can pass it: enum arguments holding any int (negative, past the
 * last enumerator), sizes whose products wrap around size_t, NULL and misaligned pointers.
 * Every such call must return an error status with a detail naming the argument, and must not
 * touch the buffers it was given (the ASan+UBSan lane runs this too).
 * With --expect-dispatch-error (run under KVFUSE_ISA=<bad name>) it checks that the library
 * refuses to run kernels with a clear error instead of falling back silently. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kvfuse/kvfuse.h"

static int failures = 0;
#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            ++failures;                                                    \
        }                                                                  \
    } while (0)

/* An error status with a detail that mentions `word`. */
#define CHECK_REFUSED(call, status, word)                                                          \
    do {                                                                                           \
        kvfuse_status got_ = (call);                                                               \
        CHECK(got_ == (status));                                                                   \
        if (got_ != KVFUSE_OK && strstr(kvfuse_last_error(), (word)) == NULL) {                    \
            fprintf(stderr, "%s:%d: detail '%s' does not name '%s'\n", __FILE__, __LINE__,         \
                    kvfuse_last_error(), (word));                                                  \
            ++failures;                                                                            \
        }                                                                                          \
    } while (0)

/* A C caller can put any int in an enum argument or field: negative and past-the-end values
 * must be reported, not used (converting them to the C++ enum would be undefined behaviour). */
static void check_out_of_range_enums(void) {
    const int bad_values[] = {-1, -2147483647 - 1, 2, 3, 17, 0x7fffffff};
    size_t i;
    for (i = 0; i < sizeof bad_values / sizeof bad_values[0]; ++i) {
        const int bad = bad_values[i];
        kvfuse_rope_config config;
        float key[8] = {1, 2, 3, 4, 5, 6, 7, 8};
        float scores[4] = {3, 1, 2, 0};
        int64_t indices[4] = {-7, -7, -7, -7};
        size_t count = 99;
        int64_t rows[1] = {0};
        float dst[8] = {0};
        kvfuse_isa isa = KVFUSE_ISA_SCALAR;

        kvfuse_rope_config_init(&config, 8);
        /* 2 is KVFUSE_DTYPE_F16, a valid dtype: 3 is the first one past the enumerators. */
        if (bad != KVFUSE_DTYPE_F16)
            CHECK_REFUSED(kvfuse_rope_rotate_span(&config, (kvfuse_dtype)bad, key, 1, 1, 8, 1),
                          KVFUSE_ERROR_INVALID_ARGUMENT, "dtype");
        if (bad != 2) { /* 2 is KVFUSE_ROPE_SCALING_LLAMA3, a valid scaling */
            config.scaling = (kvfuse_rope_scaling)bad;
            CHECK_REFUSED(kvfuse_rope_rotate_span(&config, KVFUSE_DTYPE_F32, key, 1, 1, 8, 1),
                          KVFUSE_ERROR_INVALID_ARGUMENT, "scaling");
            config.scaling = KVFUSE_ROPE_SCALING_NONE;
        }
        config.pairing = (kvfuse_rope_pairing)bad;
        CHECK_REFUSED(kvfuse_rope_rotate_span(&config, KVFUSE_DTYPE_F32, key, 1, 1, 8, 1), KVFUSE_ERROR_INVALID_ARGUMENT,
                      "pairing");
        CHECK(key[0] == 1.0f && key[7] == 8.0f); /* untouched */

        CHECK_REFUSED(kvfuse_topk(scores, 4, 2, (kvfuse_topk_order)bad, indices, &count), KVFUSE_ERROR_INVALID_ARGUMENT,
                      "order");
        CHECK(count == 0 && indices[0] == -7);
        CHECK_REFUSED(kvfuse_topk_batched(scores, 1, 4, 4, 2, (kvfuse_topk_order)bad, indices, 2),
                      KVFUSE_ERROR_INVALID_ARGUMENT, "order");
        CHECK(indices[0] == -7);

        if (bad != KVFUSE_DTYPE_F16) {
            CHECK_REFUSED(kvfuse_gather_rows((kvfuse_dtype)bad, key, 1, 8, rows, 1, dst, 8, 8),
                          KVFUSE_ERROR_INVALID_ARGUMENT, "dtype");
            CHECK_REFUSED(kvfuse_scatter_rows((kvfuse_dtype)bad, key, 8, rows, 1, dst, 1, 8, 8),
                          KVFUSE_ERROR_INVALID_ARGUMENT, "dtype");
        }
        CHECK(dst[0] == 0.0f);
        {
            kvfuse_attention_args a;
            float q[8] = {0}, out[8] = {0};
            int64_t pos[1] = {0};
            kvfuse_attention_args_init(&a);
            a.queries = q;
            a.rows = 1;
            a.query_heads = a.kv_heads = 1;
            a.head_dim = a.query_row_stride = a.out_row_stride = a.kv_token_stride = 8;
            a.positions = pos;
            a.keys = a.values = key;
            a.kv_tokens = 1;
            a.scale = 1.0f;
            a.out = out;
            a.kv_dtype = (kvfuse_dtype)bad;
            if (bad != KVFUSE_DTYPE_F16) CHECK_REFUSED(kvfuse_sparse_attention(&a), KVFUSE_ERROR_INVALID_ARGUMENT, "kv_dtype");
        }

        if (bad < 0 || bad >= KVFUSE_ISA_COUNT) CHECK(strcmp(kvfuse_isa_name((kvfuse_isa)bad), "unknown") == 0);
        if (bad < 0 || bad >= KVFUSE_ISA_COUNT) {
            CHECK(kvfuse_isa_compiled((kvfuse_isa)bad) == 0);
            CHECK(kvfuse_isa_supported((kvfuse_isa)bad) == 0);
            CHECK_REFUSED(kvfuse_force_isa((kvfuse_isa)bad), KVFUSE_ERROR_UNKNOWN_ISA, "not known");
            CHECK(kvfuse_active_isa(&isa) == KVFUSE_OK); /* nothing changed */
        }
        if (bad < 0 || bad > KVFUSE_ERROR_STRUCT_SIZE) CHECK(strcmp(kvfuse_status_message((kvfuse_status)bad), "unknown status") == 0);
    }
}

/* Sizes whose products or sums wrap around size_t: each once passed its check and touched the
 * wrong memory (heads = 2^61 + 1 made one key row 4 elements: ASan global-buffer-overflow). */
/* One query row of one head (head_dim 4) against two f32 key/value rows: the valid call each
 * refusal test below starts from. */
static kvfuse_attention_args one_row_attention(const float* q, const int64_t* positions, const float* kv, float* out) {
    kvfuse_attention_args a;
    kvfuse_attention_args_init(&a);
    a.queries = q;
    a.rows = 1;
    a.query_heads = a.kv_heads = 1;
    a.head_dim = a.query_row_stride = a.out_row_stride = a.kv_token_stride = 4;
    a.positions = positions;
    a.keys = a.values = kv;
    a.kv_tokens = 2;
    a.kv_dtype = KVFUSE_DTYPE_F32;
    a.scale = 1.0f;
    a.out = out;
    return a;
}

static void check_wrapping_sizes(void) {
    const size_t huge = (size_t)1 << 62, max = SIZE_MAX;
    kvfuse_rope_config config;
    static float key[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    float dst[8] = {0};
    int64_t rows[2] = {0, 1};
    int64_t indices[8] = {-7, -7, -7, -7, -7, -7, -7, -7};
    float scores[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    uint16_t half[8] = {0};
    int8_t q8[8] = {0};
    float scales[8] = {0}, means[8] = {0};

    kvfuse_rope_config_init(&config, 4);
    /* heads * head_dim = 2^63 + 4 elements, 2^65 + 16 bytes: wraps to 16. */
    CHECK_REFUSED(kvfuse_rope_rotate_span(&config, KVFUSE_DTYPE_F32, key, 1, ((size_t)1 << 61) + 1, max, 1),
                  KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
    CHECK_REFUSED(kvfuse_rope_rotate_span(&config, KVFUSE_DTYPE_BF16, key, 1, ((size_t)1 << 62) + 1, max, 1),
                  KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
    CHECK_REFUSED(kvfuse_rope_rotate_span(&config, KVFUSE_DTYPE_F32, key, 3, 1, huge, 1), KVFUSE_ERROR_INVALID_ARGUMENT,
                  "overflows");
    CHECK_REFUSED(kvfuse_rope_rotate_copy(&config, KVFUSE_DTYPE_F32, key, 4, dst, huge, 2, 1, rows),
                  KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
    CHECK(key[0] == 1.0f && key[4] == 5.0f && dst[0] == 0.0f);

    /* Gather: row 1 of a table whose stride * 4 bytes wraps; scatter: likewise on the dst side. */
    CHECK_REFUSED(kvfuse_gather_rows(KVFUSE_DTYPE_F32, key, 2, huge, rows, 2, dst, 4, 4), KVFUSE_ERROR_INVALID_ARGUMENT,
                  "overflows");
    CHECK_REFUSED(kvfuse_gather_rows(KVFUSE_DTYPE_F32, key, 2, 4, rows, 2, dst, huge, 4), KVFUSE_ERROR_INVALID_ARGUMENT,
                  "overflows");
    CHECK_REFUSED(kvfuse_scatter_rows(KVFUSE_DTYPE_BF16, key, 4, rows, 2, dst, 2, huge * 2, 4),
                  KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
    CHECK_REFUSED(kvfuse_scatter_rows(KVFUSE_DTYPE_F32, key, huge, rows, 2, dst, 2, 4, 4), KVFUSE_ERROR_INVALID_ARGUMENT,
                  "overflows");
    CHECK(dst[0] == 0.0f);

    /* Top-k: rows * indices_stride * 8 bytes wraps (2 rows of stride 2^61). */
    CHECK_REFUSED(kvfuse_topk_batched(scores, 2, 4, 4, 2, KVFUSE_TOPK_BY_SCORE, indices, (size_t)1 << 61),
                  KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
    CHECK_REFUSED(kvfuse_topk_batched(scores, 3, 4, huge, 2, KVFUSE_TOPK_BY_SCORE, indices, 2),
                  KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
    CHECK(indices[0] == -7);
    {
        size_t count = 0;
        CHECK_REFUSED(kvfuse_topk(scores, max / 2, 2, KVFUSE_TOPK_BY_SCORE, indices, &count), KVFUSE_ERROR_INVALID_ARGUMENT,
                      "overflows");
    }

    /* Attention: the key rows, the query rows, heads * head_dim. */
    {
        float q[8] = {0}, out[8] = {0};
        int64_t pos[2] = {0, 1};
        kvfuse_attention_args a = one_row_attention(q, pos, key, out);
        CHECK(kvfuse_sparse_attention(&a) == KVFUSE_OK); /* the baseline is valid */
        a.kv_token_stride = huge;
        CHECK_REFUSED(kvfuse_sparse_attention(&a), KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
        a.kv_token_stride = 4;
        a.rows = 2;
        a.query_row_stride = huge;
        CHECK_REFUSED(kvfuse_sparse_attention(&a), KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
        a.query_row_stride = 4;
        a.query_heads = a.kv_heads = (size_t)1 << 61;
        a.head_dim = 8;
        CHECK_REFUSED(kvfuse_sparse_attention(&a), KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
    }

    /* Quantizers and bf16 conversion. */
    CHECK_REFUSED(kvfuse_quantize_keys_i8(key, 3, 1, 4, huge, q8, scales, means), KVFUSE_ERROR_INVALID_ARGUMENT,
                  "overflows");
    CHECK_REFUSED(kvfuse_quantize_keys_i4(key, 2, (size_t)1 << 61, 4, max, (uint8_t*)q8, scales, means),
                  KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
    CHECK_REFUSED(kvfuse_quantize_rows_i8(key, huge, 1, 4, 4, q8, scales), KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
    CHECK(q8[0] == 0 && scales[0] == 0.0f);
    CHECK_REFUSED(kvfuse_f32_to_bf16(key, half, max / 2), KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
    CHECK_REFUSED(kvfuse_bf16_to_f32(half, dst, max / 4 + 1), KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
    CHECK_REFUSED(kvfuse_f32_to_f16(key, half, max / 2), KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
    CHECK_REFUSED(kvfuse_f16_to_f32(half, dst, max / 4 + 1), KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
    CHECK_REFUSED(kvfuse_quantize_keys_i8_typed(KVFUSE_DTYPE_F16, half, 3, 1, 4, huge, q8, scales, means),
                  KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
    CHECK(half[0] == 0 && dst[0] == 0.0f);

    /* Relevance: keys, queries, and the question_rows x candidates logits. */
    {
        kvfuse_relevance_args r;
        float out[4] = {0};
        kvfuse_relevance_args_init(&r);
        r.question_rows = 1;
        r.candidates = huge;
        r.query_heads = r.kv_heads = 1;
        r.head_dim = 8;
        r.queries_f32 = key;
        r.keys_f32 = key;
        r.out = out;
        CHECK_REFUSED(kvfuse_a3_relevance(&r), KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
        r.head_dim = 1;
        r.candidates = (size_t)1 << 40;
        r.question_rows = (size_t)1 << 30;
        CHECK_REFUSED(kvfuse_a3_relevance(&r), KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
        CHECK(out[0] == 0.0f);
    }
}

static void check_null_pointers(void) {
    float x[8] = {0};
    int64_t rows[1] = {0};
    size_t count = 0;
    kvfuse_tuning tuning;
    CHECK(kvfuse_sparse_attention(NULL) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_a3_relevance(NULL) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_topk(x, 8, 2, KVFUSE_TOPK_BY_SCORE, NULL, &count) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_topk(x, 8, 2, KVFUSE_TOPK_BY_SCORE, (int64_t*)x, NULL) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_topk_batched(NULL, 1, 8, 8, 2, KVFUSE_TOPK_BY_SCORE, (int64_t*)x, 2) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_gather_rows(KVFUSE_DTYPE_F32, x, 1, 8, NULL, 1, x, 8, 8) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_scatter_rows(KVFUSE_DTYPE_F32, NULL, 8, rows, 1, x, 1, 8, 8) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_quantize_keys_i8(x, 1, 1, 8, 8, NULL, x, x) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_quantize_rows_i8(NULL, 1, 1, 8, 8, (int8_t*)x, x) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_f32_to_bf16(NULL, (uint16_t*)x, 1) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_bf16_to_f32((const uint16_t*)x, NULL, 1) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_f32_to_f16(NULL, (uint16_t*)x, 1) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_f16_to_f32((const uint16_t*)x, NULL, 1) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_quantize_rows_i8_typed(KVFUSE_DTYPE_F16, NULL, 1, 1, 8, 8, (int8_t*)x, x) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_ctx_quantize_keys_i8(NULL, x, 1, 1, 8, 8, NULL, x, x) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_ctx_quantize_keys_i4(NULL, x, 1, 1, 8, 8, NULL, x, x) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_ctx_quantize_rows_i8(NULL, NULL, 1, 1, 8, 8, (int8_t*)x, x) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_ctx_quantize_keys_i8_typed(NULL, KVFUSE_DTYPE_F16, NULL, 1, 1, 8, 8, (int8_t*)x, x, x) ==
          KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_ctx_quantize_keys_i4_typed(NULL, KVFUSE_DTYPE_BF16, x, 1, 1, 8, 8, NULL, x, x) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_ctx_quantize_rows_i8_typed(NULL, KVFUSE_DTYPE_F32, x, 1, 1, 8, 8, NULL, x) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_select_rows(NULL) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_ctx_select_rows(NULL, NULL) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_isa_from_name(NULL, NULL) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_active_isa(NULL) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_load_profile(NULL) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_save_profile(NULL, NULL, NULL) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_default_profile_path(NULL, 0) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_get_topology(NULL) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_place_threads(NULL, NULL, 0) == KVFUSE_ERROR_NULL_POINTER);
    {
        void* memory = &count;
        CHECK(kvfuse_alloc_local(4096, NULL, NULL) == KVFUSE_ERROR_NULL_POINTER);
        CHECK_REFUSED(kvfuse_alloc_local(SIZE_MAX - 10, &memory, NULL), KVFUSE_ERROR_INVALID_ARGUMENT, "overflows");
        CHECK(memory == NULL);
    }
    CHECK(kvfuse_get_tuning(NULL) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_default_tuning(NULL) == KVFUSE_ERROR_NULL_POINTER);
    CHECK(kvfuse_get_cpu_features(NULL) == KVFUSE_ERROR_NULL_POINTER);
    kvfuse_tuning_init(&tuning);
    CHECK(kvfuse_get_tuning(&tuning) == KVFUSE_OK);
}

/* A3 relevance of one question row (f32) against two document keys and itself, head_dim 4;
 * the struct as `size` bytes (struct_size = size) followed by garbage, as an older caller's
 * shorter struct would be followed by whatever its memory holds. */
static kvfuse_status relevance_with_size(size_t size, float* out) {
    static const float queries[4] = {1, 0, 0.5f, 0}, keys[12] = {1, 0, 0, 0, 0, 1, 0, 0, 0.5f, 0.5f, 0.5f, 0.5f};
    union {
        kvfuse_relevance_args args;
        unsigned char bytes[sizeof(kvfuse_relevance_args) + 64];
    } storage;
    kvfuse_relevance_args full;
    kvfuse_relevance_args_init(&full);
    full.question_rows = 1;
    full.candidates = 3;
    full.query_heads = full.kv_heads = 1;
    full.head_dim = 4;
    full.queries_f32 = queries;
    full.keys_f32 = keys;
    full.out = out;
    memset(storage.bytes, 0xa5, sizeof storage.bytes); /* keys_i4, segments... read as garbage if read */
    memcpy(storage.bytes, &full, size < sizeof full ? size : sizeof full);
    storage.args.struct_size = size;
    return kvfuse_a3_relevance(&storage.args);
}

/* Versioned structs (kvfuse.h): an older version's size is read with the newer fields at their
 * defaults; a size never set, from a newer header, or between versions is refused and nothing is
 * read or written. */
static void check_struct_sizes(void) {
    float newest[2] = {0, 0}, oldest[2] = {-1, -1};
    CHECK(KVFUSE_RELEVANCE_ARGS_SIZE_V1 < KVFUSE_RELEVANCE_ARGS_SIZE_V2);
    CHECK(KVFUSE_RELEVANCE_ARGS_SIZE_V2 < KVFUSE_RELEVANCE_ARGS_SIZE_V3);
    CHECK(KVFUSE_RELEVANCE_ARGS_SIZE_V3 < KVFUSE_RELEVANCE_ARGS_SIZE_V4);
    CHECK(KVFUSE_SELECT_SEGMENT_SIZE_V1 < KVFUSE_SELECT_SEGMENT_SIZE_V2);
    CHECK(KVFUSE_SELECT_SEGMENT_SIZE_V2 < KVFUSE_SELECT_SEGMENT_SIZE_V3);
    CHECK(KVFUSE_SELECT_SEGMENT_SIZE_V3 == sizeof(kvfuse_select_segment));
    CHECK(KVFUSE_TUNING_SIZE_V1 < KVFUSE_TUNING_SIZE_V2 && KVFUSE_TUNING_SIZE_V2 == sizeof(kvfuse_tuning));
    CHECK(relevance_with_size(KVFUSE_RELEVANCE_ARGS_SIZE_V4, newest) == KVFUSE_OK);
    CHECK(relevance_with_size(KVFUSE_RELEVANCE_ARGS_SIZE_V3, oldest) == KVFUSE_OK);
    CHECK(newest[0] > 0.0f && newest[0] == oldest[0] && newest[1] == oldest[1]);
    CHECK(relevance_with_size(KVFUSE_RELEVANCE_ARGS_SIZE_V2, oldest) == KVFUSE_OK);
    CHECK(newest[0] > 0.0f && newest[0] == oldest[0] && newest[1] == oldest[1]);
    CHECK(relevance_with_size(KVFUSE_RELEVANCE_ARGS_SIZE_V1, oldest) == KVFUSE_OK);
    CHECK(newest[0] > 0.0f && newest[0] == oldest[0] && newest[1] == oldest[1]);
    {
        const size_t bad[] = {0, 4, KVFUSE_RELEVANCE_ARGS_SIZE_V1 + 8, KVFUSE_RELEVANCE_ARGS_SIZE_V4 + 8};
        const char* why[] = {"is not set", "not the size of any version", "not the size of any version", "newer"};
        for (int i = 0; i < 4; ++i) {
            float out[2] = {-1, -1};
            CHECK_REFUSED(relevance_with_size(bad[i], out), KVFUSE_ERROR_STRUCT_SIZE, why[i]);
            CHECK(strstr(kvfuse_last_error(), "args->struct_size") != NULL);
            CHECK(out[0] == -1.0f && out[1] == -1.0f);
        }
    }
    {
        float q[4] = {1, 0, 0, 0}, kv[8] = {1, 0, 0, 0, 0, 1, 0, 0}, out[4] = {0};
        int64_t pos[1] = {1};
        kvfuse_attention_args a = one_row_attention(q, pos, kv, out);
        a.struct_size = 0; /* a struct filled field by field, never initialised */
        CHECK_REFUSED(kvfuse_sparse_attention(&a), KVFUSE_ERROR_STRUCT_SIZE, "kvfuse_attention_args_init");
        a.struct_size = sizeof a + sizeof(void*);
        CHECK_REFUSED(kvfuse_sparse_attention(&a), KVFUSE_ERROR_STRUCT_SIZE, "newer kvfuse.h");
        a.struct_size = KVFUSE_ATTENTION_ARGS_SIZE_V1 + sizeof(size_t); /* between V1 and V2 */
        CHECK_REFUSED(kvfuse_sparse_attention(&a), KVFUSE_ERROR_STRUCT_SIZE, "not the size of any version");
        CHECK(out[0] == 0.0f);
    }
    {
        /* A V1 caller: the V2 fields after its struct_size are never read (garbage there). */
        float q[4] = {1, 0, 0, 0}, kv[8] = {1, 0, 0, 0, 0, 1, 0, 0}, out[4] = {0}, out_v2[4] = {0}, lse[1] = {0};
        int64_t pos[1] = {1};
        kvfuse_attention_args a = one_row_attention(q, pos, kv, out);
        CHECK(KVFUSE_ATTENTION_ARGS_SIZE_V1 < KVFUSE_ATTENTION_ARGS_SIZE_V2);
        CHECK(KVFUSE_ATTENTION_ARGS_SIZE_V2 == sizeof a);
        memset((char*)&a + KVFUSE_ATTENTION_ARGS_SIZE_V1, 0x5a, sizeof a - KVFUSE_ATTENTION_ARGS_SIZE_V1);
        a.struct_size = KVFUSE_ATTENTION_ARGS_SIZE_V1;
        CHECK(kvfuse_sparse_attention(&a) == KVFUSE_OK);
        /* V2 with its log-sum-exp: the same out, and lse = log(e^(1*1) + e^0). */
        a = one_row_attention(q, pos, kv, out_v2);
        a.lse = lse;
        CHECK(kvfuse_sparse_attention(&a) == KVFUSE_OK);
        CHECK(memcmp(out, out_v2, sizeof out) == 0 && out[0] > 0.5f);
        CHECK(lse[0] > 1.3132f && lse[0] < 1.3133f);
    }
    {
        kvfuse_rope_config config;
        float key[4] = {1, 0, 0, 0};
        kvfuse_rope_config_init(&config, 4);
        config.struct_size = KVFUSE_ROPE_CONFIG_SIZE_V1 + 4; /* between V1 and V2 */
        CHECK_REFUSED(kvfuse_rope_rotate_span(&config, KVFUSE_DTYPE_F32, key, 1, 1, 4, 1), KVFUSE_ERROR_STRUCT_SIZE,
                      "config->struct_size");
        CHECK(key[0] == 1.0f);
    }
    {
        /* Output structs are written only up to a size the library knows. */
        kvfuse_tuning tuning;
        kvfuse_topology topology;
        kvfuse_cpu_features features;
        memset(&tuning, 0x5a, sizeof tuning);
        tuning.struct_size = sizeof tuning * 2;
        CHECK_REFUSED(kvfuse_get_tuning(&tuning), KVFUSE_ERROR_STRUCT_SIZE, "newer");
        CHECK(tuning.attention_key_tile == 0x5a5a5a5au);
        memset(&topology, 0x5a, sizeof topology);
        topology.struct_size = 0;
        CHECK_REFUSED(kvfuse_get_topology(&topology), KVFUSE_ERROR_STRUCT_SIZE, "kvfuse_topology_init");
        CHECK(topology.cores == 0x5a5a5a5a);
        kvfuse_cpu_features_init(&features);
        CHECK(kvfuse_get_cpu_features(&features) == KVFUSE_OK);
        features.struct_size = 1;
        CHECK_REFUSED(kvfuse_get_cpu_features(&features), KVFUSE_ERROR_STRUCT_SIZE, "features->struct_size");
        /* A caller built before avx512_vbmi2 (V1) gets the older fields, and that one stays untouched. */
        memset(&features, 0x5a, sizeof features);
        features.struct_size = KVFUSE_CPU_FEATURES_SIZE_V1;
        CHECK(kvfuse_get_cpu_features(&features) == KVFUSE_OK);
        CHECK(features.avx512_vbmi2 == 0x5a5a5a5a && (features.avx2 == 0 || features.avx2 == 1));
        kvfuse_tuning_init(&tuning);
        CHECK(kvfuse_get_tuning(&tuning) == KVFUSE_OK && tuning.attention_row_block > 0);
        tuning.struct_size = 0;
        CHECK_REFUSED(kvfuse_set_tuning(&tuning), KVFUSE_ERROR_STRUCT_SIZE, "tuning->struct_size");
    }
    {
        kvfuse_placement_options options;
        kvfuse_placement_options_init(&options);
        options.struct_size = 3;
        CHECK_REFUSED(kvfuse_place_threads(&options, NULL, 0), KVFUSE_ERROR_STRUCT_SIZE, "options->struct_size");
    }
}

/* Every kernel reads its element type through typed loads: a pointer that is not a multiple of
 * the element size is refused, with the argument named (kvfuse.h, "Pointers"). */
static void check_misaligned_pointers(void) {
    union {
        int64_t align;
        unsigned char bytes[256];
    } storage;
    unsigned char* odd = storage.bytes + 1;
    unsigned char* four = storage.bytes + 4; /* float-aligned, not int64_t-aligned */
    float scores[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    int64_t indices[8];
    size_t count = 0;
    memset(storage.bytes, 0, sizeof storage.bytes);

    CHECK_REFUSED(kvfuse_topk((const float*)odd, 8, 2, KVFUSE_TOPK_BY_SCORE, indices, &count), KVFUSE_ERROR_INVALID_ARGUMENT,
                  "scores");
    CHECK_REFUSED(kvfuse_topk(scores, 8, 2, KVFUSE_TOPK_BY_SCORE, (int64_t*)four, &count), KVFUSE_ERROR_INVALID_ARGUMENT,
                  "indices");
    CHECK_REFUSED(kvfuse_topk_batched(scores, 1, 8, 8, 2, KVFUSE_TOPK_BY_POSITION, (int64_t*)four, 2),
                  KVFUSE_ERROR_INVALID_ARGUMENT, "indices");
    CHECK_REFUSED(kvfuse_f32_to_bf16((const float*)odd, (uint16_t*)indices, 4), KVFUSE_ERROR_INVALID_ARGUMENT, "src");
    CHECK_REFUSED(kvfuse_f32_to_bf16(scores, (uint16_t*)odd, 4), KVFUSE_ERROR_INVALID_ARGUMENT, "dst");
    CHECK_REFUSED(kvfuse_bf16_to_f32((const uint16_t*)odd, scores, 4), KVFUSE_ERROR_INVALID_ARGUMENT, "src");
    CHECK_REFUSED(kvfuse_bf16_to_f32((const uint16_t*)indices, (float*)(storage.bytes + 2), 4),
                  KVFUSE_ERROR_INVALID_ARGUMENT, "dst");
    CHECK(scores[0] == 1.0f);
    {
        float q[4] = {1, 0, 0, 0}, out[4] = {0}, kv[8] = {1, 0, 0, 0, 0, 1, 0, 0};
        int64_t pos[1] = {1};
        kvfuse_attention_args a = one_row_attention(q, pos, kv, out);
        CHECK(kvfuse_sparse_attention(&a) == KVFUSE_OK);
        a.queries = (const float*)odd;
        CHECK_REFUSED(kvfuse_sparse_attention(&a), KVFUSE_ERROR_INVALID_ARGUMENT, "queries");
        a.queries = q;
        a.keys = storage.bytes + 2;
        CHECK_REFUSED(kvfuse_sparse_attention(&a), KVFUSE_ERROR_INVALID_ARGUMENT, "keys");
        a.kv_dtype = KVFUSE_DTYPE_BF16; /* 2-byte alignment is enough for bf16 keys */
        a.values = storage.bytes + 2;
        CHECK(kvfuse_sparse_attention(&a) == KVFUSE_OK);
        a.values = odd;
        CHECK_REFUSED(kvfuse_sparse_attention(&a), KVFUSE_ERROR_INVALID_ARGUMENT, "values");
        a.kv_dtype = KVFUSE_DTYPE_F16; /* and for f16 */
        a.values = storage.bytes + 2;
        CHECK(kvfuse_sparse_attention(&a) == KVFUSE_OK);
        a.values = odd;
        CHECK_REFUSED(kvfuse_sparse_attention(&a), KVFUSE_ERROR_INVALID_ARGUMENT, "values");
        a.kv_dtype = KVFUSE_DTYPE_F32;
        a.keys = a.values = kv;
        a.positions = (const int64_t*)four;
        CHECK_REFUSED(kvfuse_sparse_attention(&a), KVFUSE_ERROR_INVALID_ARGUMENT, "positions");
        a.positions = pos;
        a.out = (float*)odd;
        CHECK_REFUSED(kvfuse_sparse_attention(&a), KVFUSE_ERROR_INVALID_ARGUMENT, "out");
    }
}

int main(int argc, char** argv) {
    kvfuse_rope_config config;
    kvfuse_rope_config_init(&config, 4);
    float key[4] = {1.0f, 0.0f, 0.5f, 0.25f};

    if (argc > 1 && strcmp(argv[1], "--expect-dispatch-error") == 0) {
        kvfuse_isa isa;
        kvfuse_status status = kvfuse_active_isa(&isa);
        CHECK(status == KVFUSE_ERROR_UNKNOWN_ISA || status == KVFUSE_ERROR_UNSUPPORTED_ISA);
        CHECK(strstr(kvfuse_last_error(), "KVFUSE_ISA") != NULL);
        status = kvfuse_rope_rotate_span(&config, KVFUSE_DTYPE_F32, key, 1, 1, 4, 1);
        CHECK(status != KVFUSE_OK);
        CHECK(key[0] == 1.0f); /* untouched */
        printf("dispatch error as expected: %s\n", kvfuse_last_error());
        return failures == 0 ? 0 : 1;
    }

    CHECK(strcmp(kvfuse_version_string(), KVFUSE_VERSION_STRING) == 0);
    CHECK(kvfuse_isa_supported(KVFUSE_ISA_SCALAR) == 1);

    /* NeoX pairs (0,2) and (1,3); pair 0 has frequency 1, so delta 1 turns it by one radian. */
    CHECK(kvfuse_rope_rotate_span(&config, KVFUSE_DTYPE_F32, key, 1, 1, 4, 1) == KVFUSE_OK);
    CHECK(fabsf(key[0] - (cosf(1.0f) - 0.5f * sinf(1.0f))) < 1e-6f);
    CHECK(fabsf(key[2] - (sinf(1.0f) + 0.5f * cosf(1.0f))) < 1e-6f);

    config.rotary_dims = 3;
    CHECK(kvfuse_rope_rotate_span(&config, KVFUSE_DTYPE_F32, key, 1, 1, 4, 1) == KVFUSE_ERROR_INVALID_ARGUMENT);
    CHECK(strstr(kvfuse_last_error(), "rotary_dims") != NULL);
    CHECK(kvfuse_rope_rotate_span(NULL, KVFUSE_DTYPE_F32, key, 1, 1, 4, 1) == KVFUSE_ERROR_NULL_POINTER);

    {
        const char* int8_keys = NULL;
        const char* int4_keys = NULL;
        CHECK(kvfuse_relevance_dot_schemes(&int8_keys, &int4_keys) == KVFUSE_OK);
        CHECK(int8_keys != NULL && int4_keys != NULL && int8_keys[0] != '\0' && int4_keys[0] != '\0');
        CHECK(kvfuse_relevance_dot_schemes(NULL, NULL) == KVFUSE_OK);
    }

    check_out_of_range_enums();
    check_wrapping_sizes();
    check_null_pointers();
    check_misaligned_pointers();
    check_struct_sizes();
    {
        /* Per-kernel ISA from C: scalar for top-k, read back, then back to the active ISA. */
        const kvfuse_isa scalar = KVFUSE_ISA_SCALAR;
        kvfuse_isa active = KVFUSE_ISA_SCALAR, isa = KVFUSE_ISA_AVX2;
        const char* source = NULL;
        kvfuse_kernel kernel = KVFUSE_KERNEL_ROPE;
        CHECK(kvfuse_active_isa(&active) == KVFUSE_OK);
        CHECK(kvfuse_kernel_from_name("topk", &kernel) == KVFUSE_OK && kernel == KVFUSE_KERNEL_TOPK);
        CHECK(kvfuse_set_kernel_isa(KVFUSE_KERNEL_TOPK, &scalar) == KVFUSE_OK);
        CHECK(kvfuse_kernel_isa(KVFUSE_KERNEL_TOPK, &isa, &source) == KVFUSE_OK);
        CHECK(isa == KVFUSE_ISA_SCALAR && source != NULL && strcmp(source, "program") == 0);
        CHECK(kvfuse_set_kernel_isa(KVFUSE_KERNEL_TOPK, NULL) == KVFUSE_OK);
        CHECK(kvfuse_kernel_isa(KVFUSE_KERNEL_TOPK, &isa, NULL) == KVFUSE_OK && isa == active);
        CHECK(strcmp(kvfuse_kernel_name(KVFUSE_KERNEL_RELEVANCE), "relevance") == 0);
    }

    if (failures == 0) printf("C API checks passed\n");
    return failures == 0 ? 0 : 1;
}
