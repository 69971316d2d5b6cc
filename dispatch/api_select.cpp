// kvfuse_select_rows: a request's row selection in one call (A3 relevance or CacheBlend's KV
// deviation, then top-k), so that an engine does not carry the glue between the kernels: the
// question's queries rotated back into each stored chunk's frame, the quantization of what is
// not stored quantized, the mean bias of every segment, the segments, the count from a ratio.
// Built on the exported entry points (their checks and kernels), so it is ISA-neutral.
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "dispatch/api_checks.h"
#include "dispatch/errors.h"
#include "dispatch/struct_versions.h"
#include "kvfuse/kvfuse.h"

namespace {

using kvfuse::detail::CheckedSize;
using kvfuse::detail::check_enum;
using kvfuse::detail::check_size;
using kvfuse::detail::enum_value;
using kvfuse::detail::fail;

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

// One segment's keys in the form the precision reads: f32 / bf16 / f16 in place (the f32 path
// widens them in registers), stored quantized, or quantized here straight from them.
struct SegmentKeys {
    const void* typed = nullptr;  // f32 path: keys of `dtype`, rows `stride` elements apart
    kvfuse_dtype dtype = KVFUSE_DTYPE_F32;
    std::size_t stride = 0;
    const std::int8_t* i8 = nullptr;
    const std::uint8_t* i4 = nullptr;
    const float* scales = nullptr;
    const float* means = nullptr;
    std::vector<float> own_scales, own_means;
    std::vector<std::int8_t> own_i8;
    std::vector<std::uint8_t> own_i4;
};

kvfuse_status segment_keys(const kvfuse_select_segment& seg, std::size_t index, kvfuse_key_precision precision,
                           std::size_t kv_heads, std::size_t head_dim, SegmentKeys& out) {
    const std::size_t kv_row = kv_heads * head_dim, stride = seg.key_row_stride ? seg.key_row_stride : kv_row;
    const std::string which = "segment " + std::to_string(index);
    const bool stored = precision == KVFUSE_KEYS_INT8 ? seg.keys_i8 != nullptr : precision == KVFUSE_KEYS_INT4 && seg.keys_i4 != nullptr;
    if (stored) {
        if (seg.key_scales == nullptr || seg.key_means == nullptr)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, which + ": stored quantized keys need key_scales and key_means");
        out.i8 = seg.keys_i8, out.i4 = seg.keys_i4, out.scales = seg.key_scales, out.means = seg.key_means;
        return KVFUSE_OK;
    }
    if (seg.keys_f32 != nullptr && seg.keys != nullptr)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, which + ": give keys_f32 or keys (with keys_dtype), not both");
    if (seg.keys_f32 == nullptr && seg.keys == nullptr)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, which + ": no keys (keys_f32 and keys are null)");
    if (seg.keys != nullptr)
        if (auto s = kvfuse::detail::check_dtype((which + ": keys_dtype").c_str(), enum_value(seg.keys_dtype)); s != KVFUSE_OK)
            return s;
    const kvfuse_dtype dtype = seg.keys_f32 != nullptr ? KVFUSE_DTYPE_F32 : seg.keys_dtype;
    const void* keys = seg.keys_f32 != nullptr ? static_cast<const void*>(seg.keys_f32) : seg.keys;
    if (stride < kv_row) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, which + ": key_row_stride < kv_heads * head_dim");
    if (precision == KVFUSE_KEYS_F32) {
        out.typed = keys, out.dtype = dtype, out.stride = stride;
        return KVFUSE_OK;
    }
    out.own_scales.resize(seg.tokens * kv_heads);
    out.own_means.resize(kv_row);
    kvfuse_status s;
    if (precision == KVFUSE_KEYS_INT8) {
        out.own_i8.resize(seg.tokens * kv_row);
        s = kvfuse_quantize_keys_i8_typed(dtype, keys, seg.tokens, kv_heads, head_dim, stride, out.own_i8.data(),
                                          out.own_scales.data(), out.own_means.data());
        out.i8 = out.own_i8.data();
    } else {
        out.own_i4.resize(seg.tokens * kv_heads * ((head_dim + 1) / 2));
        s = kvfuse_quantize_keys_i4_typed(dtype, keys, seg.tokens, kv_heads, head_dim, stride, out.own_i4.data(),
                                          out.own_scales.data(), out.own_means.data());
        out.i4 = out.own_i4.data();
    }
    out.scales = out.own_scales.data();
    out.means = out.own_means.data();
    return s;
}

