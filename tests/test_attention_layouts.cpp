// Sparse-row attention on the layouts engines keep (kvfuse_attention_args V2): per-head strides,
// paged K/V through a block table, several sequences in one call, the log-sum-exp output.
//
// On every ISA each such call must give BIT FOR BIT what the same rows give through contiguous
// single-sequence calls (a row's result depends on its query and the keys it sees only), slots
// the call must not read hold NaN and Inf (padding, unused block slots, blocks no table names),
// and the reference (double) agrees within test_attention.cpp's bound. The log-sum-exp merges
// two halves of the keys into the result of one call.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
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

std::size_t element_bytes(kvfuse_dtype dtype) { return dtype == KVFUSE_DTYPE_F32 ? 4 : 2; }

const char* dtype_name(kvfuse_dtype dtype) {
    return dtype == KVFUSE_DTYPE_F32 ? "f32" : dtype == KVFUSE_DTYPE_BF16 ? "bf16" : "f16";
}

// K or V elements of one dtype, element-addressed; storage in 32-bit words keeps it 4-byte aligned.
struct Tensor {
    kvfuse_dtype dtype = KVFUSE_DTYPE_F32;
    std::size_t elements = 0;
    std::vector<std::uint32_t> words;
    Tensor() = default;
    Tensor(kvfuse_dtype d, std::size_t n) : dtype(d), elements(n), words((n * element_bytes(d) + 3) / 4 + 1) {}
    char* bytes() { return reinterpret_cast<char*>(words.data()); }
    const char* bytes() const { return reinterpret_cast<const char*>(words.data()); }
    const void* data() const { return words.data(); }
    void copy_from(std::size_t at, const Tensor& src, std::size_t from) {
        const std::size_t e = element_bytes(dtype);
        std::memcpy(bytes() + at * e, src.bytes() + from * e, e);
    }
    // NaN and +-Inf in turn: what a slot the call must not read holds.
    void poison() {
        for (std::size_t i = 0; i < elements; ++i) {
            const int kind = static_cast<int>(i % 3);
            if (dtype == KVFUSE_DTYPE_F32) {
                const std::uint32_t w = kind == 0 ? 0x7fc00000u : kind == 1 ? 0x7f800000u : 0xff800000u;
                std::memcpy(bytes() + 4 * i, &w, 4);
            } else {
                const bool bf16 = dtype == KVFUSE_DTYPE_BF16;
                const std::uint16_t h = kind == 0 ? (bf16 ? 0x7fc0 : 0x7e00) : kind == 1 ? (bf16 ? 0x7f80 : 0x7c00)
                                                                                       : (bf16 ? 0xff80 : 0xfc00);
                std::memcpy(bytes() + 2 * i, &h, 2);
            }
        }
    }
};

Tensor from_floats(kvfuse_dtype dtype, const std::vector<float>& values) {
    Tensor t(dtype, values.size());
    if (dtype == KVFUSE_DTYPE_F32)
        std::memcpy(t.bytes(), values.data(), values.size() * 4);
    else if (dtype == KVFUSE_DTYPE_BF16)
        EXPECT_EQ(kvfuse_f32_to_bf16(values.data(), reinterpret_cast<std::uint16_t*>(t.bytes()), values.size()), KVFUSE_OK);
    else
        EXPECT_EQ(kvfuse_f32_to_f16(values.data(), reinterpret_cast<std::uint16_t*>(t.bytes()), values.size()), KVFUSE_OK);
    return t;
}

struct Shape {
    std::size_t rows, heads, kv_heads, head_dim, tokens;
};

// One sequence, contiguous: queries [rows, H, D] (f32), keys and values [T, Hkv, D] of dtype.
struct Problem {
    Shape s;
    kvfuse_dtype dtype;
    std::vector<float> q;
    Tensor k, v;
    std::vector<std::int64_t> positions;
};

Problem make_problem(const Shape& s, kvfuse_dtype dtype, std::uint32_t seed) {
    Problem p{s, dtype, random_floats(s.rows * s.heads * s.head_dim, seed, 1.5f), {}, {}, {}};
    p.k = from_floats(dtype, random_floats(s.tokens * s.kv_heads * s.head_dim, seed + 1, 1.5f));
    p.v = from_floats(dtype, random_floats(s.tokens * s.kv_heads * s.head_dim, seed + 2, 2.0f));
    std::mt19937 rng(seed);
    for (std::size_t r = 0; r < s.rows; ++r) p.positions.push_back(static_cast<std::int64_t>(rng() % s.tokens));
    if (s.rows > 1) p.positions[1] = static_cast<std::int64_t>(s.tokens - 1);  // one row sees every key
    if (s.rows > 2) p.positions[2] = 0;
    return p;
}

