// kvfuse_select_rows: a request's row selection in one call (A3 relevance or CacheBlend's KV
// deviation, then top-k), so that an engine does not carry the glue between the kernels: the
// question's queries rotated back into each stored chunk's frame, the quantization of what is
// not stored quantized, the mean bias of every segment, the segments, the count from a ratio.
// Built on the exported entry points (their checks and kernels), so it is ISA-neutral: it holds
// its context for the whole call and lends it to each step (dispatch/context.h, LendContext), so
// that every step runs on the context's workers and scratch; its own buffers are the context's
// SelectScratch, reused from call to call.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "dispatch/api_checks.h"
#include "dispatch/api_internal.h"
#include "dispatch/context.h"
#include "dispatch/errors.h"
#include "dispatch/layout_checks.h"
#include "dispatch/select_scratch.h"
#include "dispatch/struct_versions.h"
#include "kvfuse/kvfuse.h"

namespace {

using kvfuse::detail::CheckedSize;
using kvfuse::detail::check_enum;
using kvfuse::detail::check_size;
using kvfuse::detail::enum_value;
using kvfuse::detail::fail;
using kvfuse::detail::KeyLayout;
using kvfuse::detail::LendContext;
using kvfuse::detail::SelectScratch;
using kvfuse::detail::SelectSegmentKeys;

// Element i of the caller's segment array, stepping by the elements' struct_size (checked: a
// known version, the same in every element), the fields past that version at their defaults.
kvfuse_select_segment select_segment_at(const kvfuse_select_segment* segments, std::size_t i) {
    const std::size_t size = kvfuse::detail::struct_size_of(segments);
    kvfuse_select_segment g;
    kvfuse_select_segment_init(&g);
    std::memcpy(static_cast<void*>(&g), reinterpret_cast<const char*>(segments) + i * size, size);
    g.struct_size = sizeof g;
    return g;
}

// The f32 / bf16 / f16 keys of a segment that the call reads (all but stored quantized keys):
// their type, base and resolved layout, checked (every block table entry included).
struct KeySource {
    kvfuse_dtype dtype = KVFUSE_DTYPE_F32;
    const void* base = nullptr;
    KeyLayout layout;
};

kvfuse_status key_source(const kvfuse_select_segment& seg, std::size_t index, std::size_t kv_heads, std::size_t head_dim,
                         KeySource& out) {
    if (seg.keys_f32 != nullptr && seg.keys != nullptr)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                    "segments[" + std::to_string(index) + "]: give keys_f32 or keys (with keys_dtype), not both");
    if (seg.keys_f32 == nullptr && seg.keys == nullptr)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "segments[" + std::to_string(index) + "]: no keys (keys_f32 and keys are null)");
    // The name is built only for an error: a call with a context allocates nothing once warm.
    if (seg.keys != nullptr && kvfuse::detail::check_dtype("keys_dtype", enum_value(seg.keys_dtype)) != KVFUSE_OK)
        return kvfuse::detail::check_dtype(("segments[" + std::to_string(index) + "].keys_dtype").c_str(),
                                           enum_value(seg.keys_dtype));
    out.dtype = seg.keys_f32 != nullptr ? KVFUSE_DTYPE_F32 : seg.keys_dtype;
    out.base = seg.keys_f32 != nullptr ? static_cast<const void*>(seg.keys_f32) : seg.keys;
    if (seg.tokens == 0) return KVFUSE_OK;  // nothing is read
    const std::size_t element = kvfuse::detail::dtype_bytes(out.dtype);
    const kvfuse::detail::LayoutFields fields{out.base,          seg.key_row_stride,  seg.key_head_stride,
                                              seg.key_block_table, seg.key_block_size, seg.key_block_stride,
                                              seg.key_blocks_total, seg.key_token_offset};
    kvfuse::detail::LayoutExtent extent;
    if (auto s = kvfuse::detail::resolve_layout("key_", index, fields, seg.tokens, kv_heads, head_dim, element, out.layout,
                                                extent, "row_stride");
        s != KVFUSE_OK)
        return s;
    return KVFUSE_OK;
}

