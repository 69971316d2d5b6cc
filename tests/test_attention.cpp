// Sparse-row attention on every ISA against reference/ (double precision).
//
// Bound: outputs are convex combinations of V rows; f32 accumulation over up to a few thousand
// keys with an online softmax stays within 2e-5 * (max|v| + 1) of the double reference here
// (scores up to |q.k| * scale ~ 10). bf16 K/V: the reference reads the same bf16 values, so the
// bound is the same.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "isa_test_support.h"
#include "reference/attention_reference.h"

namespace {

using kvfuse::testing::random_floats;

struct Problem {
    std::size_t rows, heads, kv_heads, head_dim, tokens;
    bool bf16;
    std::size_t pad = 0;
};

struct Data {
    std::vector<float> q, out, expected;
    std::vector<float> k32, v32;
    std::vector<kvfuse::bf16> k16, v16;
    std::vector<std::int64_t> positions;
    kvfuse::AttentionArgs args;
};

Data make(const Problem& p, std::uint32_t seed, std::vector<std::int64_t> positions = {}) {
    Data d;
    const std::size_t q_stride = p.heads * p.head_dim + p.pad, kv_stride = p.kv_heads * p.head_dim + p.pad;
    d.q = random_floats(p.rows * q_stride + 1, seed, 1.5f);
    d.k32 = random_floats(p.tokens * kv_stride + 1, seed + 1, 1.5f);
    d.v32 = random_floats(p.tokens * kv_stride + 1, seed + 2, 2.0f);
    if (positions.empty()) {
        std::mt19937 rng(seed);
        for (std::size_t r = 0; r < p.rows; ++r) positions.push_back(static_cast<std::int64_t>(rng() % p.tokens));
    }
    d.positions = positions;
    d.out.assign(p.rows * q_stride + 1, -7.0f);
    d.expected = d.out;
    auto& a = d.args;
    a.queries = d.q.data() + 1;  // not vector aligned
    a.rows = p.rows;
    a.query_heads = p.heads;
    a.head_dim = p.head_dim;
    a.query_row_stride = q_stride;
    a.positions = d.positions.data();
    a.kv_tokens = p.tokens;
    a.kv_heads = p.kv_heads;
    a.kv_token_stride = kv_stride;
    a.scale = 1.0f / std::sqrt(static_cast<float>(p.head_dim));
    a.out = d.out.data() + 1;
    a.out_row_stride = q_stride;
    if (p.bf16) {
        d.k16.resize(d.k32.size());
        d.v16.resize(d.v32.size());
        EXPECT_TRUE(kvfuse::to_bf16(d.k32.data(), d.k16.data(), d.k32.size()).ok());
        EXPECT_TRUE(kvfuse::to_bf16(d.v32.data(), d.v16.data(), d.v32.size()).ok());
        a.keys = d.k16.data() + 1;
        a.values = d.v16.data() + 1;
        a.kv_dtype = KVFUSE_DTYPE_BF16;
    } else {
        a.keys = d.k32.data() + 1;
        a.values = d.v32.data() + 1;
        a.kv_dtype = KVFUSE_DTYPE_F32;
    }
    kvfuse_attention_args expected = a;
    expected.out = d.expected.data() + 1;
    kvfuse::reference::sparse_attention(expected);
    return d;
}

void expect_matches(const Data& d, const Problem& p) {
    for (std::size_t i = 0; i < d.out.size(); ++i) {
        if (std::isnan(d.expected[i])) {
            EXPECT_TRUE(std::isnan(d.out[i])) << i;
            continue;
        }
        ASSERT_NEAR(d.out[i], d.expected[i], 2e-5 * 3.0) << "element " << i << " rows=" << p.rows << " H=" << p.heads
                                                          << " Hkv=" << p.kv_heads << " D=" << p.head_dim << " T=" << p.tokens
                                                          << (p.bf16 ? " bf16" : " f32");
    }
}

class AttentionTest : public kvfuse::testing::IsaTest {};
KVFUSE_INSTANTIATE_ISA_TESTS(AttentionTest);

TEST_P(AttentionTest, MatchesReferenceOverShapes) {
    std::uint32_t seed = 1;
    const Problem problems[] = {
        {1, 1, 1, 8, 1, false},     {3, 8, 4, 8, 5, false},    {7, 8, 2, 64, 70, false},  {5, 4, 1, 128, 130, true},
        {17, 16, 4, 72, 200, false}, {9, 6, 3, 20, 65, true},  {33, 8, 8, 64, 129, false, 3}, {4, 2, 1, 128, 1000, true},
        {40, 32, 8, 128, 300, false}, {2, 4, 2, 130, 64, false}, {3, 4, 4, 9, 17, true, 1},
        // Head dims whose tail is less than one vector of the widest ISA (16 lanes): 8, 24 and 40
        // end in a half vector, 12 and 20 in a quarter, 6 in a scalar pair; 80 and 96 are whole
        // AVX-512 vectors but not whole triples.
        {5, 8, 2, 40, 90, false},    {6, 12, 4, 80, 150, true}, {4, 4, 2, 96, 60, false},   {3, 6, 2, 12, 33, false},
        {3, 3, 1, 6, 20, false},     {2, 5, 5, 24, 40, true},   {2, 4, 4, 4, 10, false},    {9, 16, 4, 8, 300, false},
    };
    for (const Problem& p : problems) {
        Data d = make(p, seed += 10);
        ASSERT_TRUE(kvfuse::sparse_attention(d.args).ok());
        expect_matches(d, p);
    }
}

// Every row selected is full causal attention; rows in any order, with duplicates.
TEST_P(AttentionTest, AllRowsUnsortedAndRepeated) {
    const Problem p{0, 8, 2, 64, 97, false};
    std::vector<std::int64_t> positions(97);
    std::iota(positions.begin(), positions.end(), 0);
    std::mt19937 rng(3);
    std::shuffle(positions.begin(), positions.end(), rng);
    positions.push_back(positions[5]);
    positions.push_back(0);
    Problem q = p;
    q.rows = positions.size();
    Data d = make(q, 77, positions);
    ASSERT_TRUE(kvfuse::sparse_attention(d.args).ok());
    expect_matches(d, q);
}

// A row at position 0 sees exactly one key: its output is that key's value.
TEST_P(AttentionTest, PositionZeroReturnsTheFirstValue) {
    const Problem p{1, 4, 2, 16, 10, false};
    Data d = make(p, 5, {0});
    ASSERT_TRUE(kvfuse::sparse_attention(d.args).ok());
    for (std::size_t h = 0; h < 4; ++h)
        for (std::size_t e = 0; e < 16; ++e) EXPECT_NEAR(d.out[1 + h * 16 + e], d.v32[1 + (h / 2) * 16 + e], 1e-6);
}

TEST_P(AttentionTest, NanInAKeyPoisonsOnlyRowsThatSeeIt) {
    for (bool bf16 : {false, true}) {
        const Problem p{4, 4, 2, 16, 50, bf16};
        Data d = make(p, 9, {3, 10, 30, 49});
        // Key 20 of kv head 0 becomes NaN: rows at 30 and 49 (heads 0, 1) see it.
        if (bf16)
            d.k16[1 + 20 * 32 + 3].bits = 0x7fc0;
        else
            d.k32[1 + 20 * 32 + 3] = std::numeric_limits<float>::quiet_NaN();
        ASSERT_TRUE(kvfuse::sparse_attention(d.args).ok());
        for (std::size_t r = 0; r < 4; ++r)
            for (std::size_t h = 0; h < 4; ++h)
                for (std::size_t e = 0; e < 16; ++e) {
                    const float v = d.out[1 + r * 64 + h * 16 + e];
                    if (r >= 2 && h < 2)
                        EXPECT_TRUE(std::isnan(v)) << r << " " << h;
                    else
                        EXPECT_FALSE(std::isnan(v)) << r << " " << h;
                }
    }
}

// NaN and Inf in a value's last dimensions, which a head of 8, 12, 20 or 40 dimensions runs on a
// narrower vector (AVX-512: 256 or 128 bits): they reach exactly the rows that see the key, in
// exactly those dimensions, as in the reference.
TEST_P(AttentionTest, NanAndInfInTheHeadDimTail) {
    for (std::size_t dim : {std::size_t{8}, std::size_t{12}, std::size_t{20}, std::size_t{40}}) {
        const Problem p{4, 4, 2, dim, 50, false};
        Data d = make(p, 11, {3, 10, 30, 49});
        const std::size_t kv_stride = p.kv_heads * dim;
        d.v32[1 + 20 * kv_stride + dim - 1] = std::numeric_limits<float>::quiet_NaN();  // key 20, kv head 0
        d.v32[1 + 20 * kv_stride + dim - 2] = std::numeric_limits<float>::infinity();
        kvfuse_attention_args expected = d.args;
        expected.out = d.expected.data() + 1;
        kvfuse::reference::sparse_attention(expected);
        ASSERT_TRUE(kvfuse::sparse_attention(d.args).ok());
        std::size_t non_finite = 0;
        for (std::size_t i = 0; i < d.out.size(); ++i) {
            const float got = d.out[i], want = d.expected[i];
            if (std::isnan(want)) {
                EXPECT_TRUE(std::isnan(got)) << "D " << dim << " element " << i;
            } else if (std::isinf(want)) {
                EXPECT_EQ(got, want) << "D " << dim << " element " << i;
            } else {
                ASSERT_NEAR(got, want, 2e-5 * 3.0) << "D " << dim << " element " << i;
            }
            non_finite += !std::isfinite(want);
        }
        // Rows at 30 and 49 see key 20 with the two heads of kv head 0: NaN and Inf in each.
        EXPECT_EQ(non_finite, 2u * 2u * 2u) << "D " << dim;
    }
}

// Tile, row block and the parallel threshold change how rows and keys are split into tasks
// (packing chunks, row blocks, heads in flight) and whether threads share them, never the
// result. (Run with OMP_NUM_THREADS=1, 3, 8 to vary the thread count as well.) The short
// problems (at most 16 and 40 keys) run on a smaller tile than the tuned one (the kernel takes
// the smallest of 32, 64, 128 that holds every key).
TEST_P(AttentionTest, TilingDoesNotChangeResults) {
    struct RestoreTuning {
        ~RestoreTuning() { (void)kvfuse_set_tuning(nullptr); }
    } restore;
    const Problem problems[] = {{37, 12, 3, 40, 700, false}, {5, 4, 2, 24, 16, false}, {9, 6, 3, 40, 40, false}};
    for (const Problem& p : problems) {
        SCOPED_TRACE(std::to_string(p.tokens) + " keys");
        Data d = make(p, 123);
        for (std::uint32_t tile : {32u, 64u, 128u})
            for (std::uint32_t row_block : {1u, 5u, 64u})
                for (std::uint64_t parallel_work : {std::uint64_t{0}, ~std::uint64_t{0}}) {
                    kvfuse_tuning tuning;
                    kvfuse_tuning_init(&tuning);
                    kvfuse_default_tuning(&tuning);
                    tuning.attention_key_tile = tile;
                    tuning.attention_row_block = row_block;
                    tuning.attention_parallel_work = parallel_work;
                    ASSERT_EQ(kvfuse_set_tuning(&tuning), KVFUSE_OK);
                    std::fill(d.out.begin(), d.out.end(), -7.0f);
                    ASSERT_TRUE(kvfuse::sparse_attention(d.args).ok());
                    SCOPED_TRACE("tile " + std::to_string(tile) + " row block " + std::to_string(row_block) +
                                 (parallel_work == 0 ? " parallel" : " one thread"));
                    expect_matches(d, p);
                }
    }
}

TEST_P(AttentionTest, NoRowsIsANoOp) {
    kvfuse_attention_args a;
    kvfuse_attention_args_init(&a);
    a.rows = 0;
    a.query_heads = a.kv_heads = 1;
    a.head_dim = 4;
    a.query_row_stride = a.out_row_stride = a.kv_token_stride = 4;
    a.scale = 0.5f;
    EXPECT_TRUE(kvfuse::sparse_attention(a).ok());
}

TEST_P(AttentionTest, InvalidArgumentsAreRefused) {
    const Problem p{2, 4, 2, 8, 6, false};
    Data d = make(p, 11, {1, 5});
    using kvfuse::StatusCode;
    auto with = [&](auto change) {
        kvfuse_attention_args a = d.args;
        change(a);
        return kvfuse::sparse_attention(a).code();
    };
    EXPECT_EQ(with([](auto& a) { a.query_heads = 3; }), StatusCode::invalid_argument);
    EXPECT_EQ(with([](auto& a) { a.kv_heads = 0; }), StatusCode::invalid_argument);
    EXPECT_EQ(with([](auto& a) { a.head_dim = 0; }), StatusCode::invalid_argument);
    EXPECT_EQ(with([](auto& a) { a.query_row_stride = 31; }), StatusCode::invalid_argument);
    EXPECT_EQ(with([](auto& a) { a.kv_token_stride = 15; }), StatusCode::invalid_argument);
    EXPECT_EQ(with([](auto& a) { a.kv_dtype = static_cast<kvfuse_dtype>(5); }), StatusCode::invalid_argument);
    EXPECT_EQ(with([](auto& a) { a.kv_tokens = 5; }), StatusCode::invalid_argument);  // position 5 out of range
    EXPECT_EQ(with([](auto& a) { a.queries = nullptr; }), StatusCode::null_pointer);
    EXPECT_EQ(with([](auto& a) { a.positions = nullptr; }), StatusCode::null_pointer);
    EXPECT_EQ(with([](auto& a) { a.scale = NAN; }), StatusCode::invalid_argument);
    EXPECT_EQ(kvfuse_sparse_attention(nullptr), KVFUSE_ERROR_NULL_POINTER);
    std::vector<std::int64_t> negative = {-1, 2};
    EXPECT_EQ(with([&](auto& a) { a.positions = negative.data(); }), StatusCode::invalid_argument);
    // A row stride whose element span fits in size_t but whose bytes do not (found by fuzz_c_api:
    // the kernel's output pointer arithmetic wrapped).
    EXPECT_EQ(with([&](auto& a) { a.out_row_stride = std::numeric_limits<std::size_t>::max() / 3; }),
              StatusCode::invalid_argument);
    EXPECT_EQ(with([&](auto& a) { a.kv_token_stride = std::numeric_limits<std::size_t>::max() / 8; }),
              StatusCode::invalid_argument);
    const kvfuse::Status s = kvfuse::Status(kvfuse_sparse_attention(&d.args));
    EXPECT_TRUE(s.ok());
}

TEST(RowCopies, GatherAndScatterRoundTrip) {
    const auto table = random_floats(10 * 6, 4);
    const std::vector<std::int64_t> rows = {7, 2, 9};
    std::vector<float> gathered(3 * 5, 0.0f);
    ASSERT_TRUE(kvfuse::gather_rows(table.data(), 10, 6, rows.data(), 3, gathered.data(), 5, 5).ok());
    for (std::size_t i = 0; i < 3; ++i)
        for (std::size_t e = 0; e < 5; ++e) EXPECT_EQ(gathered[i * 5 + e], table[static_cast<std::size_t>(rows[i]) * 6 + e]);
    std::vector<float> target(10 * 6, 0.0f);
    ASSERT_TRUE(kvfuse::scatter_rows(gathered.data(), 5, rows.data(), 3, target.data(), 10, 6, 5).ok());
    for (std::size_t i = 0; i < 3; ++i)
        for (std::size_t e = 0; e < 5; ++e) EXPECT_EQ(target[static_cast<std::size_t>(rows[i]) * 6 + e], gathered[i * 5 + e]);
    EXPECT_EQ(target[0], 0.0f);
    const std::vector<std::int64_t> bad = {10};
    EXPECT_EQ(kvfuse::gather_rows(table.data(), 10, 6, bad.data(), 1, gathered.data(), 5, 5).code(),
              kvfuse::StatusCode::invalid_argument);
    EXPECT_EQ(kvfuse::scatter_rows<float>(gathered.data(), 5, rows.data(), 3, nullptr, 10, 6, 5).code(),
              kvfuse::StatusCode::null_pointer);
    EXPECT_EQ(kvfuse::gather_rows(table.data(), 10, 4, rows.data(), 3, gathered.data(), 5, 5).code(),
              kvfuse::StatusCode::invalid_argument);
    std::vector<kvfuse::bf16> half(20), half_out(8);
    const std::vector<std::int64_t> two = {1, 3};
    half[1 * 4 + 2].bits = 0x1234;
    ASSERT_TRUE(kvfuse::gather_rows(half.data(), 5, 4, two.data(), 2, half_out.data(), 4, 4).ok());
    EXPECT_EQ(half_out[2].bits, 0x1234);
    // Strides whose row span wraps past SIZE_MAX (found by fuzz_c_api: scatter wrote through
    // rows[i] * stride * 4 wrapped to an address far outside dst) are refused before any copy.
    const std::size_t huge = std::numeric_limits<std::size_t>::max() / 8;
    const std::vector<std::int64_t> one = {1};
    EXPECT_EQ(kvfuse_scatter_rows(KVFUSE_DTYPE_F32, gathered.data(), 5, one.data(), 1, target.data(), 10, huge, 5),
              KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_gather_rows(KVFUSE_DTYPE_F32, table.data(), 10, huge, one.data(), 1, gathered.data(), 5, 5),
              KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_gather_rows(KVFUSE_DTYPE_F32, table.data(), 10, 6, rows.data(), 3, gathered.data(), huge, 5),
              KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(target[6 + 0], 0.0f);
}

}  // namespace

namespace {

// Tuning that sends even these small calls down the parallel path, restored afterwards.
class ParallelTuning {
   public:
    explicit ParallelTuning(void (*adjust)(kvfuse_tuning&)) {
        kvfuse_get_tuning(&saved_);
        kvfuse_tuning t = saved_;
        adjust(t);
        EXPECT_EQ(kvfuse_set_tuning(&t), KVFUSE_OK) << kvfuse_last_error();
    }
    ~ParallelTuning() { kvfuse_set_tuning(&saved_); }

