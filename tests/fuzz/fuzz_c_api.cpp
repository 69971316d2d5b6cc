// libFuzzer target: the argument checks of the C API (include/kvfuse/kvfuse.h). Each input is a
// sequence of calls with fuzzer-chosen sizes, strides, counts, indices, enum values (any int, as
// C may pass) and pointer alignments. The target acts as a correct caller that trusts the
// header's contract:
//   * when every buffer the contract implies fits in memory, it allocates each one at exactly
//     that size (so ASan reports any access beyond what the arguments describe) and any status
//     may come back;
//   * when a buffer the arguments describe would exceed the address space (its byte count does
//     not fit in size_t: the library's size arithmetic must see that), the call gets small
//     buffers and must fail: KVFUSE_OK then means the library computed a wrapped size;
//   * sizes in between (possible, but too large to allocate here) are skipped.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "c_api_calls.h"
#include "fuzz_support.h"

namespace {

using u128 = unsigned __int128;
constexpr u128 kSizeMax = std::numeric_limits<std::size_t>::max();
// Small calls only: the checks under test do not depend on size, and a fast target explores more.
constexpr u128 kAllocationCap = std::size_t{1} << 16;  // bytes per buffer the target allocates
constexpr u128 kWorkCap = std::size_t{1} << 16;        // multiply-adds per call
// Misaligned pointers (one buffer in 16 shifted by 1..3 bytes): the library refuses every
// pointer not aligned to its element type (dispatch/api_checks.h); before it did, quantize,
// attention, top-k and the bf16 converters stored through them (UBSan: misaligned store; the
// reproducer is in regressions/c_api/). -DKVFUSE_FUZZ_MISALIGNED_POINTERS=0 turns them off.
#ifndef KVFUSE_FUZZ_MISALIGNED_POINTERS
#define KVFUSE_FUZZ_MISALIGNED_POINTERS 1
#endif
constexpr bool kMisalignedPointers = KVFUSE_FUZZ_MISALIGNED_POINTERS != 0;

// A size argument: mostly small, sometimes an edge of the integer range.
std::size_t draw_size(FuzzedDataProvider& in, std::size_t small_max = 24) {
    switch (in.ConsumeIntegralInRange<int>(0, 9)) {
        case 0: {
            static constexpr std::size_t kEdges[] = {0,
                                                     1,
                                                     std::size_t{1} << 31,
                                                     std::size_t{1} << 32,
                                                     (std::size_t{1} << 32) + 1,
                                                     (std::size_t{1} << 61) + 1,
                                                     std::size_t{1} << 62,
                                                     std::size_t{1} << 63,
                                                     std::numeric_limits<std::size_t>::max() / 2 + 1,
                                                     std::numeric_limits<std::size_t>::max() / 4 + 1,
                                                     std::numeric_limits<std::size_t>::max() - 1,
                                                     std::numeric_limits<std::size_t>::max()};
            return kEdges[in.ConsumeIntegralInRange<std::size_t>(0, std::size(kEdges) - 1)];
        }
        case 1: return in.ConsumeIntegral<std::size_t>();
        default: return in.ConsumeIntegralInRange<std::size_t>(0, small_max);
    }
}

// An enum argument: mostly valid, sometimes any int (negative included).
int draw_enum(FuzzedDataProvider& in, int valid_count) {
    if (in.ConsumeIntegralInRange<int>(0, 7) != 0) return in.ConsumeIntegralInRange<int>(0, valid_count - 1);
    return in.ConsumeIntegral<int>();
}

// Bytes spanned by n rows of row_elements elements, `stride` elements apart.
u128 rows_bytes(std::size_t n, std::size_t stride, u128 row_elements, std::size_t element_bytes) {
    if (n == 0) return 0;
    return ((u128{n} - 1) * stride + row_elements) * element_bytes;
}

// The buffers of one call: each exactly its contract size, optionally misaligned by a few bytes.
class Buffers {
   public:
    Buffers(FuzzedDataProvider& in) : in_(in) {}
    // Records a buffer's contract size; returns its index.
    std::size_t need(u128 bytes) {
        sizes_.push_back(bytes);
        return sizes_.size() - 1;
    }
    bool impossible() const {
        for (u128 s : sizes_)
            if (s > kSizeMax) return true;
        return false;
    }
    bool too_large() const {  // a buffer that could exist but is too large to allocate here
        for (u128 s : sizes_)
            if (s > kAllocationCap && s <= kSizeMax) return true;
        return false;
    }
    // Allocates every buffer at its contract size; one larger than the address space gets 64
    // bytes (the call must fail before touching it). Contents come from the input, with NaN,
    // infinity and huge values mixed in for floats.
    void allocate() {
        for (u128 s : sizes_) {
            const std::size_t bytes = s > kSizeMax ? 64 : static_cast<std::size_t>(s);
            // One byte of misalignment in one buffer of 16: the library must refuse or cope.
            const std::size_t shift =
                kMisalignedPointers && in_.ConsumeIntegralInRange<int>(0, 15) == 0 ? in_.ConsumeIntegralInRange<int>(1, 3) : 0;
            auto storage = std::unique_ptr<unsigned char[]>(new unsigned char[bytes + shift]);
            unsigned char* p = storage.get() + shift;
            fill(p, bytes);
            storage_.push_back(std::move(storage));
            pointers_.push_back(p);
        }
    }
    // Elements of T the allocated buffer holds (fewer than described for an impossible size).
    template <class T>
    std::size_t capacity(std::size_t index) const {
        return (sizes_[index] > kSizeMax ? 64 : static_cast<std::size_t>(sizes_[index])) / sizeof(T);
    }
    template <class T>
    T* at(std::size_t index) const {
        return reinterpret_cast<T*>(pointers_[index]);
    }

