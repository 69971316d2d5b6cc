// Keys where engines keep them (kvfuse.h, "RoPE on strided and paged caches"): RoPE and A3
// relevance over strided, head-major and paged (block table) layouts on every kernel build,
// bit for bit the same call on the same keys packed; f16 / bf16 keys in relevance segments and
// in kvfuse_select_rows, bit for bit the f32 call on the widened keys; select segments (V3) in
// those layouts, bit for bit the packed ones at every precision; the key quantizers reading those
// layouts in place, bit for bit the packed quantization; every bad layout refused with an error
// naming the field.
//
// Each layout is addressed here by the test's own arithmetic (Pool::at), not the library's.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "dispatch/api_internal.h"
#include "isa_test_support.h"
#include "kernels/common/bf16.h"
#include "reference/f16_reference.h"
#include "reference/rope_reference.h"
#include "reference/score_reference.h"

namespace kvfuse::testing {
namespace {

// ---- layouts -------------------------------------------------------------------------------

// A pool of `blocks_total` blocks (or one run when block_size is 0: not paged) holding a
// sequence of tokens x heads x width elements, every other element a sentinel.
struct Pool {
    std::size_t tokens = 0, heads = 0, width = 0;
    std::size_t token_stride = 0, head_stride = 0, block_size = 0, block_stride = 0, blocks_total = 0, offset = 0;
    std::vector<std::int32_t> table;  // empty: not paged

    // Element offset of the call's token t, head h.
    std::size_t at(std::size_t t, std::size_t h) const {
        const std::size_t logical = offset + t;
        const std::size_t row = table.empty() ? logical * token_stride
                                              : static_cast<std::size_t>(table[logical / block_size]) * block_stride +
                                                    logical % block_size * token_stride;
        return row + h * head_stride;
    }
    std::size_t elements() const {
        if (table.empty()) return (offset + tokens - 1) * token_stride + (heads - 1) * head_stride + width + 3;
        return blocks_total * block_stride;
    }
    kvfuse::detail::KeyLayout layout() const {
        kvfuse::detail::KeyLayout l;
        l.token_stride = token_stride;
        l.head_stride = head_stride;
        l.block_table = table.empty() ? nullptr : table.data();
        l.block_size = table.empty() ? 1 : block_size;
        l.block_stride = block_stride;
        l.token_offset = offset;
        return l;
    }
};

enum class Kind { token_major, head_major };

// A paged pool (block_size > 0; the blocks shuffled, a few spare ones, the sequence starting at
// `offset`) or a strided one (block_size 0), token-major with padding or head-major.
Pool make_pool(std::size_t tokens, std::size_t heads, std::size_t width, std::size_t block_size, Kind kind,
               std::size_t offset, std::uint32_t seed) {
    Pool p;
    p.tokens = tokens, p.heads = heads, p.width = width, p.block_size = block_size, p.offset = offset;
    const std::size_t run = block_size > 0 ? block_size : offset + tokens;
    if (kind == Kind::token_major) {
        p.head_stride = width + (heads > 1 ? 1 : 0);
        p.token_stride = (heads - 1) * p.head_stride + width + 3;
    } else {
        p.token_stride = width + 2;
        p.head_stride = (run - 1) * p.token_stride + width + 5;
    }
    if (block_size > 0) {
        p.block_stride = (run - 1) * p.token_stride + (heads - 1) * p.head_stride + width + 7;
        const std::size_t used = (offset + tokens + block_size - 1) / block_size;
        p.blocks_total = used + 3;
        std::vector<std::int32_t> order(p.blocks_total);
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), std::mt19937(seed));
        p.table.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(used));
    }
    return p;
}

// Sentinel-filled storage of a pool, and a packed tensor written into it.
template <class S>
std::vector<S> pool_storage(const Pool& p) {
    S sentinel;
    std::memset(&sentinel, 0x5a, sizeof sentinel);
    return std::vector<S>(p.elements(), sentinel);
}
template <class S>
void scatter(const Pool& p, const S* packed, std::vector<S>& storage) {
    for (std::size_t t = 0; t < p.tokens; ++t)
        for (std::size_t h = 0; h < p.heads; ++h)
            std::memcpy(storage.data() + p.at(t, h), packed + (t * p.heads + h) * p.width, p.width * sizeof(S));
}

template <class S>
::testing::AssertionResult same_bits(const std::vector<S>& a, const std::vector<S>& b) {
    if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes " << a.size() << " and " << b.size();
    for (std::size_t i = 0; i < a.size(); ++i)
        if (std::memcmp(&a[i], &b[i], sizeof(S)) != 0) {
            std::uint32_t x = 0, y = 0;
            std::memcpy(&x, &a[i], sizeof(S));
            std::memcpy(&y, &b[i], sizeof(S));
            return ::testing::AssertionFailure() << "first difference at element " << i << ": 0x" << std::hex << x
                                                 << " and 0x" << y;
        }
    return ::testing::AssertionSuccess();
}

// Random keys of a dtype as storage S (float for f32, uint16_t for bf16 and f16).
template <class S>
std::vector<S> random_keys(std::size_t count, kvfuse_dtype dtype, std::uint32_t seed) {
    const std::vector<float> f = random_floats(count, seed, 2.0f);
    std::vector<S> out(count);
    if constexpr (sizeof(S) == 4) {
        out = f;
    } else {
        for (std::size_t i = 0; i < count; ++i)
            out[i] = dtype == KVFUSE_DTYPE_BF16 ? kvfuse::detail::f32_to_bf16_bits(f[i]) : kvfuse::reference::f32_to_f16(f[i]);
    }
    return out;
}

std::vector<std::int64_t> random_deltas(std::size_t tokens, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<std::int64_t> dist(-40000, 40000);
    std::vector<std::int64_t> out(tokens);
    for (std::size_t t = 0; t < tokens;) {  // runs of one delta (a chunk) and single tokens
        const std::int64_t d = dist(rng);
        for (std::size_t k = 0, run = 1 + rng() % 4; k < run && t < tokens; ++k) out[t++] = d;
    }
    return out;
}

void set_dst(kvfuse_rope_args& a, void* base, const Pool& p) {
    a.dst = base;
    a.dst_token_stride = p.token_stride;
    a.dst_head_stride = p.head_stride;
    a.dst_block_table = p.table.empty() ? nullptr : p.table.data();
    a.dst_block_size = p.table.empty() ? 0 : p.block_size;
    a.dst_block_stride = p.table.empty() ? 0 : p.block_stride;
    a.dst_blocks_total = p.table.empty() ? 0 : p.blocks_total;
    a.dst_token_offset = p.offset;
}
void set_src(kvfuse_rope_args& a, const void* base, const Pool& p) {
    a.src = base;
    a.src_token_stride = p.token_stride;
    a.src_head_stride = p.head_stride;
    a.src_block_table = p.table.empty() ? nullptr : p.table.data();
    a.src_block_size = p.table.empty() ? 0 : p.block_size;
    a.src_block_stride = p.table.empty() ? 0 : p.block_stride;
    a.src_blocks_total = p.table.empty() ? 0 : p.blocks_total;
    a.src_token_offset = p.offset;
}
// One kvfuse_rope_rotate_layout call's rows (tokens x heads of dtype, per-token deltas); the
// caller says where they are (set_dst, set_src).
kvfuse_rope_args rope_args(const kvfuse_rope_config& config, kvfuse_dtype dtype, std::size_t tokens, std::size_t heads,
                           const std::int64_t* deltas) {
    kvfuse_rope_args a;
    kvfuse_rope_args_init(&a);
    a.config = &config;
    a.dtype = dtype;
    a.tokens = tokens;
    a.heads = heads;
    a.deltas = deltas;
    return a;
}

// ---- RoPE ----------------------------------------------------------------------------------

struct RopeShape {
    int head_dim, rotary;
    std::size_t heads, tokens;
};

using RopeLayoutTest = IsaTest;
KVFUSE_INSTANTIATE_ISA_TESTS(RopeLayoutTest);