kvfuse::AttentionArgs contiguous_args(const Problem& p, float* out, float* lse) {
    kvfuse::AttentionArgs a;
    a.queries = p.q.data();
    a.rows = p.s.rows;
    a.query_heads = p.s.heads;
    a.head_dim = p.s.head_dim;
    a.query_row_stride = p.s.heads * p.s.head_dim;
    a.positions = p.positions.data();
    a.keys = p.k.data();
    a.values = p.v.data();
    a.kv_dtype = p.dtype;
    a.kv_tokens = p.s.tokens;
    a.kv_heads = p.s.kv_heads;
    a.kv_token_stride = p.s.kv_heads * p.s.head_dim;
    a.scale = 1.0f / std::sqrt(static_cast<float>(p.s.head_dim));
    a.out = out;
    a.out_row_stride = p.s.heads * p.s.head_dim;
    a.lse = lse;
    return a;
}

// What a contiguous single-sequence call gives: out [rows, H, D] and lse [rows, H].
struct Result {
    std::vector<float> out, lse;
};

Result run_contiguous(const Problem& p) {
    Result r{std::vector<float>(p.s.rows * p.s.heads * p.s.head_dim, -7.0f), std::vector<float>(p.s.rows * p.s.heads, -7.0f)};
    const kvfuse::AttentionArgs a = contiguous_args(p, r.out.data(), r.lse.data());
    EXPECT_EQ(kvfuse_sparse_attention(&a), KVFUSE_OK) << kvfuse_last_error();
    return r;
}

// Bit patterns equal, element by element (NaN included).
void expect_same_bits(const float* got, const float* want, std::size_t count, const std::string& what) {
    for (std::size_t i = 0; i < count; ++i) {
        std::uint32_t g, w;
        std::memcpy(&g, got + i, 4);
        std::memcpy(&w, want + i, 4);
        ASSERT_EQ(g, w) << what << ": element " << i << " is " << got[i] << ", the contiguous call gave " << want[i];
    }
}

void expect_near_reference(const std::vector<float>& got, const std::vector<float>& want, double bound, const std::string& what) {
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); ++i)
        ASSERT_NEAR(got[i], want[i], bound * std::max(1.0, std::fabs(static_cast<double>(want[i])))) << what << " element " << i;
}

// A strided float tensor [items, heads, D] placed with the given strides in a buffer of `fill`.
struct StridedFloats {
    std::vector<float> buffer;
    std::size_t item_stride, head_stride;
    StridedFloats(std::size_t items, std::size_t heads, std::size_t dim, std::size_t item_stride_, std::size_t head_stride_,
                  float fill)
        : buffer((items - 1) * item_stride_ + (heads - 1) * head_stride_ + dim + 3, fill),
          item_stride(item_stride_),
          head_stride(head_stride_) {}
    float& at(std::size_t item, std::size_t head, std::size_t d) { return buffer[item * item_stride + head * head_stride + d]; }
};

class AttentionLayoutTest : public kvfuse::testing::IsaTest {};
KVFUSE_INSTANTIATE_ISA_TESTS(AttentionLayoutTest);

const kvfuse_dtype kDtypes[] = {KVFUSE_DTYPE_F32, KVFUSE_DTYPE_BF16, KVFUSE_DTYPE_F16};

