// kvfuse_select_rows, the one-call row selection, against the reference/ functions on every
// kernel build: A3 over stored per-chunk keys in their own frame (f32, and the stored int8 /
// int4 form with its mean bias) and over fused keys, CacheBlend's deviation, ratio and k, and
// its refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "isa_test_support.h"
#include "select_args.h"
#include "kvfuse/kvfuse.h"
#include "reference/rope_reference.h"
#include "reference/score_reference.h"
#include "reference/topk_reference.h"

namespace {

using kvfuse::testing::random_floats;

class SelectTest : public kvfuse::testing::IsaTest {};
KVFUSE_INSTANTIATE_ISA_TESTS(SelectTest);

constexpr std::size_t H = 4, Hkv = 2, D = 16, M = 5, P = 3, kvRow = Hkv * D, qRow = H * D;
const std::vector<std::size_t> kChunkTokens = {23, 17, 30};
constexpr std::int64_t kStoredAt = 1;  // every chunk was computed at positions 1..n

// A request's stored chunks (keys in their own frame, with their quantized forms), the
// question's fresh keys and queries, and the same keys re-rotated into the request's frame.
struct Request {
    kvfuse_rope_config rope{};
    std::vector<std::vector<float>> chunk_keys;
    std::vector<std::int64_t> shifts;
    std::vector<std::vector<std::int8_t>> i8;
    std::vector<std::vector<std::uint8_t>> i4;
    std::vector<std::vector<float>> i8_scales, i8_means, i4_scales, i4_means;
    std::vector<float> question_keys, queries, fused_keys;  // fused: documents then question
    std::size_t documents = 0;

    Request() {
        kvfuse_rope_config_init(&rope, static_cast<std::int32_t>(D));
        std::size_t offset = P;
        for (std::size_t c = 0; c < kChunkTokens.size(); ++c) {
            const std::size_t n = kChunkTokens[c];
            chunk_keys.push_back(random_floats(n * kvRow, 10 + static_cast<std::uint32_t>(c)));
            for (std::size_t e = 0; e < n * kvRow; e += 3) chunk_keys.back()[e] += 2.0f;  // a mean worth removing
            shifts.push_back(static_cast<std::int64_t>(offset) - kStoredAt);
            i8.emplace_back(n * kvRow), i4.emplace_back(n * Hkv * ((D + 1) / 2));
            i8_scales.emplace_back(n * Hkv), i4_scales.emplace_back(n * Hkv), i8_means.emplace_back(kvRow), i4_means.emplace_back(kvRow);
            EXPECT_EQ(kvfuse_quantize_keys_i8(chunk_keys[c].data(), n, Hkv, D, kvRow, i8[c].data(), i8_scales[c].data(), i8_means[c].data()),
                      KVFUSE_OK);
            EXPECT_EQ(kvfuse_quantize_keys_i4(chunk_keys[c].data(), n, Hkv, D, kvRow, i4[c].data(), i4_scales[c].data(), i4_means[c].data()),
                      KVFUSE_OK);
            std::vector<float> moved(n * kvRow);
            kvfuse::reference::rope_rotate(rope, KVFUSE_DTYPE_F32, chunk_keys[c].data(), kvRow, moved.data(), kvRow, n, Hkv, nullptr,
                                           shifts[c]);
            fused_keys.insert(fused_keys.end(), moved.begin(), moved.end());
            offset += n;
            documents += n;
        }
        question_keys = random_floats(M * kvRow, 20);
        fused_keys.insert(fused_keys.end(), question_keys.begin(), question_keys.end());
        queries = random_floats(M * qRow, 21);
    }