// A3 relevance of the documents into `scores`, every step on the held context `ctx`.
kvfuse_status a3_scores(kvfuse_context& ctx, SelectScratch& sc, const kvfuse_select_args& a, float* scores) {
    const std::size_t M = a.question_rows, H = a.query_heads, Hkv = a.kv_heads, D = a.head_dim;
    if (M == 0) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "A3 needs at least one question row");
    if (H == 0 || Hkv == 0 || D == 0 || H % Hkv != 0)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "query_heads, kv_heads and head_dim must be > 0, query_heads a multiple of kv_heads");
    if (auto s = check_size("query_heads * head_dim", CheckedSize(H) * D * sizeof(float)); s != KVFUSE_OK) return s;
    if (a.queries == nullptr) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "queries is null");
    if (a.segment_count == 0 || a.segments == nullptr) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "A3 needs at least one key segment");
    if (auto s = kvfuse::detail::check_aligned("segments", a.segments, alignof(kvfuse_select_segment)); s != KVFUSE_OK) return s;
    // The array is stepped through by its elements' struct_size: a known version, the same in each.
    if (auto s = kvfuse::detail::check_struct_size("segments[0]", &a.segments[0]); s != KVFUSE_OK) return s;
    const std::size_t element = kvfuse::detail::struct_size_of(&a.segments[0]);
    if (auto s = kvfuse::detail::check_span("segments (segment_count)", a.segment_count, element, element, 1); s != KVFUSE_OK)
        return s;
    if (auto s = check_enum("key_precision", enum_value(a.key_precision), 3, "KVFUSE_KEYS_F32, _INT8 or _INT4"); s != KVFUSE_OK)
        return s;
    const std::size_t q_row = H * D, q_stride = a.query_row_stride ? a.query_row_stride : q_row, segments = a.segment_count;
    if (q_stride < q_row) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "query_row_stride < query_heads * head_dim");
    for (std::size_t g = 0; g < segments; ++g)
        if (kvfuse::detail::struct_size_of(reinterpret_cast<const kvfuse_select_segment*>(
                reinterpret_cast<const char*>(a.segments) + g * element)) != element)
            return fail(KVFUSE_ERROR_STRUCT_SIZE, "segments[" + std::to_string(g) +
                                                      "]->struct_size differs from segments[0]'s: every element of the "
                                                      "array must be the same version");
    CheckedSize keys = 0;
    for (std::size_t g = 0; g < segments; ++g) {
        const kvfuse_select_segment seg = select_segment_at(a.segments, g);
        keys = keys + seg.tokens;
        if (seg.position_shift != 0 && a.rope == nullptr)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "a segment is shifted: the RoPE configuration (rope) is needed");
    }
    if (auto s = check_size("the segments' tokens", keys * Hkv * D * sizeof(float)); s != KVFUSE_OK) return s;
    if (keys.value() != CheckedSize(a.documents).value() + M)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "the segments' tokens must add up to documents + question_rows");
    if (auto s = check_size("the rotated queries", CheckedSize(segments) * M * q_row * sizeof(float)); s != KVFUSE_OK) return s;

    // Every buffer sized before anything is written into one (a resize may move a vector).
    const kvfuse_key_precision precision = a.key_precision;
    const bool quantized = precision != KVFUSE_KEYS_F32;
    const std::size_t head_bytes = precision == KVFUSE_KEYS_INT4 ? (D + 1) / 2 : D;
    sc.segments.resize(segments);
    sc.keys.resize(segments);
    std::size_t own_tokens = 0;  // keys the call quantizes
    for (std::size_t g = 0; g < segments; ++g) {
        kvfuse_select_segment& seg = sc.segments[g];
        seg = select_segment_at(a.segments, g);
        SelectSegmentKeys& k = sc.keys[g];
        k = SelectSegmentKeys{};
        const bool stored = precision == KVFUSE_KEYS_INT8 ? seg.keys_i8 != nullptr : precision == KVFUSE_KEYS_INT4 && seg.keys_i4 != nullptr;
        if (stored) {
            if (seg.key_scales == nullptr || seg.key_means == nullptr)
                return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                            "segment " + std::to_string(g) + ": stored quantized keys need key_scales and key_means");
            k.i8 = seg.keys_i8, k.i4 = seg.keys_i4, k.scales = seg.key_scales, k.means = seg.key_means;
            continue;
        }
        KeySource source;
        if (auto s = key_source(seg, g, Hkv, D, source); s != KVFUSE_OK) return s;
        k.typed = source.base, k.dtype = source.dtype;
        if (!quantized) continue;
        own_tokens += seg.tokens;
    }
    sc.queries.resize(segments * M * q_row);
    if (quantized) {
        sc.queries_i8.resize(segments * M * q_row);
        sc.query_scales.resize(segments * M * H);
        sc.bias.resize(segments * M);
        if (precision == KVFUSE_KEYS_INT8)
            sc.keys_i8.resize(own_tokens * Hkv * head_bytes);
        else
            sc.keys_i4.resize(own_tokens * Hkv * head_bytes);
        sc.key_scales.resize(own_tokens * Hkv);
        sc.key_means.resize(segments * Hkv * D);
    }
    sc.relevance.resize(segments);

    // Each segment's queries, packed, in its frame.
    for (std::size_t g = 0; g < segments; ++g) {
        float* dst = sc.queries.data() + g * M * q_row;
        const std::int64_t shift = sc.segments[g].position_shift;
        if (shift == 0) {
            for (std::size_t m = 0; m < M; ++m) std::memcpy(dst + m * q_row, a.queries + m * q_stride, q_row * sizeof(float));
            continue;
        }
        LendContext lend(ctx);
        if (auto s = kvfuse_ctx_rope_rotate_span_copy(&ctx, a.rope, KVFUSE_DTYPE_F32, a.queries, q_stride, dst, q_row, M, H, -shift);
            s != KVFUSE_OK)
            return s;
    }
    if (!quantized) {
        if (segments == 1) {
            // One frame, one set of keys: the top-level fields (no segment needed).
            const kvfuse_select_segment& seg = sc.segments[0];
            kvfuse_relevance_args r;
            kvfuse_relevance_args_init(&r);
            r.question_rows = M, r.candidates = a.documents + M, r.query_heads = H, r.kv_heads = Hkv, r.head_dim = D;
            r.smoothing = a.smoothing ? 1 : 0;
            r.out = scores;
            r.queries_f32 = sc.queries.data();
            r.keys = sc.keys[0].typed;
            r.keys_dtype = sc.keys[0].dtype;
            r.key_token_stride = seg.key_row_stride, r.key_head_stride = seg.key_head_stride;
            r.key_block_table = seg.key_block_table, r.key_block_size = seg.key_block_size;
            r.key_block_stride = seg.key_block_stride, r.key_blocks_total = seg.key_blocks_total;
            r.key_token_offset = seg.key_token_offset;
            LendContext lend(ctx);
            return kvfuse_ctx_a3_relevance(&ctx, &r);
        }
        for (std::size_t g = 0; g < segments; ++g) {
            const kvfuse_select_segment& seg = sc.segments[g];
            kvfuse_relevance_segment& r = sc.relevance[g];
            kvfuse_relevance_segment_init(&r);
            r.keys = seg.tokens;
            r.queries_f32 = sc.queries.data() + g * M * q_row;
            r.typed_keys = sc.keys[g].typed;
            r.keys_dtype = sc.keys[g].dtype;
            r.key_token_stride = seg.key_row_stride, r.key_head_stride = seg.key_head_stride;
            r.key_block_table = seg.key_block_table, r.key_block_size = seg.key_block_size;
            r.key_block_stride = seg.key_block_stride, r.key_blocks_total = seg.key_blocks_total;
            r.key_token_offset = seg.key_token_offset;
        }
    } else {
        // Keys not stored quantized: quantized here, read where their layout puts them.
        std::size_t own = 0;
        for (std::size_t g = 0; g < segments; ++g) {
            SelectSegmentKeys& k = sc.keys[g];
            const kvfuse_select_segment& seg = sc.segments[g];
            if (k.typed == nullptr) continue;  // stored
            KeySource source;
            if (auto s = key_source(seg, g, Hkv, D, source); s != KVFUSE_OK) return s;
            float* scales = sc.key_scales.data() + own * Hkv;
            float* means = sc.key_means.data() + g * Hkv * D;
            LendContext lend(ctx);
            void* out;
            if (precision == KVFUSE_KEYS_INT8) {
                std::int8_t* i8 = sc.keys_i8.data() + own * Hkv * head_bytes;
                k.i8 = i8, out = i8;
            } else {
                std::uint8_t* i4 = sc.keys_i4.data() + own * Hkv * head_bytes;
                k.i4 = i4, out = i4;
            }
            const kvfuse_status s = kvfuse::detail::quantize_keys_in_layout(
                ctx, source.dtype, source.base, seg.tokens, Hkv, D, source.layout, precision == KVFUSE_KEYS_INT8 ? 8 : 4, out,
                scales, means);
            if (s != KVFUSE_OK) return s;
            k.scales = scales, k.means = means;
            own += seg.tokens;
        }
        {
            LendContext lend(ctx);
            if (auto s = kvfuse_ctx_quantize_rows_i8(&ctx, sc.queries.data(), segments * M, H, D, q_row, sc.queries_i8.data(),
                                                     sc.query_scales.data());
                s != KVFUSE_OK)
                return s;
        }
        // With several segments, each one's keys lack their own mean: returned as one logit per
        // question row, sum_h q_h . mean_(h / group), from the f32 queries in the segment's frame.
        // (With one, a shift shared by every logit of a row, which softmax ignores.)
        const std::size_t group = H / Hkv;
        for (std::size_t g = 0; g < segments; ++g)
            for (std::size_t m = 0; m < M; ++m) {
                double dot = 0.0;
                if (segments > 1) {
                    const float* q = sc.queries.data() + (g * M + m) * q_row;
                    for (std::size_t h = 0; h < H; ++h)
                        for (std::size_t d = 0; d < D; ++d)
                            dot += static_cast<double>(q[h * D + d]) * sc.keys[g].means[(h / group) * D + d];
                }
                sc.bias[g * M + m] = static_cast<float>(dot);
            }
        for (std::size_t g = 0; g < segments; ++g) {
            kvfuse_relevance_segment& r = sc.relevance[g];
            kvfuse_relevance_segment_init(&r);
            r.keys = sc.segments[g].tokens;
            r.queries_i8 = sc.queries_i8.data() + g * M * q_row;
            r.query_scales = sc.query_scales.data() + g * M * H;
            r.bias = segments > 1 ? sc.bias.data() + g * M : nullptr;
            r.key_scales = sc.keys[g].scales;
            if (precision == KVFUSE_KEYS_INT4)
                r.keys_i4 = sc.keys[g].i4;
            else
                r.keys_i8 = sc.keys[g].i8;
        }
    }
    kvfuse_relevance_args r;
    kvfuse_relevance_args_init(&r);
    r.question_rows = M, r.candidates = a.documents + M, r.query_heads = H, r.kv_heads = Hkv, r.head_dim = D;
    r.smoothing = a.smoothing ? 1 : 0;
    r.out = scores;
    r.segment_count = segments;
    r.segments = sc.relevance.data();
    LendContext lend(ctx);
    return kvfuse_ctx_a3_relevance(&ctx, &r);
}