// Head strides on queries, K/V and out, token major with padding and head major ([heads,
// tokens, D]); the padding holds NaN / Inf and the out padding is never written.
TEST_P(AttentionLayoutTest, HeadStridesMatchTheContiguousCallBitForBit) {
    const Shape shapes[] = {{9, 8, 2, 40, 150}, {5, 4, 4, 8, 33}, {13, 6, 3, 128, 300}, {3, 3, 1, 20, 17}};
    std::uint32_t seed = 10;
    for (const kvfuse_dtype dtype : kDtypes)
        for (const Shape& s : shapes)
            for (const bool head_major : {false, true}) {
                const Problem p = make_problem(s, dtype, seed += 7);
                const Result want = run_contiguous(p);
                const std::size_t D = s.head_dim, H = s.heads, Hkv = s.kv_heads, n = s.rows, T = s.tokens;
                const float nan = std::numeric_limits<float>::quiet_NaN();
                // Token major: heads D + 3 apart, rows a little further; head major: rows D + 1
                // apart, heads after all rows.
                StridedFloats q = head_major ? StridedFloats(n, H, D, D + 1, n * (D + 1) + 4, nan)
                                             : StridedFloats(n, H, D, H * (D + 3) + 2, D + 3, nan);
                StridedFloats out = head_major ? StridedFloats(n, H, D, D, n * D + 5, -7.0f)
                                               : StridedFloats(n, H, D, H * (D + 2) + 1, D + 2, -7.0f);
                const std::size_t kv_token = head_major ? D + 2 : Hkv * (D + 1) + 5, kv_head = head_major ? T * (D + 2) + 3 : D + 1;
                Tensor k(dtype, (T - 1) * kv_token + (Hkv - 1) * kv_head + D + 2), v(dtype, k.elements);
                k.poison();
                v.poison();
                for (std::size_t r = 0; r < n; ++r)
                    for (std::size_t h = 0; h < H; ++h)
                        for (std::size_t d = 0; d < D; ++d) q.at(r, h, d) = p.q[(r * H + h) * D + d];
                for (std::size_t t = 0; t < T; ++t)
                    for (std::size_t h = 0; h < Hkv; ++h)
                        for (std::size_t d = 0; d < D; ++d) {
                            k.copy_from(t * kv_token + h * kv_head + d, p.k, (t * Hkv + h) * D + d);
                            v.copy_from(t * kv_token + h * kv_head + d, p.v, (t * Hkv + h) * D + d);
                        }
                const std::size_t lse_stride = H + 3;
                std::vector<float> lse(n * lse_stride, -7.0f);
                kvfuse::AttentionArgs a = contiguous_args(p, out.buffer.data(), nullptr);
                a.queries = q.buffer.data();
                a.query_row_stride = q.item_stride;
                a.out_row_stride = out.item_stride;
                a.keys = k.data();
                a.values = v.data();
                a.kv_token_stride = kv_token;
                a.with_head_strides(q.head_stride, kv_head, out.head_stride).with_lse(lse.data(), lse_stride);
                ASSERT_EQ(kvfuse_sparse_attention(&a), KVFUSE_OK) << kvfuse_last_error();
                std::vector<float> got_out(n * H * D), got_lse(n * H);
                for (std::size_t r = 0; r < n; ++r)
                    for (std::size_t h = 0; h < H; ++h) {
                        got_lse[r * H + h] = lse[r * lse_stride + h];
                        for (std::size_t d = 0; d < D; ++d) got_out[(r * H + h) * D + d] = out.at(r, h, d);
                    }
                const std::string what = std::string(dtype_name(dtype)) + (head_major ? " head major" : " token major") +
                                         " D " + std::to_string(D) + " T " + std::to_string(T);
                expect_same_bits(got_out.data(), want.out.data(), got_out.size(), what + " out");
                expect_same_bits(got_lse.data(), want.lse.data(), got_lse.size(), what + " lse");
                // Nothing written outside the rows' heads.
                std::size_t written = 0;
                for (float x : out.buffer) written += x != -7.0f;
                std::size_t written_lse = 0;
                for (float x : lse) written_lse += x != -7.0f;
                EXPECT_EQ(written, n * H * D) << what;
                EXPECT_EQ(written_lse, n * H) << what;
            }
}

// K/V pools of blocks: `blocks_total` physical blocks of block_size token slots, `block_stride`
// elements apart, each token's heads `head_stride` apart and tokens `token_stride` apart in a
// block; everything not a sequence's key holds NaN / Inf.
struct Pool {
    Tensor k, v;
    std::size_t block_size, blocks_total, block_stride, token_stride, head_stride;
    Pool(kvfuse_dtype dtype, std::size_t block_size_, std::size_t blocks_total_, std::size_t block_stride_,
         std::size_t token_stride_, std::size_t head_stride_)
        : k(dtype, blocks_total_ * block_stride_),
          v(dtype, blocks_total_ * block_stride_),
          block_size(block_size_),
          blocks_total(blocks_total_),
          block_stride(block_stride_),
          token_stride(token_stride_),
          head_stride(head_stride_) {
        k.poison();
        v.poison();
    }
    // Places a sequence's contiguous keys and values [L, Hkv, D] in the blocks `table` names.
    void place(const Problem& p, const std::int32_t* table) {
        const std::size_t D = p.s.head_dim, Hkv = p.s.kv_heads;
        for (std::size_t t = 0; t < p.s.tokens; ++t)
            for (std::size_t h = 0; h < Hkv; ++h)
                for (std::size_t d = 0; d < D; ++d) {
                    const std::size_t at = static_cast<std::size_t>(table[t / block_size]) * block_stride +
                                           t % block_size * token_stride + h * head_stride + d;
                    k.copy_from(at, p.k, (t * Hkv + h) * D + d);
                    v.copy_from(at, p.v, (t * Hkv + h) * D + d);
                }
    }
};