template <class S>
void check_rope_layouts(kvfuse_dtype dtype, const RopeShape& shape, kvfuse_rope_pairing pairing, std::size_t block_size,
                        std::uint32_t seed) {
    kvfuse_rope_config config;
    kvfuse_rope_config_init(&config, shape.head_dim);
    config.rotary_dims = shape.rotary;
    config.pairing = pairing;
    const std::size_t T = shape.tokens, H = shape.heads, D = static_cast<std::size_t>(shape.head_dim), row = H * D;
    const std::vector<S> stored = random_keys<S>(T * row, dtype, seed);
    const std::vector<std::int64_t> deltas = random_deltas(T, seed + 1), deltas2 = random_deltas(T, seed + 2);
    const std::int64_t span = 4096 + seed % 977;

    // The fused load: a stored chunk, packed, copied rotated into a paged cache at an offset.
    std::vector<S> expected(T * row);
    ASSERT_EQ(kvfuse_rope_rotate_copy(&config, dtype, stored.data(), row, expected.data(), row, T, H, deltas.data()),
              KVFUSE_OK);
    const Pool paged = make_pool(T, H, D, block_size, Kind::token_major, 5, seed + 3);
    std::vector<S> cache = pool_storage<S>(paged), want = pool_storage<S>(paged);
    scatter(paged, expected.data(), want);
    kvfuse_rope_args a = rope_args(config, dtype, T, H, deltas.data());
    set_dst(a, cache.data(), paged);
    a.src = stored.data();
    ASSERT_EQ(kvfuse_rope_rotate_layout(&a), KVFUSE_OK) << kvfuse_last_error();
    ASSERT_TRUE(same_bits(cache, want)) << "packed -> paged copy differs from the packed call (or wrote outside its rows)";

    // In place on the paged cache, one delta for every token.
    ASSERT_EQ(kvfuse_rope_rotate_span(&config, dtype, expected.data(), T, H, row, span), KVFUSE_OK);
    scatter(paged, expected.data(), want);
    kvfuse_rope_args in_place = a;
    in_place.src = nullptr;
    in_place.deltas = nullptr;
    in_place.delta = span;
    ASSERT_EQ(kvfuse_rope_rotate_layout(&in_place), KVFUSE_OK) << kvfuse_last_error();
    ASSERT_TRUE(same_bits(cache, want)) << "in place on pages differs from the packed call";

    // Paged -> head-major pages (FlashInfer's HND), per-token deltas.
    std::vector<S> next(T * row);
    ASSERT_EQ(kvfuse_rope_rotate_copy(&config, dtype, expected.data(), row, next.data(), row, T, H, deltas2.data()),
              KVFUSE_OK);
    const Pool hnd = make_pool(T, H, D, block_size, Kind::head_major, 2, seed + 4);
    std::vector<S> hnd_cache = pool_storage<S>(hnd), hnd_want = pool_storage<S>(hnd);
    scatter(hnd, next.data(), hnd_want);
    kvfuse_rope_args between = rope_args(config, dtype, T, H, deltas2.data());
    set_dst(between, hnd_cache.data(), hnd);
    set_src(between, cache.data(), paged);
    ASSERT_EQ(kvfuse_rope_rotate_layout(&between), KVFUSE_OK) << kvfuse_last_error();
    ASSERT_TRUE(same_bits(hnd_cache, hnd_want)) << "paged -> HND pages differs from the packed call";

    // Strided, not paged: padded heads in place, then head-major out of them.
    const Pool strided = make_pool(T, H, D, 0, Kind::token_major, 1, 0);
    std::vector<S> tensor = pool_storage<S>(strided), tensor_want = pool_storage<S>(strided);
    scatter(strided, stored.data(), tensor);
    std::vector<S> rotated = stored;
    ASSERT_EQ(kvfuse_rope_rotate(&config, dtype, rotated.data(), T, H, row, deltas.data()), KVFUSE_OK);
    scatter(strided, rotated.data(), tensor_want);
    kvfuse_rope_args strided_args = rope_args(config, dtype, T, H, deltas.data());
    set_dst(strided_args, tensor.data(), strided);
    ASSERT_EQ(kvfuse_rope_rotate_layout(&strided_args), KVFUSE_OK) << kvfuse_last_error();
    ASSERT_TRUE(same_bits(tensor, tensor_want)) << "strided heads in place differ from the packed call";

    if constexpr (sizeof(S) == 4) {
        // And against the reference, through its own layout form: within the f32 bound of test_rope.
        std::vector<S> ref = pool_storage<S>(paged);
        kvfuse::reference::rope_rotate(config, dtype, dtype, stored.data(), kvfuse::detail::KeyLayout::packed(row, D), ref.data(),
                                       paged.layout(), T, H, deltas.data(), 0);
        std::vector<S> got = pool_storage<S>(paged);
        a.dst = got.data();
        ASSERT_EQ(kvfuse_rope_rotate_layout(&a), KVFUSE_OK);
        for (std::size_t t = 0; t < T; ++t)
            for (std::size_t h = 0; h < H; ++h) {
                float scale = 0.0f;
                for (std::size_t d = 0; d < D; ++d) scale = std::max(scale, std::fabs(stored[(t * H + h) * D + d]));
                for (std::size_t d = 0; d < D; ++d) {
                    const std::size_t at = paged.at(t, h) + d;
                    ASSERT_NEAR(got[at], ref[at], 8.0 / (1 << 24) * scale + 1e-30) << "t " << t << " h " << h << " d " << d;
                }
            }
    }
}

TEST_P(RopeLayoutTest, StridedAndPagedAreThePackedCallBitForBit) {
    const RopeShape shapes[] = {{8, 8, 2, 37}, {6, 6, 3, 20}, {10, 6, 3, 19}, {64, 64, 4, 50},
                                {128, 128, 2, 33}, {80, 80, 1, 17}, {16, 16, 1, 5}, {130, 128, 2, 9},
                                // NeoX heads of 4, 8, 16 dims: the in-vector path (packed) against
                                // the per-head path (heads apart), plus heads left over.
                                {8, 8, 3, 21}, {4, 4, 5, 11}, {16, 16, 3, 7}, {8, 8, 8, 9}};
    std::uint32_t seed = 100;
    for (const RopeShape& shape : shapes)
        for (kvfuse_rope_pairing pairing : {KVFUSE_ROPE_NEOX, KVFUSE_ROPE_INTERLEAVED})
            for (std::size_t block_size : {1u, 16u, 7u}) {
                SCOPED_TRACE("D " + std::to_string(shape.head_dim) + " rotary " + std::to_string(shape.rotary) + " heads " +
                             std::to_string(shape.heads) + " tokens " + std::to_string(shape.tokens) + " pairing " +
                             std::to_string(pairing) + " block " + std::to_string(block_size));
                {
                    SCOPED_TRACE("f32");
                    check_rope_layouts<float>(KVFUSE_DTYPE_F32, shape, pairing, block_size, ++seed);
                }
                {
                    SCOPED_TRACE("bf16");
                    check_rope_layouts<std::uint16_t>(KVFUSE_DTYPE_BF16, shape, pairing, block_size, ++seed);
                }
                {
                    SCOPED_TRACE("f16");
                    check_rope_layouts<std::uint16_t>(KVFUSE_DTYPE_F16, shape, pairing, block_size, ++seed);
                }
                if (HasFatalFailure()) return;
            }
}

// The converting copy (V2): keys of one type rotated into a paged cache of another. On the SIMD
// ISAs bit for bit the three steps it replaces (widen to f32, rotate in f32, round to the cache's
// type); on the scalar ISA (the reference: a double rotation rounded once) within one step of
// the cache's type.
void widen(kvfuse_dtype type, const std::vector<std::uint16_t>& in16, const std::vector<float>& in32, std::vector<float>& out) {
    if (type == KVFUSE_DTYPE_F32) out = in32;
    else if (type == KVFUSE_DTYPE_F16) ASSERT_EQ(kvfuse_f16_to_f32(in16.data(), out.data(), out.size()), KVFUSE_OK);
    else ASSERT_EQ(kvfuse_bf16_to_f32(in16.data(), out.data(), out.size()), KVFUSE_OK);
}
void narrow(kvfuse_dtype type, const std::vector<float>& in, std::vector<std::uint16_t>& out16, std::vector<float>& out32) {
    if (type == KVFUSE_DTYPE_F32) out32 = in;
    else if (type == KVFUSE_DTYPE_F16) ASSERT_EQ(kvfuse_f32_to_f16(in.data(), out16.data(), in.size()), KVFUSE_OK);
    else ASSERT_EQ(kvfuse_f32_to_bf16(in.data(), out16.data(), in.size()), KVFUSE_OK);
}
double as_double(kvfuse_dtype type, const void* base, std::size_t i) {
    if (type == KVFUSE_DTYPE_F32) return static_cast<const float*>(base)[i];
    const std::uint16_t bits = static_cast<const std::uint16_t*>(base)[i];
    return type == KVFUSE_DTYPE_F16 ? kvfuse::reference::f16_to_f32(bits) : kvfuse::detail::bf16_bits_to_f32(bits);
}