   private:
    void fill(unsigned char* p, std::size_t bytes) {
        std::uint32_t state = in_.ConsumeIntegral<std::uint32_t>() | 1;
        for (std::size_t i = 0; i + 4 <= bytes; i += 4) {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            float value = static_cast<float>(static_cast<std::int32_t>(state % 2001) - 1000) / 256.0f;
            if (state % 97 == 0) value = std::numeric_limits<float>::quiet_NaN();
            if (state % 89 == 0) value = std::numeric_limits<float>::infinity();
            if (state % 83 == 0) value = 3.0e38f;
            std::memcpy(p + i, &value, 4);
        }
        for (std::size_t i = bytes / 4 * 4; i < bytes; ++i) p[i] = static_cast<unsigned char>(i);
    }
    FuzzedDataProvider& in_;
    std::vector<u128> sizes_;
    std::vector<std::unique_ptr<unsigned char[]>> storage_;
    std::vector<unsigned char*> pointers_;
};

// Index arguments (rows to gather, attention positions): mostly inside [0, limit), sometimes any.
void fill_indices(FuzzedDataProvider& in, std::int64_t* out, std::size_t count, std::size_t limit) {
    for (std::size_t i = 0; i < count; ++i) {
        const std::int64_t index = limit > 0 && in.ConsumeIntegralInRange<int>(0, 15) != 0
                                       ? static_cast<std::int64_t>(in.ConsumeIntegralInRange<std::size_t>(0, limit - 1))
                                       : in.ConsumeIntegral<std::int64_t>();
        std::memcpy(out + i, &index, 8);  // the buffer may be misaligned on purpose
    }
}

enum class Verdict { run, skip, must_fail };

// What the target does with a call whose buffers are recorded in `b`; `work` counts the
// elements or multiply-adds the call would process (0: a call with nothing to do may return OK
// without looking at its buffers, whatever their described size).
Verdict prepare(Buffers& b, u128 work) {
    if (b.too_large()) return Verdict::skip;
    const bool impossible = b.impossible();
    if (impossible ? work == 0 : work > kWorkCap) return Verdict::skip;
    b.allocate();
    return impossible ? Verdict::must_fail : Verdict::run;
}

void check(Verdict verdict, kvfuse_status status, const char* call) {
    if (verdict == Verdict::must_fail && status == KVFUSE_OK)
        kvfuse::fuzz::property_failed("KVFUSE_OK for buffers larger than the address space", call);
    if (status != KVFUSE_OK && kvfuse_last_error()[0] == '\0')
        kvfuse::fuzz::property_failed("an error without a detail", call);
}

std::size_t element_bytes_of(int dtype) { return dtype == KVFUSE_DTYPE_BF16 ? 2 : 4; }

void fuzz_rope(FuzzedDataProvider& in) {
    kvfuse_rope_config config;
    kvfuse_rope_config_init(&config, in.ConsumeIntegralInRange<std::int32_t>(-2, 96));
    if (in.ConsumeBool()) config.rotary_dims = in.ConsumeIntegralInRange<std::int32_t>(-2, 98);
    if (in.ConsumeBool()) config.base = in.ConsumeFloatingPoint<double>();
    if (in.ConsumeBool()) config.scaling_factor = in.ConsumeFloatingPoint<double>();
    if (in.ConsumeBool()) config.llama3_low_freq_factor = in.ConsumeFloatingPoint<double>();
    if (in.ConsumeBool()) config.llama3_high_freq_factor = in.ConsumeFloatingPoint<double>();
    if (in.ConsumeBool()) config.llama3_original_context = in.ConsumeIntegral<std::int32_t>();
    set_rope_enums(&config, draw_enum(in, 2), draw_enum(in, 3));
    const int variant = in.ConsumeIntegralInRange<int>(0, 3);
    const int dtype = draw_enum(in, 2);
    const std::size_t tokens = draw_size(in), heads = draw_size(in, 8);
    const std::size_t src_stride = draw_size(in, 800), dst_stride = draw_size(in, 800);
    const bool copying = variant >= 2, per_token = variant % 2 == 0;
    const u128 row = u128{heads} * static_cast<std::size_t>(std::max(config.head_dim, 0));
    const std::size_t elem = element_bytes_of(dtype);
    Buffers b(in);
    const std::size_t src = b.need(rows_bytes(tokens, src_stride, row, elem));
    const std::size_t dst = copying ? b.need(rows_bytes(tokens, dst_stride, row, elem)) : src;
    const std::size_t deltas = per_token ? b.need(u128{tokens} * 8) : 0;
    const Verdict verdict = prepare(b, u128{tokens} * row);
    if (verdict == Verdict::skip) return;
    auto* d = per_token ? b.at<std::int64_t>(deltas) : nullptr;
    if (d != nullptr)
        for (std::size_t t = 0; t < std::min<std::size_t>({tokens, b.capacity<std::int64_t>(deltas), 1024}); ++t) {
            const std::int64_t delta = in.ConsumeIntegral<std::int32_t>();
            std::memcpy(d + t, &delta, 8);  // the buffer may be misaligned on purpose
        }
    const kvfuse_status status =
        call_rope(variant, &config, dtype, b.at<void>(src), src_stride, b.at<void>(dst), copying ? dst_stride : src_stride,
                  tokens, heads, d, in.ConsumeIntegral<std::int64_t>());
    check(verdict, status, "rope");
}

// One side of kvfuse_rope_rotate_layout: strides, and a block table or none.
struct LayoutSide {
    std::size_t token_stride, head_stride, block_size = 0, block_stride = 0, blocks_total = 0, offset;
    bool paged;
    std::size_t base = 0, table = 0;  // buffer indices
    std::size_t table_entries = 0;
    u128 table_bytes = 4;