// Physical block ids 0..total-1 shuffled: the first entries become the tables.
std::vector<std::int32_t> shuffled_blocks(std::size_t total, std::uint32_t seed) {
    std::vector<std::int32_t> ids(total);
    std::iota(ids.begin(), ids.end(), 0);
    std::mt19937 rng(seed);
    std::shuffle(ids.begin(), ids.end(), rng);
    return ids;
}

// Block sizes 1 (llama.cpp's cells), 7 (odd), 16 (vLLM's default); shuffled physical blocks, spare
// blocks no table names, token slots after the last key: all NaN / Inf.
TEST_P(AttentionLayoutTest, PagedKvMatchesTheContiguousCallBitForBit) {
    const Shape shapes[] = {{11, 8, 2, 40, 150}, {6, 4, 4, 128, 97}, {4, 2, 1, 12, 16}};
    std::uint32_t seed = 300;
    for (const kvfuse_dtype dtype : kDtypes)
        for (const Shape& s : shapes)
            for (const std::size_t block_size : {std::size_t{1}, std::size_t{7}, std::size_t{16}})
                for (const bool head_major : {false, true}) {
                    const Problem p = make_problem(s, dtype, seed += 3);
                    const Result want = run_contiguous(p);
                    const std::size_t D = s.head_dim, Hkv = s.kv_heads, blocks = (s.tokens + block_size - 1) / block_size;
                    // vLLM's flash layout [blocks, block_size, Hkv, D] (token major in a block, the
                    // default block stride), or [blocks, Hkv, block_size, D] with a padded block.
                    const std::size_t token_stride = head_major ? D : Hkv * D;
                    const std::size_t head_stride = head_major ? block_size * D : D;
                    const std::size_t block_stride = head_major ? Hkv * block_size * D + 5 : block_size * Hkv * D;
                    Pool pool(dtype, block_size, blocks + 3, block_stride, token_stride, head_stride);
                    const std::vector<std::int32_t> table = shuffled_blocks(blocks + 3, seed);
                    pool.place(p, table.data());
                    Result got{std::vector<float>(want.out.size(), -7.0f), std::vector<float>(want.lse.size(), -7.0f)};
                    kvfuse::AttentionArgs a = contiguous_args(p, got.out.data(), got.lse.data());
                    a.keys = pool.k.data();
                    a.values = pool.v.data();
                    a.kv_token_stride = token_stride;
                    a.kv_head_stride = head_major ? head_stride : 0;
                    a.with_paged_kv(table.data(), block_size, blocks + 3, head_major ? block_stride : 0);
                    ASSERT_EQ(kvfuse_sparse_attention(&a), KVFUSE_OK) << kvfuse_last_error();
                    const std::string what = std::string(dtype_name(dtype)) + " block size " + std::to_string(block_size) +
                                             (head_major ? " head major" : " token major") + " D " + std::to_string(D) +
                                             " T " + std::to_string(s.tokens);
                    expect_same_bits(got.out.data(), want.out.data(), got.out.size(), what + " out");
                    expect_same_bits(got.lse.data(), want.lse.data(), got.lse.size(), what + " lse");
                }
}

// Tuning that sends even these small calls down the parallel path (two packed units in flight,
// row blocks of 2), restored afterwards.
class ParallelTuning {
   public:
    ParallelTuning() {
        kvfuse_get_tuning(&saved_);
        kvfuse_tuning t = saved_;
        t.attention_parallel_work = 0;
        t.attention_row_block = 2;
        EXPECT_EQ(kvfuse_set_tuning(&t), KVFUSE_OK) << kvfuse_last_error();
    }
    ~ParallelTuning() { kvfuse_set_tuning(&saved_); }

   private:
    kvfuse::Tuning saved_;
};