TEST_P(RopeLayoutTest, ConvertingCopyIsTheRotationThenTheConversion) {
    const bool exact = GetParam().isa != kvfuse::Isa::scalar;
    const RopeShape shapes[] = {{8, 8, 3, 21}, {64, 64, 4, 37}, {128, 128, 2, 19}, {80, 80, 2, 9}, {128, 64, 2, 7}};
    const std::pair<kvfuse_dtype, kvfuse_dtype> conversions[] = {
        {KVFUSE_DTYPE_F32, KVFUSE_DTYPE_F16}, {KVFUSE_DTYPE_F32, KVFUSE_DTYPE_BF16}, {KVFUSE_DTYPE_F16, KVFUSE_DTYPE_F32},
        {KVFUSE_DTYPE_BF16, KVFUSE_DTYPE_F32}, {KVFUSE_DTYPE_F16, KVFUSE_DTYPE_BF16}};
    std::uint32_t seed = 300;
    for (const RopeShape& shape : shapes)
        for (kvfuse_rope_pairing pairing : {KVFUSE_ROPE_NEOX, KVFUSE_ROPE_INTERLEAVED})
            for (const auto& [from, to] : conversions) {
                SCOPED_TRACE("D " + std::to_string(shape.head_dim) + " rotary " + std::to_string(shape.rotary) +
                             " pairing " + std::to_string(pairing) + " from " + std::to_string(from) + " to " +
                             std::to_string(to));
                ++seed;
                kvfuse_rope_config config;
                kvfuse_rope_config_init(&config, shape.head_dim);
                config.rotary_dims = shape.rotary;
                config.pairing = pairing;
                const std::size_t T = shape.tokens, H = shape.heads, D = static_cast<std::size_t>(shape.head_dim), row = H * D;
                const std::vector<float> src32 = random_keys<float>(T * row, KVFUSE_DTYPE_F32, seed);
                const std::vector<std::uint16_t> src16 = random_keys<std::uint16_t>(T * row, from, seed);
                const std::vector<std::int64_t> deltas = random_deltas(T, seed + 1);
                // The three steps, packed.
                std::vector<float> wide(T * row), rotated(T * row), want32(T * row);
                std::vector<std::uint16_t> want16(T * row);
                widen(from, src16, src32, wide);
                ASSERT_EQ(kvfuse_rope_rotate_copy(&config, KVFUSE_DTYPE_F32, wide.data(), row, rotated.data(), row, T, H,
                                                  deltas.data()),
                          KVFUSE_OK);
                narrow(to, rotated, want16, want32);
                // The one call, into a paged cache.
                const Pool paged = make_pool(T, H, D, 4, Kind::token_major, 3, seed + 2);
                std::vector<float> cache32 = pool_storage<float>(paged), expect32 = pool_storage<float>(paged);
                std::vector<std::uint16_t> cache16 = pool_storage<std::uint16_t>(paged), expect16 = pool_storage<std::uint16_t>(paged);
                kvfuse_rope_args a = rope_args(config, to, T, H, deltas.data());
                a.convert = 1;
                a.src_dtype = from;
                set_dst(a, to == KVFUSE_DTYPE_F32 ? static_cast<void*>(cache32.data()) : cache16.data(), paged);
                a.src = from == KVFUSE_DTYPE_F32 ? static_cast<const void*>(src32.data()) : src16.data();
                ASSERT_EQ(kvfuse_rope_rotate_layout(&a), KVFUSE_OK) << kvfuse_last_error();
                if (to == KVFUSE_DTYPE_F32) scatter(paged, want32.data(), expect32);
                else scatter(paged, want16.data(), expect16);
                if (exact) {
                    if (to == KVFUSE_DTYPE_F32) ASSERT_TRUE(same_bits(cache32, expect32));
                    else ASSERT_TRUE(same_bits(cache16, expect16));
                } else {
                    const void* got = to == KVFUSE_DTYPE_F32 ? static_cast<const void*>(cache32.data()) : cache16.data();
                    const void* want = to == KVFUSE_DTYPE_F32 ? static_cast<const void*>(expect32.data()) : expect16.data();
                    const double step = to == KVFUSE_DTYPE_F32 ? 8.0 / (1 << 24) : to == KVFUSE_DTYPE_F16 ? 1.0 / 1024 : 1.0 / 128;
                    for (std::size_t t = 0; t < T; ++t)
                        for (std::size_t h = 0; h < H; ++h)
                            for (std::size_t d = 0; d < D; ++d) {
                                const std::size_t at = paged.at(t, h) + d;
                                const double w = as_double(to, want, at);
                                ASSERT_NEAR(as_double(to, got, at), w, step * std::max(1.0, std::fabs(w)) * 2.5)
                                    << "t " << t << " h " << h << " d " << d;
                            }
                }
                if (HasFatalFailure()) return;
            }
}

// A converting call is checked: a bad src_dtype, and convert in place, are refused.
TEST_P(RopeLayoutTest, ConvertingCopyIsChecked) {
    kvfuse_rope_config config;
    kvfuse_rope_config_init(&config, 8);
    std::vector<float> src(8, 1.0f);
    std::vector<std::uint16_t> dst(8);
    kvfuse_rope_args a;
    kvfuse_rope_args_init(&a);
    a.config = &config;
    a.dtype = KVFUSE_DTYPE_F16;
    a.convert = 1;
    a.src_dtype = static_cast<kvfuse_dtype>(7);
    a.tokens = 1;
    a.heads = 1;
    a.dst = dst.data();
    a.src = src.data();
    EXPECT_EQ(kvfuse_rope_rotate_layout(&a), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(kvfuse_last_error()).find("src_dtype"), std::string::npos) << kvfuse_last_error();
    a.src_dtype = KVFUSE_DTYPE_F32;
    a.src = nullptr;
    EXPECT_EQ(kvfuse_rope_rotate_layout(&a), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(kvfuse_last_error()).find("convert"), std::string::npos) << kvfuse_last_error();
    // A V1 struct (without the two fields) is still accepted, and the types stay one.
    a.src = src.data();
    a.dtype = KVFUSE_DTYPE_F32;
    a.struct_size = KVFUSE_ROPE_ARGS_SIZE_V1;
    std::vector<float> out(8);
    a.dst = out.data();
    EXPECT_EQ(kvfuse_rope_rotate_layout(&a), KVFUSE_OK) << kvfuse_last_error();
}

// Large enough to run on several workers: bit for bit the one-thread packed call at every count.
TEST_P(RopeLayoutTest, PagedCopyAtEveryThreadCount) {
    kvfuse_rope_config config;
    kvfuse_rope_config_init(&config, 64);
    const std::size_t T = 1500, H = 8, D = 64, row = H * D;
    const std::vector<float> stored = random_floats(T * row, 77, 2.0f);
    omp_set_num_threads(1);
    std::vector<float> expected(T * row);
    ASSERT_EQ(kvfuse_rope_rotate_span_copy(&config, KVFUSE_DTYPE_F32, stored.data(), row, expected.data(), row, T, H, 3000),
              KVFUSE_OK);
    const Pool paged = make_pool(T, H, D, 16, Kind::token_major, 11, 5);
    std::vector<float> want = pool_storage<float>(paged);
    scatter(paged, expected.data(), want);
    at_thread_counts([&](int) {
        std::vector<float> cache = pool_storage<float>(paged);
        kvfuse_rope_args a;
        kvfuse_rope_args_init(&a);
        a.config = &config;
        a.tokens = T;
        a.heads = H;
        a.delta = 3000;
        set_dst(a, cache.data(), paged);
        a.src = stored.data();
        ASSERT_EQ(kvfuse_rope_rotate_layout(&a), KVFUSE_OK) << kvfuse_last_error();
        ASSERT_TRUE(same_bits(cache, want));
    });
}

// The C++ wrapper over a context: the same bits.
TEST_P(RopeLayoutTest, CppWrapperWithAContext) {
    kvfuse::Context context;
    ASSERT_TRUE(kvfuse::Context::create(context).ok());
    kvfuse::RopeConfig config;
    config.head_dim = 16;
    const std::size_t T = 20, H = 2, row = 32;
    const std::vector<kvfuse::f16> stored = [&] {
        std::vector<kvfuse::f16> v(T * row);
        const std::vector<float> f = random_floats(T * row, 9, 1.0f);
        for (std::size_t i = 0; i < v.size(); ++i) v[i].bits = kvfuse::reference::f32_to_f16(f[i]);
        return v;
    }();
    std::vector<kvfuse::f16> expected(T * row);
    ASSERT_TRUE(kvfuse::rope_rotate_span_copy(config, stored.data(), row, expected.data(), row, T, H, 77).ok());
    const Pool paged = make_pool(T, H, 16, 16, Kind::token_major, 3, 8);
    std::vector<std::uint16_t> cache = pool_storage<std::uint16_t>(paged), want = pool_storage<std::uint16_t>(paged);
    scatter(paged, reinterpret_cast<const std::uint16_t*>(expected.data()), want);
    kvfuse::RopeArgs a;
    a.tokens = T;
    a.heads = H;
    a.delta = 77;
    set_dst(a, nullptr, paged);
    kvfuse::set_rope_keys(a, reinterpret_cast<kvfuse::f16*>(cache.data()), stored.data());
    const kvfuse::Status s = kvfuse::rope_rotate_layout(context, config, a);
    ASSERT_TRUE(s.ok()) << s.message();
    EXPECT_TRUE(same_bits(cache, want));
}