// CacheBlend's deviation of every document row, summed in row order in f32.
kvfuse_status cacheblend_scores(const kvfuse_select_args& a, float* scores) {
    const std::size_t width = a.kv_heads * a.head_dim;
    if (a.kv_heads == 0 || a.head_dim == 0) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "kv_heads and head_dim must be > 0");
    if (a.fresh == nullptr || a.reused == nullptr) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "CacheBlend needs fresh and reused rows");
    const std::size_t fresh_stride = a.fresh_row_stride ? a.fresh_row_stride : width,
                      reused_stride = a.reused_row_stride ? a.reused_row_stride : width;
    if (fresh_stride < width || reused_stride < width)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "row strides must be >= kv_heads * head_dim");
    for (const std::size_t stride : {fresh_stride, reused_stride})
        if (auto s = kvfuse::detail::check_span("the rows (documents x stride)", a.documents, stride, width, sizeof(float)); s != KVFUSE_OK)
            return s;
    for (std::size_t j = 0; j < a.documents; ++j) {
        const float* fresh = a.fresh + j * fresh_stride;
        const float* reused = a.reused + j * reused_stride;
        float deviation = 0.0f;
        for (std::size_t e = 0; e < width; ++e) deviation += (fresh[e] - reused[e]) * (fresh[e] - reused[e]);
        scores[j] = deviation;
    }
    return KVFUSE_OK;
}