// Several sequences in one call (one without rows, one without keys, one of a single key, rows
// unsorted): each row exactly what its sequence's own contiguous call gives, contiguous keys
// (cu_kv_tokens into one tensor) or paged (a table per sequence, blocks of all sequences
// shuffled in one pool), at 1, 3, 7 and the machine's threads; the reference agrees.
TEST_P(AttentionLayoutTest, SequencesMatchTheirOwnCallsBitForBit) {
    const ParallelTuning tuning;
    struct Sequence {
        std::size_t rows, keys;
    };
    const Sequence plan[] = {{9, 120}, {1, 1}, {0, 40}, {7, 33}, {0, 0}, {4, 70}};
    const std::size_t H = 8, Hkv = 2, D = 40, block_size = 7;
    for (const kvfuse_dtype dtype : kDtypes) {
        std::vector<Problem> problems;
        std::vector<Result> wants;
        std::vector<std::int64_t> cu_rows{0}, cu_kv{0}, positions;
        std::vector<float> q;
        std::uint32_t seed = 700;
        for (const Sequence& s : plan) {
            Problem p = s.keys > 0 ? make_problem({s.rows, H, Hkv, D, s.keys}, dtype, seed += 5)
                                   : Problem{{0, H, Hkv, D, 0}, dtype, {}, Tensor(dtype, 0), Tensor(dtype, 0), {}};
            wants.push_back(s.rows > 0 ? run_contiguous(p) : Result{});
            q.insert(q.end(), p.q.begin(), p.q.end());
            positions.insert(positions.end(), p.positions.begin(), p.positions.end());
            cu_rows.push_back(cu_rows.back() + static_cast<std::int64_t>(s.rows));
            cu_kv.push_back(cu_kv.back() + static_cast<std::int64_t>(s.keys));
            problems.push_back(std::move(p));
        }
        const std::size_t rows = static_cast<std::size_t>(cu_rows.back()), keys = static_cast<std::size_t>(cu_kv.back());
        // Contiguous: the sequences' keys one after another.
        Tensor k(dtype, keys * Hkv * D), v(dtype, keys * Hkv * D);
        for (std::size_t s = 0; s < problems.size(); ++s)
            for (std::size_t i = 0; i < problems[s].k.elements; ++i) {
                k.copy_from(static_cast<std::size_t>(cu_kv[s]) * Hkv * D + i, problems[s].k, i);
                v.copy_from(static_cast<std::size_t>(cu_kv[s]) * Hkv * D + i, problems[s].v, i);
            }
        // Paged: each sequence's blocks drawn from one shuffled pool, tables padded with -1
        // (never read) to a stride of the longest sequence's blocks + 2.
        std::size_t total_blocks = 0, most_blocks = 0;
        for (const Sequence& s : plan) {
            total_blocks += (s.keys + block_size - 1) / block_size;
            most_blocks = std::max(most_blocks, (s.keys + block_size - 1) / block_size);
        }
        const std::size_t table_stride = most_blocks + 2;
        const std::vector<std::int32_t> ids = shuffled_blocks(total_blocks + 4, 99);
        std::vector<std::int32_t> tables(problems.size() * table_stride, -1);
        Pool pool(dtype, block_size, total_blocks + 4, block_size * Hkv * D, Hkv * D, D);
        for (std::size_t s = 0, next = 0; s < problems.size(); ++s) {
            for (std::size_t b = 0; b < (plan[s].keys + block_size - 1) / block_size; ++b) tables[s * table_stride + b] = ids[next++];
            pool.place(problems[s], tables.data() + s * table_stride);
        }
        for (const bool paged : {false, true}) {
            const std::string what = std::string(dtype_name(dtype)) + (paged ? " paged" : " contiguous");
            std::vector<float> out(rows * H * D), lse(rows * H);
            kvfuse::AttentionArgs a;
            a.queries = q.data();
            a.rows = rows;
            a.query_heads = H;
            a.head_dim = D;
            a.query_row_stride = H * D;
            a.positions = positions.data();
            a.keys = paged ? pool.k.data() : k.data();
            a.values = paged ? pool.v.data() : v.data();
            a.kv_dtype = dtype;
            a.kv_tokens = keys;
            a.kv_heads = Hkv;
            a.kv_token_stride = Hkv * D;
            a.scale = 1.0f / std::sqrt(static_cast<float>(D));
            a.out = out.data();
            a.out_row_stride = H * D;
            a.with_sequences(problems.size(), cu_rows.data(), cu_kv.data()).with_lse(lse.data());
            if (paged) a.with_paged_kv(tables.data(), block_size, total_blocks + 4, 0, table_stride);
            kvfuse::testing::at_thread_counts([&](int threads) {
                std::fill(out.begin(), out.end(), -7.0f);
                std::fill(lse.begin(), lse.end(), -7.0f);
                ASSERT_EQ(kvfuse_sparse_attention(&a), KVFUSE_OK) << kvfuse_last_error();
                for (std::size_t s = 0; s < problems.size(); ++s) {
                    const std::size_t first = static_cast<std::size_t>(cu_rows[s]);
                    const std::string where = what + " threads " + std::to_string(threads) + " sequence " + std::to_string(s);
                    expect_same_bits(out.data() + first * H * D, wants[s].out.data(), plan[s].rows * H * D, where + " out");
                    expect_same_bits(lse.data() + first * H, wants[s].lse.data(), plan[s].rows * H, where + " lse");
                }
            });
            // The reference on the same arguments: within the bound of the contiguous tests, and
            // bit for bit its own contiguous answer (its arithmetic does not depend on the layout).
            std::vector<float> ref_out(out.size(), -7.0f), ref_lse(lse.size(), -7.0f);
            kvfuse_attention_args r = a;
            r.out = ref_out.data();
            r.lse = ref_lse.data();
            kvfuse::reference::sparse_attention(r);
            expect_near_reference(out, ref_out, 6e-5, what + " out against the reference");
            expect_near_reference(lse, ref_lse, 2e-5, what + " lse against the reference");
            for (std::size_t s = 0; s < problems.size(); ++s) {
                if (plan[s].rows == 0) continue;
                std::vector<float> own_out(plan[s].rows * H * D), own_lse(plan[s].rows * H);
                const kvfuse::AttentionArgs own = contiguous_args(problems[s], own_out.data(), own_lse.data());
                kvfuse::reference::sparse_attention(own);
                const std::size_t first = static_cast<std::size_t>(cu_rows[s]);
                expect_same_bits(ref_out.data() + first * H * D, own_out.data(), own_out.size(), what + " reference out");
                expect_same_bits(ref_lse.data() + first * H, own_lse.data(), own_lse.size(), what + " reference lse");
            }
        }
    }
}