// A3 relevance of the documents into `scores`.
kvfuse_status a3_scores(const kvfuse_select_args& a, float* scores) {
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
    std::vector<kvfuse_select_segment> segment_list(a.segment_count);
    for (std::size_t g = 0; g < a.segment_count; ++g) {
        if (kvfuse::detail::struct_size_of(reinterpret_cast<const kvfuse_select_segment*>(
                reinterpret_cast<const char*>(a.segments) + g * element)) != element)
            return fail(KVFUSE_ERROR_STRUCT_SIZE, "segments[" + std::to_string(g) +
                                                      "]->struct_size differs from segments[0]'s: every element of the "
                                                      "array must be the same version");
        segment_list[g] = select_segment_at(a.segments, g);
    }
    const kvfuse_select_segment* seg_of = segment_list.data();
    if (auto s = check_enum("key_precision", enum_value(a.key_precision), 3, "KVFUSE_KEYS_F32, _INT8 or _INT4"); s != KVFUSE_OK)
        return s;
    const std::size_t q_row = H * D, q_stride = a.query_row_stride ? a.query_row_stride : q_row, segments = a.segment_count;
    if (q_stride < q_row) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "query_row_stride < query_heads * head_dim");
    CheckedSize keys = 0;
    for (std::size_t g = 0; g < segments; ++g) {
        keys = keys + seg_of[g].tokens;
        if (seg_of[g].position_shift != 0 && a.rope == nullptr)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "a segment is shifted: the RoPE configuration (rope) is needed");
    }
    if (auto s = check_size("the segments' tokens", keys * Hkv * D * sizeof(float)); s != KVFUSE_OK) return s;
    if (keys.value() != CheckedSize(a.documents).value() + M)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "the segments' tokens must add up to documents + question_rows");
    if (auto s = check_size("the rotated queries", CheckedSize(segments) * M * q_row * sizeof(float)); s != KVFUSE_OK) return s;

    // Each segment's queries, packed, in its frame.
    std::vector<float> queries(segments * M * q_row);
    for (std::size_t g = 0; g < segments; ++g) {
        float* dst = queries.data() + g * M * q_row;
        const std::int64_t shift = seg_of[g].position_shift;
        if (shift == 0) {
            for (std::size_t m = 0; m < M; ++m) std::memcpy(dst + m * q_row, a.queries + m * q_stride, q_row * sizeof(float));
        } else if (auto s = kvfuse_rope_rotate_span_copy(a.rope, KVFUSE_DTYPE_F32, a.queries, q_stride, dst, q_row, M, H, -shift);
                   s != KVFUSE_OK) {
            return s;
        }
    }
    std::vector<SegmentKeys> keys_of(segments);
    for (std::size_t g = 0; g < segments; ++g)
        if (auto s = segment_keys(seg_of[g], g, a.key_precision, Hkv, D, keys_of[g]); s != KVFUSE_OK) return s;

    const bool quantized = a.key_precision != KVFUSE_KEYS_F32;
    std::vector<std::int8_t> queries_i8;
    std::vector<float> query_scales, bias;
    if (quantized) {
        queries_i8.resize(queries.size());
        query_scales.resize(segments * M * H);
        if (auto s = kvfuse_quantize_rows_i8(queries.data(), segments * M, H, D, q_row, queries_i8.data(), query_scales.data());
            s != KVFUSE_OK)
            return s;
    }

    kvfuse_relevance_args r;
    kvfuse_relevance_args_init(&r);
    r.question_rows = M;
    r.candidates = a.documents + M;
    r.query_heads = H;
    r.kv_heads = Hkv;
    r.head_dim = D;
    r.smoothing = a.smoothing ? 1 : 0;
    r.out = scores;
    if (segments == 1) {
        // One mean for every candidate: a shift shared by every logit of a row, which softmax
        // ignores, so no bias (and no segment) is needed.
        const SegmentKeys& k = keys_of[0];
        r.queries_f32 = queries.data();
        r.keys = k.typed;
        r.keys_dtype = k.dtype;
        r.key_token_stride = k.typed != nullptr ? k.stride : 0;
        r.queries_i8 = quantized ? queries_i8.data() : nullptr;
        r.query_scales = quantized ? query_scales.data() : nullptr;
        r.keys_i8 = k.i8;
        r.keys_i4 = k.i4;
        r.key_scales = k.scales;
        if (a.key_precision == KVFUSE_KEYS_INT8) r.keys_i4 = nullptr;
        if (a.key_precision == KVFUSE_KEYS_INT4) r.keys_i8 = nullptr;
        return kvfuse_a3_relevance(&r);
    }
    if (quantized) {
        // Each segment's keys lack their own mean: returned as one logit per question row,
        // sum_h q_h . mean_(h / group), from the f32 queries in the segment's frame.
        const std::size_t group = H / Hkv;
        bias.assign(segments * M, 0.0f);
        for (std::size_t g = 0; g < segments; ++g)
            for (std::size_t m = 0; m < M; ++m) {
                const float* q = queries.data() + (g * M + m) * q_row;
                double dot = 0.0;
                for (std::size_t h = 0; h < H; ++h)
                    for (std::size_t d = 0; d < D; ++d) dot += static_cast<double>(q[h * D + d]) * keys_of[g].means[(h / group) * D + d];
                bias[g * M + m] = static_cast<float>(dot);
            }
    }
    std::vector<kvfuse_relevance_segment> list(segments);
    for (std::size_t g = 0; g < segments; ++g) {
        kvfuse_relevance_segment& seg = list[g];
        kvfuse_relevance_segment_init(&seg);
        seg.keys = seg_of[g].tokens;
        if (!quantized) {
            seg.queries_f32 = queries.data() + g * M * q_row;
            seg.typed_keys = keys_of[g].typed;
            seg.keys_dtype = keys_of[g].dtype;
            seg.key_token_stride = keys_of[g].stride;
            continue;
        }
        seg.queries_i8 = queries_i8.data() + g * M * q_row;
        seg.query_scales = query_scales.data() + g * M * H;
        seg.bias = bias.data() + g * M;
        seg.key_scales = keys_of[g].scales;
        if (a.key_precision == KVFUSE_KEYS_INT4)
            seg.keys_i4 = keys_of[g].i4;
        else
            seg.keys_i8 = keys_of[g].i8;
    }
    r.segment_count = segments;
    r.segments = list.data();
    return kvfuse_a3_relevance(&r);
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

kvfuse_status select_rows(const kvfuse_select_args* caller_args) {
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
    std::vector<float> own;
    float* scores = a->scores;
    if (scores == nullptr) {
        own.resize(a->documents);
        scores = own.data();
    }
    const kvfuse_status scored = a->method == KVFUSE_SELECT_A3 ? a3_scores(*a, scores) : cacheblend_scores(*a, scores);
    if (scored != KVFUSE_OK) return scored;
    std::size_t count = 0;
    if (k > 0) {
        if (auto s = kvfuse_topk(scores, a->documents, k, KVFUSE_TOPK_BY_POSITION, a->rows, &count); s != KVFUSE_OK) return s;
        for (std::size_t i = 0; i < count; ++i) a->rows[i] += static_cast<std::int64_t>(a->prefix_rows);
    }
    *a->row_count = count;
    return KVFUSE_OK;
}

}  // namespace

extern "C" kvfuse_status kvfuse_select_rows(const kvfuse_select_args* args) {
    return kvfuse::detail::guarded("kvfuse_select_rows", [&] { return select_rows(args); });
}