    std::vector<kvfuse_select_segment> stored_segments(kvfuse_key_precision precision) const {
        std::vector<kvfuse_select_segment> out(kChunkTokens.size() + 1);
        for (kvfuse_select_segment& seg : out) kvfuse_select_segment_init(&seg);
        for (std::size_t c = 0; c < kChunkTokens.size(); ++c) {
            out[c].tokens = kChunkTokens[c];
            out[c].position_shift = shifts[c];
            out[c].keys_f32 = chunk_keys[c].data();
            if (precision == KVFUSE_KEYS_INT8)
                out[c].keys_i8 = i8[c].data(), out[c].key_scales = i8_scales[c].data(), out[c].key_means = i8_means[c].data();
            if (precision == KVFUSE_KEYS_INT4)
                out[c].keys_i4 = i4[c].data(), out[c].key_scales = i4_scales[c].data(), out[c].key_means = i4_means[c].data();
        }
        out.back().tokens = M;
        out.back().keys_f32 = question_keys.data();
        return out;
    }

    kvfuse_select_args a3_args(kvfuse_key_precision precision, const std::vector<kvfuse_select_segment>& segments) const {
        const kvfuse::testing::A3SelectShape shape{P, documents, M, H, Hkv, D, 0.3};
        return kvfuse::testing::a3_select_args(shape, queries.data(), precision, &rope, segments);
    }
};

kvfuse_relevance_args shape_args(std::size_t documents, float* out) {
    kvfuse_relevance_args r;
    kvfuse_relevance_args_init(&r);
    r.question_rows = M;
    r.candidates = documents + M;
    r.query_heads = H;
    r.kv_heads = Hkv;
    r.head_dim = D;
    r.smoothing = 1;
    r.out = out;
    return r;
}

// The ids a selection of these scores must return: the reference top-k, shifted by P.
std::vector<std::int64_t> reference_rows(const std::vector<float>& scores, std::size_t k) {
    std::vector<std::int64_t> rows(k);
    kvfuse::reference::topk(scores.data(), scores.size(), k, KVFUSE_TOPK_BY_POSITION, rows.data());
    for (auto& r : rows) r += static_cast<std::int64_t>(P);
    return rows;
}

struct Selection {
    std::vector<std::int64_t> rows;
    std::vector<float> scores;
};

Selection select(kvfuse_select_args a) {
    Selection out;
    out.rows.assign(a.documents + 1, -1);
    out.scores.assign(a.documents, -1.0f);
    std::size_t count = 0;
    a.rows = out.rows.data();
    a.rows_capacity = out.rows.size();
    a.row_count = &count;
    a.scores = out.scores.data();
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_OK) << kvfuse_last_error();
    out.rows.resize(count);
    return out;
}

TEST_P(SelectTest, A3OverStoredF32KeysEqualsTheReferenceOverReRotatedKeys) {
    const Request r;
    const auto segments = r.stored_segments(KVFUSE_KEYS_F32);
    const Selection got = select(r.a3_args(KVFUSE_KEYS_F32, segments));
    std::vector<float> want(r.documents);
    kvfuse_relevance_args ref = shape_args(r.documents, want.data());
    ref.queries_f32 = r.queries.data();
    ref.keys_f32 = r.fused_keys.data();
    kvfuse::reference::a3_relevance(ref);
    for (std::size_t j = 0; j < want.size(); ++j) ASSERT_NEAR(got.scores[j], want[j], 2e-4 * (1.0 + want[j])) << j;
    const std::size_t k = static_cast<std::size_t>(std::floor(0.3 * static_cast<double>(P + r.documents)));
    EXPECT_EQ(got.rows, reference_rows(want, k));
    EXPECT_TRUE(std::is_sorted(got.rows.begin(), got.rows.end()));

    // The fused keys as one segment in the request's frame: the same scores.
    kvfuse_select_segment fused;
    kvfuse_select_segment_init(&fused);
    fused.tokens = r.documents + M;
    fused.keys_f32 = r.fused_keys.data();
    const std::vector<kvfuse_select_segment> one = {fused};
    const Selection direct = select(r.a3_args(KVFUSE_KEYS_F32, one));
    for (std::size_t j = 0; j < want.size(); ++j) ASSERT_NEAR(direct.scores[j], want[j], 2e-4 * (1.0 + want[j])) << j;
    EXPECT_EQ(direct.rows, got.rows);
}