// lse = log sum_j exp(scale q.k_j): two calls over keys [0, m) and [m, T) merged with their lse
// give one call's out and lse (split-K; the second shard also as a paged call on the second half
// of a block table).
TEST_P(AttentionLayoutTest, LogSumExpMergesSplitKeys) {
    const std::size_t H = 8, Hkv = 2, D = 64, T = 300, m = 128, block_size = 16;
    for (const kvfuse_dtype dtype : kDtypes) {
        Problem p = make_problem({10, H, Hkv, D, T}, dtype, 41);
        std::mt19937 rng(5);
        for (auto& position : p.positions) position = static_cast<std::int64_t>(m + rng() % (T - m));
        const Result whole = run_contiguous(p);
        // First shard: every row sees all m keys.
        Problem first = p;
        for (auto& position : first.positions) position = m - 1;
        first.s.tokens = m;
        const Result a = run_contiguous(first);
        // Second shard, paged: keys m.. through the tail of a shuffled table.
        const std::size_t blocks = (T + block_size - 1) / block_size;
        Pool pool(dtype, block_size, blocks, block_size * Hkv * D, Hkv * D, D);
        const std::vector<std::int32_t> table = shuffled_blocks(blocks, 8);
        pool.place(p, table.data());
        Result b{std::vector<float>(whole.out.size()), std::vector<float>(whole.lse.size())};
        std::vector<std::int64_t> shifted(p.positions);
        for (auto& position : shifted) position -= static_cast<std::int64_t>(m);
        kvfuse::AttentionArgs second = contiguous_args(p, b.out.data(), b.lse.data());
        second.positions = shifted.data();
        second.kv_tokens = T - m;
        second.keys = pool.k.data();
        second.values = pool.v.data();
        second.with_paged_kv(table.data() + m / block_size, block_size, blocks);
        ASSERT_EQ(kvfuse_sparse_attention(&second), KVFUSE_OK) << kvfuse_last_error();
        for (std::size_t r = 0; r < p.s.rows; ++r)
            for (std::size_t h = 0; h < H; ++h) {
                const double la = a.lse[r * H + h], lb = b.lse[r * H + h], top = std::max(la, lb);
                const double lse = top + std::log(std::exp(la - top) + std::exp(lb - top));
                ASSERT_NEAR(lse, whole.lse[r * H + h], 2e-5 * std::max(1.0, std::fabs(lse))) << dtype_name(dtype);
                for (std::size_t d = 0; d < D; ++d) {
                    const std::size_t i = (r * H + h) * D + d;
                    const double merged = std::exp(la - lse) * a.out[i] + std::exp(lb - lse) * b.out[i];
                    ASSERT_NEAR(merged, whole.out[i], 6e-5) << dtype_name(dtype) << " row " << r << " head " << h;
                }
            }
    }
}