kvfuse_status select_rows(kvfuse_context* context, const kvfuse_select_args* caller_args) {
    kvfuse_select_args args;  // the defaults, then as many fields as the caller's version has
    kvfuse_select_args_init(&args);
    if (auto s = kvfuse::detail::read_struct("args", caller_args, args); s != KVFUSE_OK) return s;
    const kvfuse_select_args* a = &args;
    if (auto s = check_enum("method", enum_value(a->method), 2, "KVFUSE_SELECT_A3 or KVFUSE_SELECT_CACHEBLEND"); s != KVFUSE_OK)
        return s;
    if (a->row_count == nullptr) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "row_count is null");
    std::size_t k = a->k;
    if (k == 0) {
        if (!(a->ratio >= 0.0 && a->ratio <= 1.0)) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "ratio must be in [0, 1] when k is 0");
        const CheckedSize base = CheckedSize(a->prefix_rows) + a->documents;
        if (auto s = check_size("prefix_rows + documents", base); s != KVFUSE_OK) return s;
        k = static_cast<std::size_t>(std::floor(a->ratio * static_cast<double>(base.value())));
    }
    k = std::min(k, a->documents);
    if (k > 0 && (a->rows == nullptr || a->rows_capacity < k))
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "rows must hold the " + std::to_string(k) + " selected ids");
    if (auto s = check_size("the scores", CheckedSize(a->documents) * sizeof(float)); s != KVFUSE_OK) return s;
    // One hold on the context for the whole call; its steps run inside it (LendContext).
    kvfuse::detail::ContextCall call(context);
    if (call.status() != KVFUSE_OK) return call.status();
    kvfuse_context& ctx = call.context();
    if (ctx.select == nullptr) ctx.select = std::make_unique<SelectScratch>();
    SelectScratch& sc = *ctx.select;
    float* scores = a->scores;
    if (scores == nullptr) {
        sc.scores.resize(a->documents);
        scores = sc.scores.data();
    }
    const kvfuse_status scored = a->method == KVFUSE_SELECT_A3 ? a3_scores(ctx, sc, *a, scores) : cacheblend_scores(*a, scores);
    if (scored != KVFUSE_OK) return scored;
    std::size_t count = 0;
    if (k > 0) {
        LendContext lend(ctx);
        if (auto s = kvfuse_ctx_topk(&ctx, scores, a->documents, k, KVFUSE_TOPK_BY_POSITION, a->rows, &count); s != KVFUSE_OK)
            return s;
        for (std::size_t i = 0; i < count; ++i) a->rows[i] += static_cast<std::int64_t>(a->prefix_rows);
    }
    *a->row_count = count;
    return KVFUSE_OK;
}

}  // namespace

extern "C" kvfuse_status kvfuse_ctx_select_rows(kvfuse_context* context, const kvfuse_select_args* args) {
    return kvfuse::detail::guarded("kvfuse_select_rows", [&] { return select_rows(context, args); });
}

extern "C" kvfuse_status kvfuse_select_rows(const kvfuse_select_args* args) { return kvfuse_ctx_select_rows(nullptr, args); }