// Stored int8 / int4 keys: the reference relevance from the same quantized keys, queries
// rotated back by the reference RoPE and quantized, and the mean bias in double.
TEST_P(SelectTest, A3OverStoredQuantizedKeysMatchesTheReferenceWithItsMeanBias) {
    const Request r;
    for (kvfuse_key_precision precision : {KVFUSE_KEYS_INT8, KVFUSE_KEYS_INT4}) {
        const bool int4 = precision == KVFUSE_KEYS_INT4;
        const auto segments = r.stored_segments(precision);
        kvfuse_select_args a = r.a3_args(precision, segments);
        a.k = 9;
        const Selection got = select(a);

        const std::size_t S = segments.size();
        std::vector<float> queries(S * M * qRow), scales(S * M * H), bias(S * M);
        std::vector<std::int8_t> q8(queries.size());
        std::vector<std::int8_t> question_i8(M * kvRow);
        std::vector<std::uint8_t> question_i4(M * Hkv * ((D + 1) / 2));
        std::vector<float> question_scales(M * Hkv), question_means(kvRow);
        ASSERT_EQ(int4 ? kvfuse_quantize_keys_i4(r.question_keys.data(), M, Hkv, D, kvRow, question_i4.data(), question_scales.data(),
                                                 question_means.data())
                       : kvfuse_quantize_keys_i8(r.question_keys.data(), M, Hkv, D, kvRow, question_i8.data(), question_scales.data(),
                                                 question_means.data()),
                  KVFUSE_OK);
        for (std::size_t g = 0; g < S; ++g)
            kvfuse::reference::rope_rotate(r.rope, KVFUSE_DTYPE_F32, r.queries.data(), qRow, queries.data() + g * M * qRow, qRow, M, H,
                                           nullptr, g + 1 < S ? -r.shifts[g] : 0);
        ASSERT_EQ(kvfuse_quantize_rows_i8(queries.data(), S * M, H, D, qRow, q8.data(), scales.data()), KVFUSE_OK);
        std::vector<kvfuse_relevance_segment> list(S);
        for (std::size_t g = 0; g < S; ++g) {
            kvfuse_relevance_segment_init(&list[g]);  // the reference steps through the array by struct_size
            const float* mean = g + 1 < S ? (int4 ? r.i4_means[g] : r.i8_means[g]).data() : question_means.data();
            for (std::size_t m = 0; m < M; ++m) {
                double dot = 0.0;
                for (std::size_t e = 0; e < qRow; ++e) dot += static_cast<double>(queries[(g * M + m) * qRow + e]) * mean[(e / D) / (H / Hkv) * D + e % D];
                bias[g * M + m] = static_cast<float>(dot);
            }
            list[g].keys = segments[g].tokens;
            list[g].queries_i8 = q8.data() + g * M * qRow;
            list[g].query_scales = scales.data() + g * M * H;
            list[g].bias = bias.data() + g * M;
            list[g].key_scales = g + 1 < S ? (int4 ? r.i4_scales[g] : r.i8_scales[g]).data() : question_scales.data();
            if (int4)
                list[g].keys_i4 = g + 1 < S ? r.i4[g].data() : question_i4.data();
            else
                list[g].keys_i8 = g + 1 < S ? r.i8[g].data() : question_i8.data();
        }
        std::vector<float> want(r.documents);
        kvfuse_relevance_args ref = shape_args(r.documents, want.data());
        ref.segment_count = S;
        ref.segments = list.data();
        kvfuse::reference::a3_relevance(ref);
        for (std::size_t j = 0; j < want.size(); ++j)
            ASSERT_NEAR(got.scores[j], want[j], 2e-3 * (1.0 + want[j])) << (int4 ? "int4 " : "int8 ") << j;
        EXPECT_EQ(got.rows, reference_rows(got.scores, 9)) << (int4 ? "int4" : "int8");
        // Keys quantized by the call instead of stored: the same quantizer, so the same scores.
        auto from_f32 = segments;
        for (auto& seg : from_f32) seg.keys_i8 = nullptr, seg.keys_i4 = nullptr, seg.key_scales = nullptr, seg.key_means = nullptr;
        kvfuse_select_args b = r.a3_args(precision, from_f32);
        b.k = 9;
        const Selection quantized_here = select(b);
        EXPECT_EQ(quantized_here.scores, got.scores);
        EXPECT_EQ(quantized_here.rows, got.rows);
    }
}