// ---- argument checks ------------------------------------------------------------------------

std::string last_error() { return kvfuse_last_error(); }

TEST(RopeLayoutChecks, BadLayoutsAreRefusedNamingTheField) {
    kvfuse_rope_config config;
    kvfuse_rope_config_init(&config, 8);
    const std::size_t T = 20, H = 2;
    std::vector<float> stored(T * H * 8, 1.0f);
    const Pool paged = make_pool(T, H, 8, 4, Kind::token_major, 0, 1);
    std::vector<float> cache = pool_storage<float>(paged);
    const std::vector<float> cache_before = cache;
    kvfuse_rope_args good;
    kvfuse_rope_args_init(&good);
    good.config = &config;
    good.tokens = T;
    good.heads = H;
    good.delta = 5;
    set_dst(good, cache.data(), paged);
    good.src = stored.data();
    auto refused = [&](kvfuse_rope_args a, kvfuse_status status, const std::string& word) {
        EXPECT_EQ(kvfuse_rope_rotate_layout(&a), status) << word;
        EXPECT_NE(last_error().find(word), std::string::npos) << last_error();
        EXPECT_TRUE(same_bits(cache, cache_before)) << "a refused call wrote";
    };
    for (std::int32_t entry : {-1, static_cast<std::int32_t>(paged.blocks_total), 1 << 30}) {
        std::vector<std::int32_t> table = paged.table;
        table[3] = entry;
        kvfuse_rope_args a = good;
        a.dst_block_table = table.data();
        refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "dst_block_table[3] (" + std::to_string(entry) + ")");
    }
    {
        // An offset of one block moves the call onto entries 1..5: the last is checked too.
        kvfuse_rope_args a = good;
        std::vector<std::int32_t> table = paged.table;
        table.push_back(-7);
        a.dst_block_table = table.data();
        a.dst_token_offset = 4;
        refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "dst_block_table[5] (-7)");
    }
    kvfuse_rope_args a = good;
    a.dst_block_size = 0;
    refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "dst_block_size");
    a = good;
    a.dst_blocks_total = 0;
    refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "dst_blocks_total");
    a = good;
    a.dst_block_stride = paged.token_stride;  // smaller than a block
    refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "dst_block_stride");
    a = good;
    a.dst_head_stride = 7;
    refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "dst_head_stride");
    a = good;
    a.dst_token_stride = 9;  // heads overlap the next token
    refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "overlap");
    a = good;
    a.src_block_size = 16;  // block fields without a table
    refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "src_block_table is NULL");
    a = good;
    a.dst_blocks_total = SIZE_MAX / 2;
    refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "dst_blocks_total");
    a = good;
    a.dst_block_table = reinterpret_cast<const std::int32_t*>(reinterpret_cast<const char*>(paged.table.data()) + 1);
    refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "dst_block_table must be aligned");
    a = good;
    a.dst_block_size = 1;  // one token a block: a table of 2^62 entries (2^64 bytes), refused before any is read
    a.dst_token_offset = SIZE_MAX / 4;
    refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "dst_block_table would need");
    a = good;
    a.src = cache.data() + 3;  // inside the destination pool
    a.src_token_stride = 0;
    refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "overlap");
    a = good;
    a.config = nullptr;
    refused(a, KVFUSE_ERROR_NULL_POINTER, "args->config");
    a = good;
    a.dst = nullptr;
    refused(a, KVFUSE_ERROR_NULL_POINTER, "args->dst");
    a = good;
    a.dtype = static_cast<kvfuse_dtype>(5);
    refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "args->dtype");
    a = good;
    a.heads = 0;
    refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "args->heads");
    for (std::size_t size : {std::size_t{0}, sizeof(kvfuse_rope_args) + 8, sizeof(kvfuse_rope_args) - 4,
                              KVFUSE_ROPE_ARGS_SIZE_V1 - 8}) {
        a = good;
        a.struct_size = size;
        refused(a, KVFUSE_ERROR_STRUCT_SIZE, "args->struct_size");
    }
    kvfuse_rope_config bad_config = config;
    bad_config.struct_size = 3;
    a = good;
    a.config = &bad_config;
    refused(a, KVFUSE_ERROR_STRUCT_SIZE, "args->config->struct_size");
    EXPECT_EQ(kvfuse_rope_rotate_layout(nullptr), KVFUSE_ERROR_NULL_POINTER);
    // In place with src = dst in the same layout is allowed; tokens 0 is nothing to do.
    a = good;
    set_src(a, cache.data(), paged);
    EXPECT_EQ(kvfuse_rope_rotate_layout(&a), KVFUSE_OK) << last_error();
    a = good;
    a.tokens = 0;
    a.dst = nullptr;
    EXPECT_EQ(kvfuse_rope_rotate_layout(&a), KVFUSE_OK);
}

// ---- A3 relevance ---------------------------------------------------------------------------

struct RelevanceShape {
    std::size_t M, C, H, Hkv, D;
};

using RelevanceLayoutTest = IsaTest;
KVFUSE_INSTANTIATE_ISA_TESTS(RelevanceLayoutTest);

// A pool's layout in the key_* fields of the relevance call, a relevance segment or a select
// segment (whose token stride is key_row_stride).
template <class Keys>
void set_key_layout(Keys& a, const Pool& p) {
    if constexpr (std::is_base_of_v<kvfuse_select_segment, Keys>)
        a.key_row_stride = p.token_stride;
    else
        a.key_token_stride = p.token_stride;
    a.key_head_stride = p.head_stride;
    a.key_block_table = p.table.empty() ? nullptr : p.table.data();
    a.key_block_size = p.table.empty() ? 0 : p.block_size;
    a.key_block_stride = p.table.empty() ? 0 : p.block_stride;
    a.key_blocks_total = p.table.empty() ? 0 : p.blocks_total;
    a.key_token_offset = p.offset;
}

std::vector<Pool> key_pools(const RelevanceShape& c, std::size_t width, std::uint32_t seed) {
    return {make_pool(c.C, c.Hkv, width, 1, Kind::token_major, 2, seed),
            make_pool(c.C, c.Hkv, width, 16, Kind::token_major, 5, seed + 1),
            make_pool(c.C, c.Hkv, width, 7, Kind::head_major, 0, seed + 2),
            make_pool(c.C, c.Hkv, width, 0, Kind::token_major, 3, 0),
            make_pool(c.C, c.Hkv, width, 0, Kind::head_major, 0, 0)};
}

template <class S>
void check_typed_relevance(const RelevanceShape& c, kvfuse_dtype dtype, std::uint32_t seed) {
    const std::vector<float> q = random_floats(c.M * c.H * c.D, seed, 1.0f);
    const std::vector<S> keys = random_keys<S>(c.C * c.Hkv * c.D, dtype, seed + 1);
    const std::size_t docs = c.C - c.M;
    kvfuse::RelevanceArgs packed;
    packed.question_rows = c.M;
    packed.candidates = c.C;
    packed.query_heads = c.H;
    packed.kv_heads = c.Hkv;
    packed.head_dim = c.D;
    packed.queries_f32 = q.data();
    packed.smoothing = 1;
    packed.keys_dtype = dtype;
    packed.keys = keys.data();
    std::vector<float> want(docs + 1, -1.0f);
    packed.out = want.data();
    ASSERT_EQ(kvfuse_a3_relevance(&packed), KVFUSE_OK) << kvfuse_last_error();
    for (const Pool& pool : key_pools(c, c.D, seed + 2)) {
        std::vector<S> storage = pool_storage<S>(pool);
        if constexpr (sizeof(S) == 4) std::fill(storage.begin(), storage.end(), std::nanf(""));  // NaN must not be read
        scatter(pool, keys.data(), storage);
        kvfuse::RelevanceArgs a = packed;
        a.keys = storage.data();
        set_key_layout(a, pool);
        std::vector<float> got(docs + 1, -1.0f);
        a.out = got.data();
        ASSERT_EQ(kvfuse_a3_relevance(&a), KVFUSE_OK) << kvfuse_last_error();
        ASSERT_TRUE(same_bits(got, want)) << "block " << pool.block_size << " offset " << pool.offset << " head stride "
                                          << pool.head_stride;
        // The reference reads the layout too.
        std::vector<float> ref(docs + 1, -1.0f), ref_packed(docs + 1, -1.0f);
        a.out = ref.data();
        kvfuse::reference::a3_relevance(a);
        kvfuse::RelevanceArgs b = packed;
        b.out = ref_packed.data();
        kvfuse::reference::a3_relevance(b);
        ASSERT_TRUE(same_bits(ref, ref_packed));
        for (std::size_t j = 0; j < docs; ++j) ASSERT_NEAR(got[j], ref[j], 2e-4 * (1.0 + ref[j])) << j;
    }
}