   private:
    kvfuse::Tuning saved_;
};

// The attention task list (packing chunks and row blocks, taken in order by whichever thread is
// free) at 1, 3 and 7 threads and the machine's count: always the reference's answer, and
// bit-identical across thread counts (each row is one thread's work).
TEST_P(AttentionTest, SameAnswerAtEveryThreadCount) {
    const ParallelTuning tuning([](kvfuse_tuning& t) {
        t.attention_parallel_work = 0;
        t.attention_row_block = 2;
    });
    const Problem problems[] = {{37, 8, 2, 64, 400, false}, {19, 6, 3, 20, 150, true}, {5, 4, 4, 32, 1100, false, 1}};
    std::uint32_t seed = 900;
    for (const Problem& p : problems) {
        Data d = make(p, seed += 10);
        std::vector<float> single_thread;
        kvfuse::testing::at_thread_counts([&](int threads) {
            std::fill(d.out.begin(), d.out.end(), -7.0f);
            ASSERT_TRUE(kvfuse::sparse_attention(d.args).ok());
            expect_matches(d, p);
            if (threads == 1)
                single_thread = d.out;
            else
                EXPECT_EQ(std::memcmp(d.out.data(), single_thread.data(), d.out.size() * sizeof(float)), 0)
                    << "differs from the 1-thread answer at " << threads << " threads";
        });
    }
}

// A pointer not aligned to its element type is refused on every ISA, before any kernel runs.
TEST_P(AttentionTest, MisalignedPointersAreRefused) {
    const Problem p{3, 4, 2, 16, 20, false};
    Data d = make(p, 77);
    const std::vector<float> before = d.out;
    for (int field = 0; field < 5; ++field) {
        kvfuse_attention_args a = d.args;
        auto shift = [](const void* x) { return static_cast<const char*>(x) + 1; };
        if (field == 0) a.queries = reinterpret_cast<const float*>(shift(a.queries));
        if (field == 1) a.keys = shift(a.keys);
        if (field == 2) a.values = shift(a.values);
        if (field == 3) a.positions = reinterpret_cast<const std::int64_t*>(shift(a.positions));
        if (field == 4) a.out = reinterpret_cast<float*>(const_cast<char*>(shift(a.out)));
        EXPECT_EQ(kvfuse_sparse_attention(&a), KVFUSE_ERROR_INVALID_ARGUMENT) << "field " << field;
        EXPECT_NE(std::string(kvfuse_last_error()).find("aligned"), std::string::npos) << kvfuse_last_error();
    }
    EXPECT_EQ(d.out, before);
}

}  // namespace