TEST_P(SelectTest, CacheBlendDeviationWithStrides) {
    const std::size_t documents = 41, stride = kvRow + 3;
    const auto fresh = random_floats(documents * stride, 30), reused = random_floats(documents * kvRow, 31);
    kvfuse_select_args a;
    kvfuse_select_args_init(&a);
    a.method = KVFUSE_SELECT_CACHEBLEND;
    a.prefix_rows = P;
    a.documents = documents;
    a.question_rows = M;
    a.ratio = 0.15;
    a.kv_heads = Hkv;
    a.head_dim = D;
    a.fresh = fresh.data();
    a.fresh_row_stride = stride;
    a.reused = reused.data();
    const Selection got = select(a);
    std::vector<float> want(documents);
    for (std::size_t j = 0; j < documents; ++j) {
        double d = 0.0;
        for (std::size_t e = 0; e < kvRow; ++e) d += std::pow(static_cast<double>(fresh[j * stride + e]) - reused[j * kvRow + e], 2);
        want[j] = static_cast<float>(d);
        ASSERT_NEAR(got.scores[j], want[j], 1e-5 * (1.0 + want[j])) << j;
    }
    EXPECT_EQ(got.rows, reference_rows(want, static_cast<std::size_t>(std::floor(0.15 * (P + documents)))));
}

TEST_P(SelectTest, BadArgumentsAreRefused) {
    const Request r;
    const auto segments = r.stored_segments(KVFUSE_KEYS_INT8);
    std::vector<std::int64_t> rows(r.documents);
    std::size_t count = 0;
    auto base = [&] {
        kvfuse_select_args a = r.a3_args(KVFUSE_KEYS_INT8, segments);
        a.rows = rows.data();
        a.rows_capacity = rows.size();
        a.row_count = &count;
        return a;
    };
    EXPECT_EQ(kvfuse_select_rows(nullptr), KVFUSE_ERROR_NULL_POINTER);
    kvfuse_select_args a = base();
    ASSERT_EQ(kvfuse_select_rows(&a), KVFUSE_OK) << kvfuse_last_error();
    a.struct_size = 8;  // never initialised, or a version this library does not know
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_ERROR_STRUCT_SIZE);
    auto unsized = segments;
    unsized[1].struct_size = 0;
    a = base(), a.segments = unsized.data();
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_ERROR_STRUCT_SIZE);
    a = base();
    a.rows_capacity = 2;  // fewer than floor(0.3 (P + documents))
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_ERROR_INVALID_ARGUMENT);
    a = base(), a.ratio = 1.5;
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_ERROR_INVALID_ARGUMENT);
    a = base(), a.documents -= 1;  // the segments no longer add up
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_ERROR_INVALID_ARGUMENT);
    a = base(), a.rope = nullptr;  // shifted segments need it
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_ERROR_INVALID_ARGUMENT);
    a = base(), a.query_heads = 3;
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_ERROR_INVALID_ARGUMENT);
    a = base(), a.method = static_cast<kvfuse_select_method>(7);
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_ERROR_INVALID_ARGUMENT);
    a = base(), a.key_precision = static_cast<kvfuse_key_precision>(-1);
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_ERROR_INVALID_ARGUMENT);
    auto no_means = segments;
    no_means[0].key_means = nullptr;
    a = base(), a.segments = no_means.data();
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_ERROR_INVALID_ARGUMENT);
    a = base(), a.method = KVFUSE_SELECT_CACHEBLEND;  // no fresh / reused rows
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_ERROR_INVALID_ARGUMENT);
    a = base(), a.k = 0, a.ratio = 0.0;  // nothing to select is valid
    ASSERT_EQ(kvfuse_select_rows(&a), KVFUSE_OK);
    EXPECT_EQ(count, 0u);
}

}  // namespace