template <bool kInt4>
void check_quantized_relevance(const RelevanceShape& c, std::uint32_t seed) {
    const std::vector<float> q = random_floats(c.M * c.H * c.D, seed, 1.0f);
    const std::vector<float> k = random_floats(c.C * c.Hkv * c.D, seed + 1, 1.0f);
    const std::size_t width = kInt4 ? (c.D + 1) / 2 : c.D, docs = c.C - c.M;
    std::vector<std::uint8_t> keys(c.C * c.Hkv * width);
    std::vector<float> scales(c.C * c.Hkv), means(c.Hkv * c.D), query_scales(c.M * c.H);
    std::vector<std::int8_t> q8(q.size());
    if (kInt4)
        ASSERT_EQ(kvfuse_quantize_keys_i4(k.data(), c.C, c.Hkv, c.D, c.Hkv * c.D, keys.data(), scales.data(), means.data()),
                  KVFUSE_OK);
    else
        ASSERT_EQ(kvfuse_quantize_keys_i8(k.data(), c.C, c.Hkv, c.D, c.Hkv * c.D, reinterpret_cast<std::int8_t*>(keys.data()),
                                          scales.data(), means.data()),
                  KVFUSE_OK);
    ASSERT_EQ(kvfuse_quantize_rows_i8(q.data(), c.M, c.H, c.D, c.H * c.D, q8.data(), query_scales.data()), KVFUSE_OK);
    kvfuse::RelevanceArgs packed;
    packed.question_rows = c.M;
    packed.candidates = c.C;
    packed.query_heads = c.H;
    packed.kv_heads = c.Hkv;
    packed.head_dim = c.D;
    packed.queries_i8 = q8.data();
    packed.query_scales = query_scales.data();
    packed.key_scales = scales.data();
    if (kInt4)
        packed.keys_i4 = keys.data();
    else
        packed.keys_i8 = reinterpret_cast<const std::int8_t*>(keys.data());
    std::vector<float> want(docs, -1.0f);
    packed.out = want.data();
    ASSERT_EQ(kvfuse_a3_relevance(&packed), KVFUSE_OK) << kvfuse_last_error();
    for (const Pool& pool : key_pools(c, width, seed + 2)) {
        std::vector<std::uint8_t> storage = pool_storage<std::uint8_t>(pool);
        scatter(pool, keys.data(), storage);
        kvfuse::RelevanceArgs a = packed;
        if (kInt4)
            a.keys_i4 = storage.data();
        else
            a.keys_i8 = reinterpret_cast<const std::int8_t*>(storage.data());
        set_key_layout(a, pool);
        std::vector<float> got(docs, -1.0f);
        a.out = got.data();
        ASSERT_EQ(kvfuse_a3_relevance(&a), KVFUSE_OK) << kvfuse_last_error();
        ASSERT_TRUE(same_bits(got, want)) << "block " << pool.block_size << " head stride " << pool.head_stride;
    }
}

const RelevanceShape kRelevanceShapes[] = {{3, 50, 4, 2, 32}, {5, 77, 4, 2, 20}, {4, 131, 8, 4, 64},
                                           {2, 9, 2, 1, 9},   {6, 33, 6, 3, 3},  {7, 70, 4, 1, 128},
                                           {3, 66, 4, 2, 80}, {2, 41, 2, 1, 97}};

TEST_P(RelevanceLayoutTest, StridedAndPagedKeysAreThePackedCallBitForBit) {
    std::uint32_t seed = 300;
    for (const RelevanceShape& c : kRelevanceShapes) {
        SCOPED_TRACE("M " + std::to_string(c.M) + " C " + std::to_string(c.C) + " D " + std::to_string(c.D));
        check_typed_relevance<float>(c, KVFUSE_DTYPE_F32, ++seed);
        check_typed_relevance<std::uint16_t>(c, KVFUSE_DTYPE_BF16, ++seed);
        check_typed_relevance<std::uint16_t>(c, KVFUSE_DTYPE_F16, ++seed);
        check_quantized_relevance<false>(c, ++seed);
        check_quantized_relevance<true>(c, ++seed);
        if (HasFatalFailure()) return;
    }
}

// Segments with f16 / bf16 keys (and paged / strided ones) read in place: bit for bit the same
// segments with the keys widened to packed f32; V1-sized segment arrays still read.
TEST_P(RelevanceLayoutTest, SegmentsWithTypedKeysAreTheWidenedF32Call) {
    const RelevanceShape c{4, 90, 4, 2, 24};
    const std::size_t docs = c.C - c.M, first = 37;
    for (kvfuse_dtype dtype : {KVFUSE_DTYPE_F16, KVFUSE_DTYPE_BF16}) {
        const std::vector<float> q0 = random_floats(c.M * c.H * c.D, 40 + dtype, 1.0f),
                                 q1 = random_floats(c.M * c.H * c.D, 41 + dtype, 1.0f);
        const std::vector<float> bias0 = random_floats(c.M, 42, 3.0f);
        const std::vector<std::uint16_t> keys = random_keys<std::uint16_t>(c.C * c.Hkv * c.D, dtype, 43 + dtype);
        std::vector<float> widened(keys.size());
        for (std::size_t i = 0; i < keys.size(); ++i) widened[i] = kvfuse::reference::element_as_f32(dtype, keys.data(), i);
        // Segment 0 (first keys) paged in 7-token blocks, segment 1 packed.
        const Pool pool = make_pool(first, c.Hkv, c.D, 7, Kind::token_major, 1, 44);
        std::vector<std::uint16_t> storage = pool_storage<std::uint16_t>(pool);
        scatter(pool, keys.data(), storage);
        kvfuse::RelevanceSegment typed[2], wide[2];
        typed[0].keys = wide[0].keys = first;
        typed[1].keys = wide[1].keys = c.C - first;
        typed[0].queries_f32 = wide[0].queries_f32 = q0.data();
        typed[1].queries_f32 = wide[1].queries_f32 = q1.data();
        typed[0].bias = wide[0].bias = bias0.data();
        typed[0].keys_dtype = typed[1].keys_dtype = dtype;
        typed[0].typed_keys = storage.data();
        set_key_layout(typed[0], pool);
        typed[1].typed_keys = keys.data() + first * c.Hkv * c.D;
        wide[0].keys_f32 = widened.data();
        wide[1].keys_f32 = widened.data() + first * c.Hkv * c.D;
        kvfuse::RelevanceArgs a;
        a.question_rows = c.M;
        a.candidates = c.C;
        a.query_heads = c.H;
        a.kv_heads = c.Hkv;
        a.head_dim = c.D;
        a.segment_count = 2;
        std::vector<float> got(docs), want(docs), ref(docs), v1(docs);
        a.segments = typed;
        a.out = got.data();
        ASSERT_EQ(kvfuse_a3_relevance(&a), KVFUSE_OK) << kvfuse_last_error();
        a.segments = wide;
        a.out = want.data();
        ASSERT_EQ(kvfuse_a3_relevance(&a), KVFUSE_OK) << kvfuse_last_error();
        EXPECT_TRUE(same_bits(got, want)) << "dtype " << dtype;
        a.segments = typed;
        a.out = ref.data();
        kvfuse::reference::a3_relevance(a);
        for (std::size_t j = 0; j < docs; ++j) ASSERT_NEAR(got[j], ref[j], 2e-4 * (1.0 + ref[j])) << j;
        // The f32 segments again as a V1 array (its elements are V1-sized: stepped by struct_size).
        std::vector<unsigned char> packed_v1(2 * KVFUSE_RELEVANCE_SEGMENT_SIZE_V1);
        for (int i = 0; i < 2; ++i) {
            kvfuse_relevance_segment s = wide[i];
            s.struct_size = KVFUSE_RELEVANCE_SEGMENT_SIZE_V1;
            std::memcpy(packed_v1.data() + i * KVFUSE_RELEVANCE_SEGMENT_SIZE_V1, &s, KVFUSE_RELEVANCE_SEGMENT_SIZE_V1);
        }
        alignas(8) unsigned char aligned[2 * sizeof(kvfuse_relevance_segment)];
        std::memcpy(aligned, packed_v1.data(), packed_v1.size());
        a.segments = reinterpret_cast<const kvfuse_relevance_segment*>(aligned);
        a.out = v1.data();
        ASSERT_EQ(kvfuse_a3_relevance(&a), KVFUSE_OK) << kvfuse_last_error();
        EXPECT_TRUE(same_bits(v1, want));
    }
}