// Arguments of the V2 fields that are refused, each with a message naming what is wrong.
TEST_P(AttentionLayoutTest, BadLayoutsAreRefused) {
    const std::size_t H = 4, Hkv = 2, D = 8, block_size = 4;
    Problem p = make_problem({4, H, Hkv, D, 20}, KVFUSE_DTYPE_F32, 5);
    p.positions = {3, 19, 0, 10};
    const std::size_t blocks = 5;
    Pool pool(KVFUSE_DTYPE_F32, block_size, blocks + 1, block_size * Hkv * D, Hkv * D, D);
    std::vector<std::int32_t> table = shuffled_blocks(blocks + 1, 3);
    pool.place(p, table.data());
    std::vector<float> out(4 * H * D), lse(4 * H);
    const std::vector<std::int64_t> cu_rows{0, 2, 4}, cu_kv{0, 20, 20};
    kvfuse::AttentionArgs base = contiguous_args(p, out.data(), lse.data());
    base.keys = pool.k.data();
    base.values = pool.v.data();
    base.with_paged_kv(table.data(), block_size, blocks + 1);
    ASSERT_EQ(kvfuse_sparse_attention(&base), KVFUSE_OK) << kvfuse_last_error();
    auto refused = [&](auto change, kvfuse_status expected, const char* words) {
        kvfuse::AttentionArgs a = base;
        change(a);
        std::fill(out.begin(), out.end(), -7.0f);
        EXPECT_EQ(kvfuse_sparse_attention(&a), expected) << words;
        EXPECT_NE(std::string(kvfuse_last_error()).find(words), std::string::npos)
            << "'" << kvfuse_last_error() << "' does not say '" << words << "'";
        EXPECT_EQ(out[0], -7.0f) << words;
    };
    const auto invalid = KVFUSE_ERROR_INVALID_ARGUMENT;
    std::vector<std::int32_t> bad = table;
    refused([&](auto& a) { bad[2] = -1, a.kv_block_table = bad.data(); }, invalid, "kv_block_table[2] (sequence 0, block 2) = -1");
    refused([&](auto& a) { bad[2] = 6, a.kv_block_table = bad.data(); }, invalid, "outside [0, kv_blocks_total = 6)");
    refused([&](auto& a) { a.kv_blocks_total = 0; }, invalid, "kv_blocks_total must be > 0");
    refused([&](auto& a) { a.kv_block_size = 0; }, invalid, "kv_block_size");
    refused([&](auto& a) { a.kv_block_stride = block_size * Hkv * D - 1; }, invalid, "kv_block_stride");
    refused([&](auto& a) { a.kv_block_table = nullptr; }, invalid, "must be 0 without kv_block_table");
    refused([&](auto& a) { a.kv_block_table = reinterpret_cast<const std::int32_t*>(reinterpret_cast<const char*>(table.data()) + 1); },
            invalid, "kv_block_table must be aligned");
    // Several sequences: two of 2 rows, the second without keys (its rows are out of range).
    std::vector<std::int64_t> rows_bad{0, 3, 2}, rows_short{0, 2, 3}, rows_late{1, 2, 4}, kv_bad{0, 20, 19}, kv_short{0, 10, 18};
    const std::vector<std::int64_t> good_kv{0, 10, 20};
    refused([&](auto& a) { a.with_sequences(2, rows_bad.data(), good_kv.data()); }, invalid, "cu_rows[2] = 2 < cu_rows[1] = 3");
    refused([&](auto& a) { a.with_sequences(2, rows_short.data(), good_kv.data()); }, invalid, "cu_rows[sequences] = 3 must equal rows (4)");
    refused([&](auto& a) { a.with_sequences(2, rows_late.data(), good_kv.data()); }, invalid, "cu_rows[0] = 1 must be 0");
    refused([&](auto& a) { a.with_sequences(2, cu_rows.data(), kv_bad.data()); }, invalid, "cu_kv_tokens[2] = 19 < cu_kv_tokens[1] = 20");
    refused([&](auto& a) { a.with_sequences(2, cu_rows.data(), kv_short.data()); }, invalid, "must equal kv_tokens (20)");
    refused([&](auto& a) { a.with_sequences(2, cu_rows.data(), cu_kv.data()); }, invalid,
            "positions[2] = 0 is outside [0, the keys of its sequence 1 = 0)");
    // Row 1 at 19 in a sequence of 10 keys.
    refused([&](auto& a) { a.with_sequences(2, cu_rows.data(), good_kv.data()); }, invalid,
            "positions[1] = 19 is outside [0, the keys of its sequence 0 = 10)");
    refused([&](auto& a) { a.with_sequences(2, cu_rows.data(), nullptr); }, KVFUSE_ERROR_NULL_POINTER, "cu_rows and cu_kv_tokens are required");
    refused([&](auto& a) { a.cu_rows = cu_rows.data(); }, invalid, "must be NULL when sequences is 0");
    // Paged sequences: the table stride must cover the longest sequence (5 blocks).
    std::vector<std::int64_t> positions_ok{3, 9, 0, 9};
    refused([&](auto& a) {
        a.positions = positions_ok.data();
        a.with_sequences(2, cu_rows.data(), good_kv.data()).kv_block_table_stride = 2;
    }, invalid, "kv_block_table_stride (2) must be >= the blocks of the longest sequence (3)");
    // Overlapping heads and rows.
    refused([&](auto& a) { a.out_head_stride = D - 1; }, invalid, "out_head_stride (7) must be >= head_dim (8)");
    refused([&](auto& a) { a.query_head_stride = D + 1; }, invalid, "query_row_stride (32) must be >= (heads - 1) * query_head_stride");
    refused([&](auto& a) { a.out_row_stride = D, a.out_head_stride = 2 * D; }, invalid,
            "out_head_stride (16) must be >= (rows - 1) * out_row_stride + head_dim (32)");
    refused([&](auto& a) { a.kv_head_stride = D - 2; }, invalid, "kv_head_stride (6) must be >= head_dim (8)");
    refused([&](auto& a) { a.lse_row_stride = H - 1; }, invalid, "lse_row_stride (3) must be >= query_heads (4)");
    refused([&](auto& a) { a.lse = reinterpret_cast<float*>(reinterpret_cast<char*>(lse.data()) + 2); },
            invalid, "lse must be aligned");
    refused([&](auto& a) { a.kv_block_stride = std::numeric_limits<std::size_t>::max() / 2; }, invalid, "overflows");
    refused([&](auto& a) { a.out_head_stride = std::numeric_limits<std::size_t>::max() / 2; }, invalid, "overflows");
    // With a valid sequence split and paging the call runs.
    kvfuse::AttentionArgs ok = base;
    ok.positions = positions_ok.data();
    std::vector<std::int32_t> tables(2 * 3);
    for (std::size_t b = 0; b < 3; ++b) tables[b] = table[b], tables[3 + b] = table[b];
    ok.with_sequences(2, cu_rows.data(), good_kv.data()).with_paged_kv(tables.data(), block_size, blocks + 1, 0, 3);
    EXPECT_EQ(kvfuse_sparse_attention(&ok), KVFUSE_OK) << kvfuse_last_error();
}