    LayoutSide(FuzzedDataProvider& in)
        : token_stride(draw_size(in, 300)), head_stride(draw_size(in, 80)), offset(draw_size(in, 40)), paged(in.ConsumeBool()) {
        if (paged) block_size = draw_size(in, 20), block_stride = draw_size(in, 3000), blocks_total = draw_size(in, 16);
    }
    // The buffers the contract implies (kvfuse.h: defaults resolved as the library resolves them).
    void need(Buffers& b, std::size_t tokens, std::size_t heads, std::size_t head_dim, std::size_t elem) {
        u128 bytes = 0;
        if (tokens > 0 && heads > 0) {
            const u128 hs = head_stride != 0 ? u128{head_stride} : u128{head_dim};
            const u128 row = (u128{heads} - 1) * hs + head_dim;
            const u128 ts = token_stride != 0 ? u128{token_stride} : u128{heads} * hs;
            if (!paged) {
                bytes = ((u128{offset} + tokens - 1) * ts + row) * elem;
            } else if (block_size > 0 && blocks_total > 0) {
                const u128 stride = block_stride != 0 ? u128{block_stride} : u128{block_size} * ts;
                bytes = ((u128{blocks_total} - 1) * stride + (u128{block_size} - 1) * ts + row) * elem;
                table_bytes = ((u128{offset} + tokens - 1) / block_size + 1) * 4;
                table_entries = table_bytes > kAllocationCap ? 0 : static_cast<std::size_t>(table_bytes / 4);
            }
        }
        // A paged side always has a table (one entry when the call must be refused first).
        if (paged) table = b.need(table_bytes);
        base = b.need(bytes);
    }
    // Mostly entries inside the pool, sometimes any int32.
    void fill(FuzzedDataProvider& in, Buffers& b) {
        if (!paged) return;
        auto* t = b.at<std::int32_t>(table);
        for (std::size_t i = 0; i < std::min(table_entries, b.capacity<std::int32_t>(table)); ++i) {
            const std::int32_t entry = blocks_total > 0 && in.ConsumeIntegralInRange<int>(0, 15) != 0
                                           ? static_cast<std::int32_t>(in.ConsumeIntegralInRange<std::size_t>(
                                                 0, std::min<std::size_t>(blocks_total - 1, INT32_MAX)))
                                           : in.ConsumeIntegral<std::int32_t>();
            std::memcpy(t + i, &entry, 4);  // the buffer may be misaligned on purpose
        }
    }
};

void fuzz_rope_layout(FuzzedDataProvider& in) {
    kvfuse_rope_config config;
    kvfuse_rope_config_init(&config, in.ConsumeIntegralInRange<std::int32_t>(-2, 64));
    if (in.ConsumeBool()) config.rotary_dims = in.ConsumeIntegralInRange<std::int32_t>(-2, 66);
    set_rope_enums(&config, draw_enum(in, 2), 0);
    kvfuse_rope_args a;
    kvfuse_rope_args_init(&a);
    const int dtype = draw_enum(in, 3);
    set_rope_args_dtype(&a, dtype);
    a.config = &config;
    a.tokens = draw_size(in);
    a.heads = draw_size(in, 6);
    a.delta = in.ConsumeIntegral<std::int32_t>();
    const bool copying = in.ConsumeBool(), per_token = in.ConsumeBool();
    // The converting copy (V2) a third of the time: src of another type (or an invalid one).
    int src_dtype = dtype;
    if (in.ConsumeIntegralInRange<int>(0, 2) == 0) {
        a.convert = 1;
        src_dtype = draw_enum(in, 3);
        set_rope_args_src_dtype(&a, src_dtype);
    }
    const std::size_t head_dim = static_cast<std::size_t>(std::max(config.head_dim, 0));
    const std::size_t elem = dtype == KVFUSE_DTYPE_F32 ? 4 : 2, src_elem = src_dtype == KVFUSE_DTYPE_F32 ? 4 : 2;
    LayoutSide dst(in), src(in);
    Buffers b(in);
    dst.need(b, a.tokens, a.heads, head_dim, elem);
    if (copying) src.need(b, a.tokens, a.heads, head_dim, src_elem);
    const std::size_t deltas = per_token ? b.need(u128{a.tokens} * 8) : 0;
    const Verdict verdict = prepare(b, u128{a.tokens} * a.heads * head_dim);
    if (verdict == Verdict::skip) return;
    dst.fill(in, b);
    if (copying) src.fill(in, b);
    auto side = [&](const LayoutSide& s, const void*& base, std::size_t& ts, std::size_t& hs, const std::int32_t*& table,
                    std::size_t& bs, std::size_t& bstride, std::size_t& blocks, std::size_t& offset) {
        base = b.at<void>(s.base);
        ts = s.token_stride, hs = s.head_stride, offset = s.offset;
        table = s.paged ? b.at<std::int32_t>(s.table) : nullptr;
        bs = s.block_size, bstride = s.block_stride, blocks = s.blocks_total;
    };
    const void* dst_base = nullptr;
    side(dst, dst_base, a.dst_token_stride, a.dst_head_stride, a.dst_block_table, a.dst_block_size, a.dst_block_stride,
         a.dst_blocks_total, a.dst_token_offset);
    a.dst = const_cast<void*>(dst_base);
    if (copying)
        side(src, a.src, a.src_token_stride, a.src_head_stride, a.src_block_table, a.src_block_size, a.src_block_stride,
             a.src_blocks_total, a.src_token_offset);
    if (per_token) {
        auto* d = b.at<std::int64_t>(deltas);
        for (std::size_t t = 0; t < std::min<std::size_t>({a.tokens, b.capacity<std::int64_t>(deltas), 1024}); ++t) {
            const std::int64_t delta = in.ConsumeIntegral<std::int32_t>();
            std::memcpy(d + t, &delta, 8);
        }
        a.deltas = d;
    }
    check(verdict, kvfuse_rope_rotate_layout(&a), "rope_rotate_layout");
}

// Elements spanned by `n` items `item_stride` apart of `heads` heads `head_stride` apart of `dim`
// elements each (kvfuse_attention_args' tensors): 0 for no items.
u128 heads_extent(std::size_t n, std::size_t item_stride, std::size_t heads, std::size_t head_stride, std::size_t dim) {
    if (n == 0 || heads == 0) return 0;
    return (u128{n} - 1) * item_stride + (u128{heads} - 1) * head_stride + dim;
}

// V1 fields, then (one call in two) the V2 layouts: head strides, a block table over a pool of
// blocks, several sequences with mostly valid cumulative rows and keys, the log-sum-exp.
void fuzz_attention(FuzzedDataProvider& in) {
    kvfuse_attention_args a;
    kvfuse_attention_args_init(&a);
    a.rows = draw_size(in, 8);
    a.query_heads = draw_size(in, 8);
    a.kv_heads = draw_size(in, 4);
    a.head_dim = draw_size(in, 32);
    a.query_row_stride = draw_size(in, 300);
    a.kv_tokens = draw_size(in, 40);
    a.kv_token_stride = draw_size(in, 300);
    a.out_row_stride = draw_size(in, 300);
    a.scale = in.ConsumeBool() ? 0.125f : in.ConsumeFloatingPoint<float>();
    const int dtype = draw_enum(in, 2);
    set_attention_dtype(&a, dtype);
    const bool v2 = in.ConsumeBool(), paged = v2 && in.ConsumeBool(), lse = v2 && in.ConsumeBool();
    if (v2) {
        for (std::size_t* stride : {&a.query_head_stride, &a.kv_head_stride, &a.out_head_stride})
            *stride = in.ConsumeBool() ? 0 : draw_size(in, 600);
        a.sequences = in.ConsumeBool() ? 0 : draw_size(in, 4);
        a.lse_row_stride = in.ConsumeBool() ? 0 : draw_size(in, 12);
    }
    if (paged) {
        a.kv_block_size = draw_size(in, 20);
        a.kv_blocks_total = draw_size(in, 12);
        a.kv_block_stride = in.ConsumeBool() ? 0 : draw_size(in, 3000);
        a.kv_block_table_stride = draw_size(in, 8);
    }
    auto or_default = [](std::size_t value, std::size_t fallback) { return value != 0 ? value : fallback; };
    const std::size_t q_head = or_default(a.query_head_stride, a.head_dim), kv_head = or_default(a.kv_head_stride, a.head_dim);
    const std::size_t out_head = or_default(a.out_head_stride, a.head_dim);
    const std::size_t elem = element_bytes_of(dtype);
    Buffers b(in);
    const std::size_t queries = b.need(heads_extent(a.rows, a.query_row_stride, a.query_heads, q_head, a.head_dim) * 4);
    const std::size_t positions = b.need(u128{a.rows} * 8);
    // Paged: the pool of blocks; the tables of every sequence (no sequence holds more keys than
    // kv_tokens, and the library reads no entry past a table's stride).
    u128 kv_elements = heads_extent(a.kv_tokens, a.kv_token_stride, a.kv_heads, kv_head, a.head_dim);
    std::size_t table = 0, table_entries = 0;
    if (paged && a.kv_block_size > 0) {
        const u128 block = heads_extent(a.kv_block_size, a.kv_token_stride, a.kv_heads, kv_head, a.head_dim);
        const u128 block_stride = a.kv_block_stride != 0 ? u128{a.kv_block_stride} : u128{a.kv_block_size} * a.kv_token_stride;
        kv_elements = a.kv_blocks_total == 0 ? 0 : (u128{a.kv_blocks_total} - 1) * block_stride + block;
        const u128 entries = (u128{std::max<std::size_t>(a.sequences, 1)} - 1) * a.kv_block_table_stride +
                             (u128{a.kv_tokens} + a.kv_block_size - 1) / a.kv_block_size;
        table = b.need(entries * 4);
        table_entries = entries > kSizeMax ? 0 : static_cast<std::size_t>(entries);
    }
    const std::size_t keys = b.need(kv_elements * elem);
    const std::size_t values = b.need(kv_elements * elem);
    const std::size_t out = b.need(heads_extent(a.rows, a.out_row_stride, a.query_heads, out_head, a.head_dim) * 4);
    const std::size_t cu_rows = a.sequences > 0 ? b.need((u128{a.sequences} + 1) * 8) : 0;
    const std::size_t cu_kv = a.sequences > 0 ? b.need((u128{a.sequences} + 1) * 8) : 0;
    const std::size_t lse_out = lse ? b.need(rows_bytes(a.rows, or_default(a.lse_row_stride, a.query_heads), a.query_heads, 4)) : 0;
    const Verdict verdict = prepare(b, u128{a.rows} * a.kv_tokens * (u128{a.query_heads} * a.head_dim) * 2);
    if (verdict == Verdict::skip) return;
    // Sequences: cumulative rows and keys, each a sorted draw (a few left as the fill made them).
    const std::size_t sequences = a.sequences > 0 ? std::min(a.sequences, b.capacity<std::int64_t>(cu_rows) - 1) : 0;
    for (const auto& [index, total] : {std::pair{cu_rows, a.rows}, std::pair{cu_kv, a.kv_tokens}}) {
        if (a.sequences == 0 || in.ConsumeIntegralInRange<int>(0, 7) == 0) continue;
        std::vector<std::int64_t> cu{0};
        for (std::size_t s = 1; s < sequences; ++s)
            cu.push_back(static_cast<std::int64_t>(in.ConsumeIntegralInRange<std::size_t>(0, total)));
        std::sort(cu.begin(), cu.end());
        cu.push_back(static_cast<std::int64_t>(total));
        std::memcpy(b.at<std::int64_t>(index), cu.data(), cu.size() * 8);
    }
    fill_indices(in, b.at<std::int64_t>(positions), std::min(a.rows, b.capacity<std::int64_t>(positions)), a.kv_tokens);
    if (paged && a.kv_block_size > 0)
        for (std::size_t i = 0; i < std::min(table_entries, b.capacity<std::int32_t>(table)); ++i) {
            const std::int32_t block = a.kv_blocks_total > 0 && in.ConsumeIntegralInRange<int>(0, 15) != 0
                                           ? static_cast<std::int32_t>(in.ConsumeIntegralInRange<std::size_t>(
                                                 0, std::min<std::size_t>(a.kv_blocks_total - 1, INT32_MAX)))
                                           : in.ConsumeIntegral<std::int32_t>();
            std::memcpy(b.at<std::int32_t>(table) + i, &block, 4);
        }
    a.queries = b.at<float>(queries);
    a.positions = b.at<std::int64_t>(positions);
    a.keys = b.at<void>(keys);
    a.values = b.at<void>(values);
    a.out = b.at<float>(out);
    // (A table of blocks of 0 tokens is refused before it is read: any readable pointer does.)
    if (paged) a.kv_block_table = a.kv_block_size > 0 ? b.at<std::int32_t>(table) : b.at<std::int32_t>(queries);
    if (a.sequences > 0) a.cu_rows = b.at<std::int64_t>(cu_rows), a.cu_kv_tokens = b.at<std::int64_t>(cu_kv);
    if (lse) a.lse = b.at<float>(lse_out);
    check(verdict, kvfuse_sparse_attention(&a), "attention");
}

void fuzz_gather_scatter(FuzzedDataProvider& in) {
    const bool gather = in.ConsumeBool();
    const int dtype = draw_enum(in, 2);
    const std::size_t table_rows = draw_size(in, 40), count = draw_size(in, 40);
    const std::size_t src_stride = draw_size(in, 300), dst_stride = draw_size(in, 300), row_elements = draw_size(in, 256);
    const std::size_t elem = element_bytes_of(dtype);
    Buffers b(in);
    const std::size_t src = b.need(rows_bytes(gather ? table_rows : count, src_stride, row_elements, elem));
    const std::size_t rows = b.need(u128{count} * 8);
    const std::size_t dst = b.need(rows_bytes(gather ? count : table_rows, dst_stride, row_elements, elem));
    const Verdict verdict = prepare(b, u128{count} * row_elements);
    if (verdict == Verdict::skip) return;
    fill_indices(in, b.at<std::int64_t>(rows), std::min(count, b.capacity<std::int64_t>(rows)), table_rows);
    const kvfuse_status status =
        gather ? call_gather(dtype, b.at<void>(src), table_rows, src_stride, b.at<std::int64_t>(rows), count,
                             b.at<void>(dst), dst_stride, row_elements)
               : call_scatter(dtype, b.at<void>(src), src_stride, b.at<std::int64_t>(rows), count, b.at<void>(dst),
                              table_rows, dst_stride, row_elements);
    check(verdict, status, gather ? "gather_rows" : "scatter_rows");
}

void fuzz_topk(FuzzedDataProvider& in) {
    const bool batched = in.ConsumeBool();
    const int order = draw_enum(in, 2);
    const std::size_t rows = batched ? draw_size(in, 6) : 1, n = draw_size(in, 3000), k = draw_size(in, 3000);
    const std::size_t row_stride = batched ? draw_size(in, 3100) : n, indices_stride = batched ? draw_size(in, 3100) : 0;
    const std::size_t kept = std::min(k, n);
    Buffers b(in);
    const std::size_t scores = b.need(rows_bytes(rows, row_stride, n, 4));
    const std::size_t indices = b.need(batched ? rows_bytes(rows, indices_stride, kept, 8) : u128{kept} * 8);
    const Verdict verdict = prepare(b, kept == 0 ? 0 : u128{rows} * n * 4);  // k = 0: nothing to select
    if (verdict == Verdict::skip) return;
    if (batched) {
        check(verdict,
              call_topk_batched(b.at<float>(scores), rows, n, row_stride, k, order, b.at<std::int64_t>(indices),
                                indices_stride),
              "topk_batched");
    } else {
        std::size_t count = 0;
        const kvfuse_status status = call_topk(b.at<float>(scores), n, k, order, b.at<std::int64_t>(indices), &count);
        check(verdict, status, "topk");
        if (status == KVFUSE_OK && count != kept) kvfuse::fuzz::property_failed("topk count is not min(k, n)");
    }
}

void fuzz_quantize(FuzzedDataProvider& in) {
    const int which = in.ConsumeIntegralInRange<int>(0, 2);  // keys i8, keys i4, rows i8
    const std::size_t tokens = draw_size(in, 40), heads = draw_size(in, 8), head_dim = draw_size(in, 80);
    const std::size_t stride = draw_size(in, 700);
    const u128 row = u128{heads} * head_dim;
    Buffers b(in);
    const std::size_t x = b.need(rows_bytes(tokens, stride, row, 4));
    const std::size_t out = b.need(which == 1 ? u128{tokens} * heads * ((u128{head_dim} + 1) / 2) : u128{tokens} * row);
    const std::size_t scales = b.need(u128{tokens} * heads * 4);
    const std::size_t means = which == 2 ? 0 : b.need(tokens == 0 ? 0 : row * 4);
    const Verdict verdict = prepare(b, u128{tokens} * row);
    if (verdict == Verdict::skip) return;
    kvfuse_status status;
    if (which == 0)
        status = kvfuse_quantize_keys_i8(b.at<float>(x), tokens, heads, head_dim, stride, b.at<std::int8_t>(out),
                                         b.at<float>(scales), b.at<float>(means));
    else if (which == 1)
        status = kvfuse_quantize_keys_i4(b.at<float>(x), tokens, heads, head_dim, stride, b.at<std::uint8_t>(out),
                                         b.at<float>(scales), b.at<float>(means));
    else
        status = kvfuse_quantize_rows_i8(b.at<float>(x), tokens, heads, head_dim, stride, b.at<std::int8_t>(out),
                                         b.at<float>(scales));
    check(verdict, status, "quantize");
}

void fuzz_relevance(FuzzedDataProvider& in) {
    kvfuse_relevance_args a;
    kvfuse_relevance_args_init(&a);
    a.question_rows = draw_size(in, 6);
    a.candidates = draw_size(in, 60);
    a.query_heads = draw_size(in, 8);
    a.kv_heads = draw_size(in, 4);
    a.head_dim = draw_size(in, 40);
    a.smoothing = in.ConsumeIntegral<int>();
    const int path = in.ConsumeIntegralInRange<int>(0, 2);  // f32, int8, int4
    const std::size_t segment_count = in.ConsumeIntegralInRange<std::size_t>(0, 3);
    const u128 M = a.question_rows, H = a.query_heads, Hkv = a.kv_heads, D = a.head_dim;
    const u128 i4_row = (D + 1) / 2;
    Buffers b(in);
    // One (keys, queries, scales) set per segment, or one for the whole call.
    struct Set {
        std::size_t keys_count, q, qs, k, ks, bias;
    };
    std::vector<Set> sets;
    for (std::size_t s = 0; s < std::max<std::size_t>(segment_count, 1); ++s) {
        Set set{};
        set.keys_count = segment_count == 0 ? a.candidates : draw_size(in, 40);
        const u128 C = set.keys_count;
        set.q = b.need(path == 0 ? M * H * D * 4 : M * H * D);
        set.qs = b.need(path == 0 ? 0 : M * H * 4);
        set.k = b.need(path == 0 ? C * Hkv * D * 4 : path == 1 ? C * Hkv * D : C * Hkv * i4_row);
        set.ks = b.need(path == 0 ? 0 : C * Hkv * 4);
        set.bias = b.need(M * 4);
        sets.push_back(set);
    }
    const std::size_t out = b.need(a.candidates >= a.question_rows ? u128{a.candidates - a.question_rows} * 4 : 0);
    // candidates == question_rows: no document key, nothing to score (the header's contract).
    const Verdict verdict = prepare(b, a.candidates == a.question_rows ? 0 : M * a.candidates * H * D);
    if (verdict == Verdict::skip) return;
    std::vector<kvfuse_relevance_segment> segments;
    for (const Set& set : sets) {
        kvfuse_relevance_segment seg;
        kvfuse_relevance_segment_init(&seg);
        seg.keys = set.keys_count;
        if (path == 0) {
            seg.queries_f32 = b.at<float>(set.q);
            seg.keys_f32 = b.at<float>(set.k);
        } else {
            seg.queries_i8 = b.at<std::int8_t>(set.q);
            seg.query_scales = b.at<float>(set.qs);
            seg.key_scales = b.at<float>(set.ks);
            if (path == 1)
                seg.keys_i8 = b.at<std::int8_t>(set.k);
            else
                seg.keys_i4 = b.at<std::uint8_t>(set.k);
        }
        seg.bias = in.ConsumeBool() ? b.at<float>(set.bias) : nullptr;
        segments.push_back(seg);
    }
    if (segment_count == 0) {
        const kvfuse_relevance_segment& s = segments[0];
        a.queries_f32 = s.queries_f32;
        a.keys_f32 = s.keys_f32;
        a.queries_i8 = s.queries_i8;
        a.query_scales = s.query_scales;
        a.keys_i8 = s.keys_i8;
        a.keys_i4 = s.keys_i4;
        a.key_scales = s.key_scales;
    } else {
        a.segment_count = segment_count;
        a.segments = segments.data();
    }
    a.out = b.at<float>(out);
    check(verdict, kvfuse_a3_relevance(&a), "a3_relevance");
}

void fuzz_bf16(FuzzedDataProvider& in) {
    const bool narrowing = in.ConsumeBool();
    const std::size_t count = draw_size(in, 300);
    Buffers b(in);
    const std::size_t f32 = b.need(u128{count} * 4), bf16 = b.need(u128{count} * 2);
    const Verdict verdict = prepare(b, count);
    if (verdict == Verdict::skip) return;
    const kvfuse_status status = narrowing ? kvfuse_f32_to_bf16(b.at<float>(f32), b.at<std::uint16_t>(bf16), count)
                                           : kvfuse_bf16_to_f32(b.at<std::uint16_t>(bf16), b.at<float>(f32), count);
    check(verdict, status, "bf16 conversion");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider in(data, size);
    for (int call = 0; call < 4 && in.remaining_bytes() > 0; ++call) {
        switch (in.ConsumeIntegralInRange<int>(0, 8)) {
            case 0: fuzz_rope(in); break;
            case 7: fuzz_rope_layout(in); break;
            case 1: fuzz_attention(in); break;
            case 2: fuzz_gather_scatter(in); break;
            case 3: fuzz_topk(in); break;
            case 4: fuzz_quantize(in); break;
            case 5: fuzz_relevance(in); break;
            case 6: fuzz_bf16(in); break;
            default: (void)call_isa_queries(in.ConsumeIntegral<int>()); break;
        }
    }
    return 0;
}