TEST(RelevanceLayoutChecks, BadLayoutsAreRefusedNamingTheField) {
    const RelevanceShape c{2, 30, 2, 1, 8};
    const std::vector<float> q(c.M * c.H * c.D, 0.5f), keys(c.C * c.Hkv * c.D, 0.25f);
    const Pool pool = make_pool(c.C, c.Hkv, c.D, 4, Kind::token_major, 0, 3);
    std::vector<float> storage = pool_storage<float>(pool);
    scatter(pool, keys.data(), storage);
    std::vector<float> out(c.C);
    kvfuse::RelevanceArgs good;
    good.question_rows = c.M;
    good.candidates = c.C;
    good.query_heads = c.H;
    good.kv_heads = c.Hkv;
    good.head_dim = c.D;
    good.queries_f32 = q.data();
    good.keys_f32 = storage.data();
    set_key_layout(good, pool);
    good.out = out.data();
    ASSERT_EQ(kvfuse_a3_relevance(&good), KVFUSE_OK) << kvfuse_last_error();
    auto refused = [&](const kvfuse_relevance_args& a, kvfuse_status status, const std::string& word) {
        EXPECT_EQ(kvfuse_a3_relevance(&a), status) << word;
        EXPECT_NE(last_error().find(word), std::string::npos) << last_error();
    };
    std::vector<std::int32_t> table = pool.table;
    table[5] = static_cast<std::int32_t>(pool.blocks_total);
    kvfuse::RelevanceArgs a = good;
    a.key_block_table = table.data();
    refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "key_block_table[5]");
    a = good;
    a.key_token_stride = 5;  // tokens of 8 elements, 5 apart
    refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "overlap");
    a = good;
    a.key_blocks_total = 0;
    refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "key_blocks_total");
    // Layout fields describe the top-level keys: with segments they are refused.
    kvfuse::RelevanceSegment segment;
    segment.keys = c.C;
    segment.queries_f32 = q.data();
    segment.keys_f32 = keys.data();
    a = good;
    a.keys_f32 = nullptr;
    a.segment_count = 1;
    a.segments = &segment;
    refused(a, KVFUSE_ERROR_INVALID_ARGUMENT, "layout fields");
    // A segment's own layout, checked and named by its index.
    kvfuse::RelevanceSegment segments[2];
    segments[0].keys = 10;
    segments[0].queries_f32 = q.data();
    segments[0].keys_f32 = keys.data();
    segments[1].keys = c.C - 10;
    segments[1].queries_f32 = q.data();
    segments[1].keys_f32 = storage.data();
    set_key_layout(segments[1], pool);
    std::vector<std::int32_t> table2 = pool.table;
    table2[2] = -1;
    segments[1].key_block_table = table2.data();
    kvfuse::RelevanceArgs with_segments = good;
    set_key_layout(with_segments, Pool{});
    with_segments.key_head_stride = 0;
    with_segments.key_token_stride = 0;
    with_segments.keys_f32 = nullptr;
    with_segments.segment_count = 2;
    with_segments.segments = segments;
    refused(with_segments, KVFUSE_ERROR_INVALID_ARGUMENT, "segments[1].key_block_table[2] (-1)");
    segments[1].key_block_table = pool.table.data();
    EXPECT_EQ(kvfuse_a3_relevance(&with_segments), KVFUSE_OK) << last_error();
    // Typed and f32 keys in one segment; an unknown dtype; mixed element versions.
    segments[1].typed_keys = keys.data();
    refused(with_segments, KVFUSE_ERROR_INVALID_ARGUMENT, "not both");
    segments[1].keys_f32 = nullptr;
    segments[1].keys_dtype = static_cast<kvfuse_dtype>(9);
    refused(with_segments, KVFUSE_ERROR_INVALID_ARGUMENT, "keys_dtype");
    segments[1].keys_dtype = KVFUSE_DTYPE_F32;
    segments[1].struct_size = KVFUSE_RELEVANCE_SEGMENT_SIZE_V1;
    refused(with_segments, KVFUSE_ERROR_STRUCT_SIZE, "segments[1]->struct_size");
    segments[0].struct_size = 12;
    refused(with_segments, KVFUSE_ERROR_STRUCT_SIZE, "segments[0]->struct_size");
    // A V3 caller (no layout fields) still reads packed keys.
    kvfuse::RelevanceArgs v3 = good;
    v3.keys_f32 = keys.data();
    v3.struct_size = KVFUSE_RELEVANCE_ARGS_SIZE_V3;
    std::vector<float> v3_out(c.C), v4_out(c.C);
    v3.out = v3_out.data();
    EXPECT_EQ(kvfuse_a3_relevance(&v3), KVFUSE_OK) << last_error();
    a = good;
    a.out = v4_out.data();
    EXPECT_EQ(kvfuse_a3_relevance(&a), KVFUSE_OK);
    EXPECT_TRUE(same_bits(v3_out, v4_out));
}

// ---- the key quantizers over paged and strided keys -------------------------------------------

using QuantizeLayoutTest = IsaTest;
KVFUSE_INSTANTIATE_ISA_TESTS(QuantizeLayoutTest);

// kvfuse_ctx_select_rows quantizes a segment's keys where its layout puts them (no packed copy,
// dispatch/api_internal.h): int8 / int4 bytes, scales and means bit for bit reference::quantize_keys
// of the same keys packed, for paged (shuffled blocks, a sequence starting mid-block), head-major
// and padded token-major layouts, on one worker and on three (the means split by 64-column
// blocks inside a head: 130 = 64 + 64 + 2), f32 / f16 / bf16. The pools' sentinels are huge
// values: a wrong token, head or block address changes a mean or a scale.
template <class S>
void check_quantize_layouts(kvfuse_dtype dtype, std::uint32_t seed) {
    struct Case {
        std::size_t block_size;
        Kind kind;
        const char* name;
    };
    const Case layouts[] = {{16, Kind::token_major, "paged token-major"},
                            {8, Kind::head_major, "paged head-major"},
                            {1, Kind::token_major, "one token per block"},
                            {0, Kind::head_major, "strided head-major"},
                            {0, Kind::token_major, "strided token-major"}};
    struct Shape {
        std::size_t tokens, heads, head_dim;
    };
    for (const Shape& shape : {Shape{67, 3, 130}, Shape{41, 8, 20}, Shape{9, 1, 17}, Shape{30, 4, 8}, Shape{21, 4, 64}})
        for (const Case& layout : layouts)
            for (int threads : {1, 2, 3}) {  // 2 and 3: heads split among workers where they divide, else tokens
                const std::size_t T = shape.tokens, Hkv = shape.heads, D = shape.head_dim;
                SCOPED_TRACE(std::string(layout.name) + ", dtype " + std::to_string(dtype) + ", " + std::to_string(T) + " x " +
                             std::to_string(Hkv) + " x " + std::to_string(D) + ", threads " + std::to_string(threads));
                const std::vector<S> packed = random_keys<S>(T * Hkv * D, dtype, seed++);
                const Pool pool = make_pool(T, Hkv, D, layout.block_size, layout.kind, 5, seed++);
                std::vector<S> stored = pool_storage<S>(pool);
                scatter(pool, packed.data(), stored);
                kvfuse::detail::KeyLayout l;
                l.token_stride = pool.token_stride, l.head_stride = pool.head_stride, l.token_offset = pool.offset;
                if (!pool.table.empty())
                    l.block_table = pool.table.data(), l.block_size = pool.block_size, l.block_stride = pool.block_stride;
                // Workers for any size (quantize_parallel_work 1), so three really split the work.
                kvfuse_tuning tuning;
                kvfuse_tuning_init(&tuning);
                ASSERT_EQ(kvfuse_default_tuning(&tuning), KVFUSE_OK);
                tuning.quantize_parallel_work = 1;
                kvfuse_context_options options;
                kvfuse_context_options_init(&options);
                options.threads = threads;
                options.tuning = &tuning;
                kvfuse_context* ctx = nullptr;
                ASSERT_EQ(kvfuse_context_create(&options, &ctx), KVFUSE_OK) << kvfuse_last_error();
                for (int bits : {8, 4}) {
                    const std::size_t out_bytes = T * Hkv * (bits == 8 ? D : (D + 1) / 2);
                    std::vector<std::uint8_t> out(out_bytes, 0xa5), want(out_bytes, 0x5a);
                    std::vector<float> scales(T * Hkv, -1.0f), want_scales(T * Hkv, -2.0f);
                    std::vector<float> means(Hkv * D, -1.0f), want_means(Hkv * D, -2.0f);
                    kvfuse::reference::quantize_keys(dtype, packed.data(), T, Hkv, D, Hkv * D, bits, want.data(),
                                                     want_scales.data(), want_means.data());
                    ASSERT_EQ(kvfuse::detail::quantize_keys_in_layout(*ctx, dtype, stored.data(), T, Hkv, D, l, bits, out.data(),
                                                                      scales.data(), means.data()),
                              KVFUSE_OK)
                        << kvfuse_last_error();
                    EXPECT_EQ(0, std::memcmp(means.data(), want_means.data(), means.size() * sizeof(float))) << "means, int" << bits;
                    EXPECT_EQ(0, std::memcmp(scales.data(), want_scales.data(), scales.size() * sizeof(float)))
                        << "scales, int" << bits;
                    EXPECT_EQ(out, want) << "quantized keys, int" << bits;
                }
                kvfuse_context_destroy(ctx);
            }
}