// A caller compiled against V1 of the struct: the V2 fields past its struct_size are never read
// (garbage there changes nothing); sizes of no version are refused.
TEST_P(AttentionLayoutTest, VersionOneStructsRunAsBefore) {
    static_assert(KVFUSE_ATTENTION_ARGS_SIZE_V1 < KVFUSE_ATTENTION_ARGS_SIZE_V2, "V2 appends fields");
    static_assert(KVFUSE_ATTENTION_ARGS_SIZE_V1 == offsetof(kvfuse_attention_args, out_row_stride) + sizeof(size_t),
                  "V1 ends at out_row_stride");
    const Problem p = make_problem({7, 8, 2, 64, 90}, KVFUSE_DTYPE_BF16, 12);
    const Result want = run_contiguous(p);
    std::vector<float> out(want.out.size(), -7.0f);
    kvfuse_attention_args a = contiguous_args(p, out.data(), nullptr);
    std::memset(reinterpret_cast<char*>(&a) + KVFUSE_ATTENTION_ARGS_SIZE_V1, 0xa5,
                sizeof a - KVFUSE_ATTENTION_ARGS_SIZE_V1);
    a.struct_size = KVFUSE_ATTENTION_ARGS_SIZE_V1;
    ASSERT_EQ(kvfuse_sparse_attention(&a), KVFUSE_OK) << kvfuse_last_error();
    expect_same_bits(out.data(), want.out.data(), out.size(), "V1 struct");
    for (const std::size_t size : {std::size_t{0}, KVFUSE_ATTENTION_ARGS_SIZE_V1 + 8, KVFUSE_ATTENTION_ARGS_SIZE_V2 + 8}) {
        a.struct_size = size;
        EXPECT_EQ(kvfuse_sparse_attention(&a), KVFUSE_ERROR_STRUCT_SIZE) << size;
    }
}

}  // namespace