TEST_P(QuantizeLayoutTest, PagedAndStridedKeysAreThePackedQuantizationF32) { check_quantize_layouts<float>(KVFUSE_DTYPE_F32, 300); }
TEST_P(QuantizeLayoutTest, PagedAndStridedKeysAreThePackedQuantizationF16) {
    check_quantize_layouts<std::uint16_t>(KVFUSE_DTYPE_F16, 400);
}
TEST_P(QuantizeLayoutTest, PagedAndStridedKeysAreThePackedQuantizationBf16) {
    check_quantize_layouts<std::uint16_t>(KVFUSE_DTYPE_BF16, 500);
}

// ---- kvfuse_select_rows with f16 / bf16 keys ---------------------------------------------------

// An A3 selection of k rows (prefix 2, smoothing) over `segments`, twice with two segment lists:
// both must succeed and give the same scores bit for bit and the same k rows.
struct SelectShape {
    std::size_t M, H, Hkv, D, documents, k;
    const float* queries;
    const kvfuse_rope_config* rope;
};
void expect_same_selection(const SelectShape& s, kvfuse_key_precision precision, std::size_t segment_count,
                           const kvfuse_select_segment* first, const kvfuse_select_segment* second) {
    kvfuse::SelectArgs a;
    a.method = KVFUSE_SELECT_A3;
    a.prefix_rows = 2;
    a.documents = s.documents;
    a.question_rows = s.M;
    a.k = s.k;
    a.query_heads = s.H;
    a.kv_heads = s.Hkv;
    a.head_dim = s.D;
    a.queries = s.queries;
    a.key_precision = precision;
    a.smoothing = 1;
    a.rope = s.rope;
    a.segment_count = segment_count;
    std::vector<std::int64_t> rows[2] = {std::vector<std::int64_t>(s.k), std::vector<std::int64_t>(s.k)};
    std::vector<float> scores[2] = {std::vector<float>(s.documents), std::vector<float>(s.documents)};
    std::size_t count[2] = {0, 0};
    for (int run = 0; run < 2; ++run) {
        a.segments = run == 0 ? first : second;
        a.rows = rows[run].data();
        a.rows_capacity = s.k;
        a.row_count = &count[run];
        a.scores = scores[run].data();
        ASSERT_EQ(kvfuse_select_rows(&a), KVFUSE_OK) << "run " << run << ": " << kvfuse_last_error();
    }
    EXPECT_TRUE(same_bits(scores[0], scores[1]));
    EXPECT_EQ(rows[0], rows[1]);
    EXPECT_EQ(count[0], s.k);
    EXPECT_EQ(count[1], s.k);
}

using SelectTypedKeysTest = IsaTest;
KVFUSE_INSTANTIATE_ISA_TESTS(SelectTypedKeysTest);

// f16 / bf16 keys (strided rows, two chunks shifted into their own frames, or one segment) give
// the scores and rows of the same keys widened to f32, at every precision: the f32 path widens
// exactly in registers and the quantizers are bit for bit the f32 call on the widened input.
TEST_P(SelectTypedKeysTest, TypedKeysAreTheWidenedF32Keys) {
    const std::size_t M = 3, Hkv = 2, H = 4, D = 16, kv_row = Hkv * D, stride = kv_row + 5;
    const std::size_t chunk[2] = {40, 31}, docs = chunk[0] + chunk[1] - M;
    kvfuse_rope_config rope;
    kvfuse_rope_config_init(&rope, D);
    const std::vector<float> queries = random_floats(M * H * D, 60, 1.0f);
    for (kvfuse_dtype dtype : {KVFUSE_DTYPE_F16, KVFUSE_DTYPE_BF16})
        for (kvfuse_key_precision precision : {KVFUSE_KEYS_F32, KVFUSE_KEYS_INT8, KVFUSE_KEYS_INT4})
            for (std::size_t segment_count : {1u, 2u}) {
                SCOPED_TRACE("dtype " + std::to_string(dtype) + " precision " + std::to_string(precision) + " segments " +
                             std::to_string(segment_count));
                std::vector<std::uint16_t> typed[2];
                std::vector<float> wide[2];
                kvfuse::SelectSegment t_seg[2], w_seg[2];
                for (int g = 0; g < 2; ++g) {
                    const std::size_t tokens = segment_count == 1 ? chunk[0] + chunk[1] : chunk[g];
                    typed[g] = random_keys<std::uint16_t>(tokens * stride, dtype, 61 + g);
                    wide[g].resize(typed[g].size());
                    for (std::size_t i = 0; i < wide[g].size(); ++i)
                        wide[g][i] = kvfuse::reference::element_as_f32(dtype, typed[g].data(), i);
                    t_seg[g].tokens = w_seg[g].tokens = tokens;
                    t_seg[g].position_shift = w_seg[g].position_shift = g == 0 || segment_count == 1 ? 0 : 300;
                    t_seg[g].key_row_stride = w_seg[g].key_row_stride = stride;
                    kvfuse::set_select_keys(t_seg[g], reinterpret_cast<const kvfuse::f16*>(typed[g].data()));
                    t_seg[g].keys_dtype = dtype;
                    w_seg[g].keys_f32 = wide[g].data();
                }
                expect_same_selection({M, H, Hkv, D, docs, 11, queries.data(), &rope}, precision, segment_count, t_seg, w_seg);
            }
}

// The argument checks' base call: A3 (no smoothing, no RoPE) picking k = 3 of `documents` rows
// from `segments` with M question rows of `queries`, into rows (3 of them) and count.
struct ThreeRowSelection {
    std::vector<std::int64_t> rows = std::vector<std::int64_t>(3);
    std::size_t count = 0;
    kvfuse::SelectArgs args;
    ThreeRowSelection(std::size_t documents, std::size_t M, std::size_t H, std::size_t Hkv, std::size_t D,
                      const float* queries, const kvfuse_select_segment* segments, std::size_t segment_count) {
        args.documents = documents;
        args.question_rows = M;
        args.k = 3;
        args.query_heads = H;
        args.kv_heads = Hkv;
        args.head_dim = D;
        args.queries = queries;
        args.segment_count = segment_count;
        args.segments = segments;
        args.rows = rows.data();
        args.rows_capacity = rows.size();
        args.row_count = &count;
    }
    ThreeRowSelection(const ThreeRowSelection&) = delete;  // args points into it
    ThreeRowSelection& operator=(const ThreeRowSelection&) = delete;
};

TEST(SelectTypedKeysChecks, KeysAreChecked) {
    const std::size_t M = 2, Hkv = 1, H = 2, D = 8;
    const std::vector<float> queries(M * H * D, 0.5f), keys(20 * D, 0.25f);
    const std::vector<std::uint16_t> halves(20 * D, 0x3c00);
    kvfuse::SelectSegment segment;
    segment.tokens = 20;
    segment.keys_f32 = keys.data();
    ThreeRowSelection selection(18, M, H, Hkv, D, queries.data(), &segment, 1);
    kvfuse::SelectArgs& a = selection.args;
    ASSERT_EQ(kvfuse_select_rows(&a), KVFUSE_OK) << kvfuse_last_error();
    segment.keys = halves.data();
    segment.keys_dtype = KVFUSE_DTYPE_F16;
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("not both"), std::string::npos) << last_error();
    segment.keys_f32 = nullptr;
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_OK) << kvfuse_last_error();
    segment.keys_dtype = static_cast<kvfuse_dtype>(4);
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("keys_dtype"), std::string::npos) << last_error();
    // A V1 segment (no typed keys) still reads its f32 keys.
    kvfuse::SelectSegment v1;
    v1.tokens = 20;
    v1.keys_f32 = keys.data();
    v1.struct_size = KVFUSE_SELECT_SEGMENT_SIZE_V1;
    a.segments = &v1;
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_OK) << kvfuse_last_error();
    v1.struct_size = 8;
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_ERROR_STRUCT_SIZE);
}

// ---- kvfuse_select_rows over paged and strided keys (segment V3) -------------------------------

using SelectLayoutTest = IsaTest;
KVFUSE_INSTANTIATE_ISA_TESTS(SelectLayoutTest);

struct SelectLayoutCase {
    std::size_t block_size;  // 0: strided, not paged
    Kind kind;
    const char* name;
};

// Keys of S (float: f32 through keys_f32; uint16_t: f16 or bf16 through keys) in two chunks
// shifted into their own frames (or one segment), packed and in a layout (paged token-major or
// head-major, one token per block as llama.cpp's cells, strided head-major with an offset):
// the same scores and rows bit for bit, at every precision (int8 / int4 quantized by the call
// from the paged keys).
template <class S>
void check_select_layouts(kvfuse_dtype dtype, std::uint32_t seed) {
    const std::size_t M = 3, Hkv = 2, H = 4, D = 20, kv_row = Hkv * D;
    const std::size_t chunk[2] = {37, 30}, docs = chunk[0] + chunk[1] - M;
    kvfuse_rope_config rope;
    kvfuse_rope_config_init(&rope, D);
    const std::vector<float> queries = random_floats(M * H * D, seed, 1.0f);
    const SelectLayoutCase layouts[] = {{16, Kind::token_major, "paged token-major"},
                                        {8, Kind::head_major, "paged head-major"},
                                        {1, Kind::token_major, "one token per block"},
                                        {0, Kind::head_major, "strided head-major"},
                                        {0, Kind::token_major, "strided token-major"}};
    for (const SelectLayoutCase& layout : layouts)
        for (kvfuse_key_precision precision : {KVFUSE_KEYS_F32, KVFUSE_KEYS_INT8, KVFUSE_KEYS_INT4})
            for (std::size_t segment_count : {1u, 2u}) {
                SCOPED_TRACE(std::string(layout.name) + ", dtype " + std::to_string(dtype) + ", precision " +
                             std::to_string(precision) + ", segments " + std::to_string(segment_count));
                std::vector<S> packed[2], stored[2];
                Pool pools[2];
                kvfuse::SelectSegment p_seg[2], l_seg[2];
                for (std::size_t g = 0; g < 2; ++g) {
                    const std::size_t tokens = segment_count == 1 ? chunk[0] + chunk[1] : chunk[g];
                    packed[g] = random_keys<S>(tokens * kv_row, dtype, seed + 1 + static_cast<std::uint32_t>(g));
                    pools[g] = make_pool(tokens, Hkv, D, layout.block_size, layout.kind, 3 + g, seed + 5 + static_cast<std::uint32_t>(g));
                    stored[g] = pool_storage<S>(pools[g]);
                    scatter(pools[g], packed[g].data(), stored[g]);
                    p_seg[g].tokens = l_seg[g].tokens = tokens;
                    p_seg[g].position_shift = l_seg[g].position_shift = g == 0 || segment_count == 1 ? 0 : 250;
                    if constexpr (sizeof(S) == 4) {
                        p_seg[g].keys_f32 = packed[g].data();
                        l_seg[g].keys_f32 = stored[g].data();
                    } else {
                        p_seg[g].keys = packed[g].data(), p_seg[g].keys_dtype = dtype;
                        l_seg[g].keys = stored[g].data(), l_seg[g].keys_dtype = dtype;
                    }
                    set_key_layout(l_seg[g], pools[g]);
                }
                expect_same_selection({M, H, Hkv, D, docs, 13, queries.data(), &rope}, precision, segment_count, p_seg, l_seg);
            }
}

TEST_P(SelectLayoutTest, PagedAndStridedSegmentsAreThePackedOnesF32) { check_select_layouts<float>(KVFUSE_DTYPE_F32, 70); }
TEST_P(SelectLayoutTest, PagedAndStridedSegmentsAreThePackedOnesF16) {
    check_select_layouts<std::uint16_t>(KVFUSE_DTYPE_F16, 80);
}
TEST_P(SelectLayoutTest, PagedAndStridedSegmentsAreThePackedOnesBf16) {
    check_select_layouts<std::uint16_t>(KVFUSE_DTYPE_BF16, 90);
}

// A segment's layout is checked before anything runs, errors naming segments[i].key_*; V1 and V2
// segments (no layout fields: whatever follows them in memory is not read) still work.
TEST(SelectLayoutChecks, LayoutsAreCheckedAndOldSegmentsStillRead) {
    const std::size_t M = 2, Hkv = 2, H = 2, D = 8, kv_row = Hkv * D, tokens = 20;
    const std::vector<float> queries = random_floats(M * H * D, 100, 1.0f), keys = random_floats(tokens * kv_row, 101, 1.0f);
    const Pool pool = make_pool(tokens, Hkv, D, 4, Kind::token_major, 1, 102);
    std::vector<float> paged = pool_storage<float>(pool);
    scatter(pool, keys.data(), paged);
    kvfuse::SelectSegment segments[2];
    segments[0].tokens = 1;
    segments[0].keys_f32 = keys.data();
    segments[1].tokens = tokens;
    segments[1].keys_f32 = paged.data();
    set_key_layout(segments[1], pool);
    ThreeRowSelection selection(1 + tokens - M, M, H, Hkv, D, queries.data(), segments, 2);
    kvfuse::SelectArgs& a = selection.args;
    a.key_precision = KVFUSE_KEYS_INT8;
    ASSERT_EQ(kvfuse_select_rows(&a), KVFUSE_OK) << kvfuse_last_error();
    auto refused = [&](const char* what, const std::string& needle) {
        EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_ERROR_INVALID_ARGUMENT) << what;
        EXPECT_NE(last_error().find(needle), std::string::npos) << what << ": " << last_error();
        set_key_layout(segments[1], pool);
    };
    std::vector<std::int32_t> bad_table = pool.table;
    bad_table.back() = static_cast<std::int32_t>(pool.blocks_total);  // the last block the call reads
    segments[1].key_block_table = bad_table.data();
    refused("an entry past the pool", "segments[1].key_block_table[" + std::to_string(bad_table.size() - 1) + "]");
    bad_table.back() = -1;
    segments[1].key_block_table = bad_table.data();
    refused("a negative entry", "segments[1].key_block_table[");
    segments[1].key_block_size = 0;
    refused("no block size", "segments[1].key_block_size");
    segments[1].key_block_table = nullptr;
    refused("block fields without a table", "segments[1].key_block_table");
    segments[1].key_block_stride = pool.token_stride;  // smaller than a block
    refused("overlapping blocks", "segments[1].key_block_stride");
    segments[1].key_row_stride = D;  // token-major rows over each other
    refused("overlapping rows", "segments[1].key_row_stride");
    segments[0].key_head_stride = D - 1;
    EXPECT_EQ(kvfuse_select_rows(&a), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(last_error().find("segments[0].key_head_stride"), std::string::npos) << last_error();
    segments[0].key_head_stride = 0;
    ASSERT_EQ(kvfuse_select_rows(&a), KVFUSE_OK) << kvfuse_last_error();

    // One segment of each older version, with garbage where the V3 fields would be: read as packed.
    std::vector<std::int64_t> rows_new(3), rows_old(3);
    std::vector<float> scores_new(tokens - M), scores_old(tokens - M);
    kvfuse::SelectSegment packed;
    packed.tokens = tokens;
    packed.keys_f32 = keys.data();
    a.segment_count = 1;
    a.documents = tokens - M;
    a.segments = &packed;
    a.rows = rows_new.data();
    a.scores = scores_new.data();
    ASSERT_EQ(kvfuse_select_rows(&a), KVFUSE_OK) << kvfuse_last_error();
    for (std::size_t size : {std::size_t{KVFUSE_SELECT_SEGMENT_SIZE_V1}, std::size_t{KVFUSE_SELECT_SEGMENT_SIZE_V2}}) {
        kvfuse::SelectSegment old = packed;
        old.struct_size = size;
        old.key_head_stride = 1;
        old.key_block_table = bad_table.data();
        old.key_block_size = 3;
        old.key_token_offset = 1000;
        a.segments = &old;
        a.rows = rows_old.data();
        a.scores = scores_old.data();
        ASSERT_EQ(kvfuse_select_rows(&a), KVFUSE_OK) << size << ": " << kvfuse_last_error();
        EXPECT_TRUE(same_bits(scores_new, scores_old)) << size;
        EXPECT_EQ(rows_new, rows_old) << size;
    }
    static_assert(KVFUSE_SELECT_SEGMENT_SIZE_V1 < KVFUSE_SELECT_SEGMENT_SIZE_V2 &&
                      KVFUSE_SELECT_SEGMENT_SIZE_V2 < KVFUSE_SELECT_SEGMENT_SIZE_V3 &&
                      KVFUSE_SELECT_SEGMENT_SIZE_V3 == sizeof(kvfuse_select_segment),
                  "segment versions only append");
}

}  // namespace
}  // namespace kvfuse::testing
