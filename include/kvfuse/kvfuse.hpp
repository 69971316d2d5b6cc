// kvfuse C++ API: typed, overloaded inline wrappers over the C API in kvfuse.h.
//
// Only C symbols cross the library boundary, so this header works with any C++17 compiler and
// standard library and keeps the ABI stable. Functions return kvfuse::Status; Status::ok() tells
// success and Status::message() the reason. Nothing throws unless you call Status::check().
// Usable with -fno-exceptions: Status is the only error path then (check() is not declared),
// and LocalAllocator terminates on a failed allocation as operator new does then.
#ifndef KVFUSE_KVFUSE_HPP
#define KVFUSE_KVFUSE_HPP

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "kvfuse/kvfuse.h"

namespace kvfuse {

enum class StatusCode : int {
    ok = KVFUSE_OK,
    invalid_argument = KVFUSE_ERROR_INVALID_ARGUMENT,
    null_pointer = KVFUSE_ERROR_NULL_POINTER,
    unknown_isa = KVFUSE_ERROR_UNKNOWN_ISA,
    unsupported_isa = KVFUSE_ERROR_UNSUPPORTED_ISA,
    out_of_memory = KVFUSE_ERROR_OUT_OF_MEMORY,
    internal = KVFUSE_ERROR_INTERNAL,
    io = KVFUSE_ERROR_IO,
    bad_profile = KVFUSE_ERROR_BAD_PROFILE,
    struct_size = KVFUSE_ERROR_STRUCT_SIZE,
};

class Error : public std::runtime_error {
   public:
    Error(StatusCode code, const std::string& what) : std::runtime_error(what), code_(code) {}
    StatusCode code() const noexcept { return code_; }

   private:
    StatusCode code_;
};

// The outcome of a call: a code plus the detail the library recorded for this thread.
class [[nodiscard]] Status {
   public:
    Status() = default;
    explicit Status(kvfuse_status status)
        : code_(static_cast<StatusCode>(status)),
          detail_(status == KVFUSE_OK ? "" : kvfuse_last_error()) {}
    bool ok() const noexcept { return code_ == StatusCode::ok; }
    explicit operator bool() const noexcept { return ok(); }
    StatusCode code() const noexcept { return code_; }
    // "invalid argument: rotary_dims (7) must be even"
    std::string message() const {
        std::string text = kvfuse_status_message(static_cast<kvfuse_status>(code_));
        if (!detail_.empty()) text += ": " + detail_;
        return text;
    }
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
    // Throws kvfuse::Error unless ok().
    void check() const {
        if (!ok()) throw Error(code_, message());
    }
#endif

   private:
    StatusCode code_ = StatusCode::ok;
    std::string detail_;
};

// ---- version ----------------------------------------------------------------------------------

inline std::string version() { return kvfuse_version_string(); }

// ---- ISA dispatch -----------------------------------------------------------------------------

enum class Isa : int {
    scalar = KVFUSE_ISA_SCALAR,
    avx2 = KVFUSE_ISA_AVX2,
    avx512 = KVFUSE_ISA_AVX512,
    neon = KVFUSE_ISA_NEON,
};

inline const char* isa_name(Isa isa) { return kvfuse_isa_name(static_cast<kvfuse_isa>(isa)); }
inline bool isa_compiled(Isa isa) { return kvfuse_isa_compiled(static_cast<kvfuse_isa>(isa)) != 0; }
inline bool isa_supported(Isa isa) {
    return kvfuse_isa_supported(static_cast<kvfuse_isa>(isa)) != 0;
}

inline std::vector<Isa> all_isas() { return {Isa::scalar, Isa::avx2, Isa::avx512, Isa::neon}; }

// ISAs built into this library.
inline std::vector<Isa> compiled_isas() {
    std::vector<Isa> out;
    for (Isa isa : all_isas())
        if (isa_compiled(isa)) out.push_back(isa);
    return out;
}

// ISAs built in that this CPU can run: the ones a test or a tuning run should cover.
inline std::vector<Isa> supported_isas() {
    std::vector<Isa> out;
    for (Isa isa : all_isas())
        if (isa_supported(isa)) out.push_back(isa);
    return out;
}

inline Status isa_from_name(const std::string& name, Isa& isa) {
    kvfuse_isa raw = KVFUSE_ISA_SCALAR;
    Status status(kvfuse_isa_from_name(name.c_str(), &raw));
    if (status) isa = static_cast<Isa>(raw);
    return status;
}

inline Status active_isa(Isa& isa) {
    kvfuse_isa raw = KVFUSE_ISA_SCALAR;
    Status status(kvfuse_active_isa(&raw));
    if (status) isa = static_cast<Isa>(raw);
    return status;
}

inline Status force_isa(Isa isa) { return Status(kvfuse_force_isa(static_cast<kvfuse_isa>(isa))); }
inline void reset_isa() { kvfuse_reset_isa(); }

enum class Kernel : int {
    rope = KVFUSE_KERNEL_ROPE,
    attention = KVFUSE_KERNEL_ATTENTION,
    topk = KVFUSE_KERNEL_TOPK,
    relevance = KVFUSE_KERNEL_RELEVANCE,
};

inline const char* kernel_name(Kernel kernel) { return kvfuse_kernel_name(static_cast<kvfuse_kernel>(kernel)); }
inline std::vector<Kernel> all_kernels() { return {Kernel::rope, Kernel::attention, Kernel::topk, Kernel::relevance}; }
inline Status kernel_from_name(const std::string& name, Kernel& kernel) {
    kvfuse_kernel raw = KVFUSE_KERNEL_ROPE;
    Status status(kvfuse_kernel_from_name(name.c_str(), &raw));
    if (status) kernel = static_cast<Kernel>(raw);
    return status;
}
// Runs `kernel` on `isa` (see kvfuse_set_kernel_isa); reset_kernel_isa goes back to the active ISA.
inline Status set_kernel_isa(Kernel kernel, Isa isa) {
    const kvfuse_isa raw = static_cast<kvfuse_isa>(isa);
    return Status(kvfuse_set_kernel_isa(static_cast<kvfuse_kernel>(kernel), &raw));
}
inline Status reset_kernel_isa(Kernel kernel) { return Status(kvfuse_set_kernel_isa(static_cast<kvfuse_kernel>(kernel), nullptr)); }
// The ISA `kernel` runs on and where that choice came from ("profile", "default", ...).
inline Status kernel_isa(Kernel kernel, Isa& isa, std::string* source = nullptr) {
    kvfuse_isa raw = KVFUSE_ISA_SCALAR;
    const char* from = nullptr;
    Status status(kvfuse_kernel_isa(static_cast<kvfuse_kernel>(kernel), &raw, &from));
    if (status) {
        isa = static_cast<Isa>(raw);
        if (source != nullptr) *source = from;
    }
    return status;
}

// The versioned C structs (see kvfuse.h) with struct_size set on construction.
struct CpuFeatures : kvfuse_cpu_features {
    CpuFeatures() { kvfuse_cpu_features_init(this); }
};
inline CpuFeatures cpu_features() {
    CpuFeatures features;
    (void)kvfuse_get_cpu_features(&features);  // cannot fail: the size is this header's
    return features;
}

// Forces an ISA for the lifetime of the object, then returns to the automatic choice.
class ScopedIsa {
   public:
    explicit ScopedIsa(Isa isa) : status_(force_isa(isa)) {}
    ~ScopedIsa() { reset_isa(); }
    ScopedIsa(const ScopedIsa&) = delete;
    ScopedIsa& operator=(const ScopedIsa&) = delete;
    const Status& status() const { return status_; }

   private:
    Status status_;
};

// ---- storage types ----------------------------------------------------------------------------

// bfloat16 storage: the top 16 bits of an IEEE-754 binary32.
struct bf16 {
    std::uint16_t bits = 0;
};
static_assert(sizeof(bf16) == 2, "bf16 must be two bytes");
// IEEE-754 binary16 storage (llama.cpp's f16 KV cache): K/V, quantizer input; not gemm weights.
struct f16 {
    std::uint16_t bits = 0;
};
static_assert(sizeof(f16) == 2, "f16 must be two bytes");

enum class Dtype : int {
    f32 = KVFUSE_DTYPE_F32,
    bf16 = KVFUSE_DTYPE_BF16,
    f16 = KVFUSE_DTYPE_F16,
    q8_block32 = KVFUSE_DTYPE_Q8_BLOCK32,  // packed gemm weights only
    q4_block32 = KVFUSE_DTYPE_Q4_BLOCK32,
    q4_super256 = KVFUSE_DTYPE_Q4_SUPER256,
    q6_super256 = KVFUSE_DTYPE_Q6_SUPER256,
};

inline Status to_bf16(const float* src, bf16* dst, std::size_t count) {
    return Status(kvfuse_f32_to_bf16(src, reinterpret_cast<std::uint16_t*>(dst), count));
}
inline Status to_f32(const bf16* src, float* dst, std::size_t count) {
    return Status(kvfuse_bf16_to_f32(reinterpret_cast<const std::uint16_t*>(src), dst, count));
}
inline Status to_f16(const float* src, f16* dst, std::size_t count) {
    return Status(kvfuse_f32_to_f16(src, reinterpret_cast<std::uint16_t*>(dst), count));
}
inline Status to_f32(const f16* src, float* dst, std::size_t count) {
    return Status(kvfuse_f16_to_f32(reinterpret_cast<const std::uint16_t*>(src), dst, count));
}

namespace detail {
template <class T>
inline constexpr bool unsupported_element = false;
// The storage type of a tensor of T: a compile error for anything but float, bf16 and f16.
template <class T>
constexpr kvfuse_dtype dtype_of() {
    using E = std::remove_cv_t<T>;
    if constexpr (std::is_same_v<E, float>) {
        return KVFUSE_DTYPE_F32;
    } else if constexpr (std::is_same_v<E, bf16>) {
        return KVFUSE_DTYPE_BF16;
    } else if constexpr (std::is_same_v<E, f16>) {
        return KVFUSE_DTYPE_F16;
    } else {
        static_assert(unsupported_element<T>, "kvfuse: tensor elements must be float, kvfuse::bf16 or kvfuse::f16");
        return KVFUSE_DTYPE_F32;
    }
}
// Dense-layer weights: float or bf16 only (f16 is a KV type).
template <class T>
constexpr kvfuse_dtype weight_dtype_of() {
    using E = std::remove_cv_t<T>;
    static_assert(std::is_same_v<E, float> || std::is_same_v<E, bf16>,
                  "kvfuse: gemm weights must be float or kvfuse::bf16");
    return dtype_of<T>();
}
}  // namespace detail

// ---- RoPE -------------------------------------------------------------------------------------

enum class RopePairing : int { neox = KVFUSE_ROPE_NEOX, interleaved = KVFUSE_ROPE_INTERLEAVED };
enum class RopeScaling : int {
    none = KVFUSE_ROPE_SCALING_NONE,
    linear = KVFUSE_ROPE_SCALING_LINEAR,
    llama3 = KVFUSE_ROPE_SCALING_LLAMA3,
};

struct RopeConfig {
    int head_dim = 0;
    int rotary_dims = 0;  // 0 = head_dim
    double base = 10000.0;
    RopePairing pairing = RopePairing::neox;
    RopeScaling scaling = RopeScaling::none;
    double scaling_factor = 1.0;
    double llama3_low_freq_factor = 1.0;
    double llama3_high_freq_factor = 4.0;
    int llama3_original_context = 8192;
    // Empty, or rotary_dims / 2 divisors of the pairs' frequencies (Llama 3.1's rope_freqs).
    std::vector<float> freq_factors;

    // The C view; it points into freq_factors, so it is valid while this object is unchanged.
    kvfuse_rope_config to_c() const {
        kvfuse_rope_config c;
        kvfuse_rope_config_init(&c, head_dim);
        c.rotary_dims = rotary_dims;
        c.base = base;
        c.pairing = static_cast<kvfuse_rope_pairing>(pairing);
        c.scaling = static_cast<kvfuse_rope_scaling>(scaling);
        c.scaling_factor = scaling_factor;
        c.llama3_low_freq_factor = llama3_low_freq_factor;
        c.llama3_high_freq_factor = llama3_high_freq_factor;
        c.llama3_original_context = llama3_original_context;
        c.freq_factors = freq_factors.empty() ? nullptr : freq_factors.data();
        return c;
    }
};

// In place, token t rotated by deltas[t] (T = float, bf16 or f16).
template <class T>
Status rope_rotate(const RopeConfig& config, T* keys, std::size_t tokens, std::size_t heads,
                   std::size_t token_stride, const std::int64_t* deltas) {
    const kvfuse_rope_config c = config.to_c();
    return Status(kvfuse_rope_rotate(&c, detail::dtype_of<T>(), keys, tokens, heads, token_stride,
                                     deltas));
}

// In place, every token rotated by delta.
template <class T>
Status rope_rotate_span(const RopeConfig& config, T* keys, std::size_t tokens, std::size_t heads,
                        std::size_t token_stride, std::int64_t delta) {
    const kvfuse_rope_config c = config.to_c();
    return Status(kvfuse_rope_rotate_span(&c, detail::dtype_of<T>(), keys, tokens, heads,
                                          token_stride, delta));
}

// Copying, token t rotated by deltas[t].
template <class T>
Status rope_rotate_copy(const RopeConfig& config, const T* src, std::size_t src_token_stride,
                        T* dst, std::size_t dst_token_stride, std::size_t tokens,
                        std::size_t heads, const std::int64_t* deltas) {
    const kvfuse_rope_config c = config.to_c();
    return Status(kvfuse_rope_rotate_copy(&c, detail::dtype_of<T>(), src, src_token_stride, dst,
                                          dst_token_stride, tokens, heads, deltas));
}

// Copying, every token rotated by delta: the fused load of a stored chunk.
template <class T>
Status rope_rotate_span_copy(const RopeConfig& config, const T* src, std::size_t src_token_stride,
                             T* dst, std::size_t dst_token_stride, std::size_t tokens,
                             std::size_t heads, std::int64_t delta) {
    const kvfuse_rope_config c = config.to_c();
    return Status(kvfuse_rope_rotate_span_copy(&c, detail::dtype_of<T>(), src, src_token_stride,
                                               dst, dst_token_stride, tokens, heads, delta));
}

// Keys in any layout: strided, head-major, paged (kvfuse_rope_rotate_layout; kvfuse.h says how
// llama.cpp's and vLLM's caches map on the fields). The C struct with struct_size set.
struct RopeArgs : kvfuse_rope_args {
    RopeArgs() { kvfuse_rope_args_init(this); }
};
// dtype from T and the two tensors (src null: in place on dst).
template <class T>
void set_rope_keys(kvfuse_rope_args& args, T* dst, const T* src = nullptr) {
    args.dtype = detail::dtype_of<T>();
    args.dst = dst;
    args.src = src;
}
// The converting copy (V2): src of S rotated into dst of D (e.g. fresh f32 keys into an f16 cache).
template <class D, class S>
void set_rope_keys_converting(kvfuse_rope_args& args, D* dst, const S* src) {
    args.dtype = detail::dtype_of<D>();
    args.dst = dst;
    args.src = src;
    args.convert = 1;
    args.src_dtype = detail::dtype_of<S>();
}
// args.config is set from `config` for the call.
inline Status rope_rotate_layout(const RopeConfig& config, kvfuse_rope_args args) {
    const kvfuse_rope_config c = config.to_c();
    args.config = &c;
    return Status(kvfuse_rope_rotate_layout(&args));
}

// ---- sparse-row attention --------------------------------------------------------------------

// The C struct (V2: head strides, paged K/V, several sequences, log-sum-exp; see kvfuse.h) with
// setters for the V2 groups, each returning *this to chain.
struct AttentionArgs : kvfuse_attention_args {
    AttentionArgs() { kvfuse_attention_args_init(this); }
    // Elements between the heads of a query row, a K/V token and an out row (0 = head_dim).
    AttentionArgs& with_head_strides(std::size_t query, std::size_t kv, std::size_t out) {
        query_head_stride = query;
        kv_head_stride = kv;
        out_head_stride = out;
        return *this;
    }
    // Paged K/V: keys and values are the bases of pools of blocks_total blocks of block_size
    // tokens, block_stride elements apart (0 = block_size * kv_token_stride); table_stride is the
    // distance between the sequences' tables (several sequences only).
    AttentionArgs& with_paged_kv(const std::int32_t* block_table, std::size_t block_size, std::size_t blocks_total,
                                 std::size_t block_stride = 0, std::size_t table_stride = 0) {
        kv_block_table = block_table;
        kv_block_size = block_size;
        kv_blocks_total = blocks_total;
        kv_block_stride = block_stride;
        kv_block_table_stride = table_stride;
        return *this;
    }
    // Several sequences: cu_rows and cu_kv_tokens of count + 1 entries each (cumulative, from 0).
    AttentionArgs& with_sequences(std::size_t count, const std::int64_t* cu_row_starts, const std::int64_t* cu_key_starts) {
        sequences = count;
        cu_rows = cu_row_starts;
        cu_kv_tokens = cu_key_starts;
        return *this;
    }
    // The per-row, per-head log-sum-exp of the scores (row_stride 0 = query_heads).
    AttentionArgs& with_lse(float* out_lse, std::size_t row_stride = 0) {
        lse = out_lse;
        lse_row_stride = row_stride;
        return *this;
    }
};

inline Status sparse_attention(const kvfuse_attention_args& args) { return Status(kvfuse_sparse_attention(&args)); }

// Arguments for contiguous tensors: queries and out [rows x query_heads x head_dim], keys and
// values [kv_tokens x kv_heads x head_dim] of T (float, bf16 or f16); scale 1/sqrt(head_dim) unless
// given.
template <class T>
AttentionArgs contiguous_attention_args(const float* queries, std::size_t rows, const std::int64_t* positions,
                                        std::size_t query_heads, const T* keys, const T* values, std::size_t kv_tokens,
                                        std::size_t kv_heads, std::size_t head_dim, float* out, float scale = 0.0f) {
    AttentionArgs a{};
    a.queries = queries;
    a.rows = rows;
    a.query_heads = query_heads;
    a.head_dim = head_dim;
    a.query_row_stride = query_heads * head_dim;
    a.positions = positions;
    a.keys = keys;
    a.values = values;
    a.kv_dtype = detail::dtype_of<T>();
    a.kv_tokens = kv_tokens;
    a.kv_heads = kv_heads;
    a.kv_token_stride = kv_heads * head_dim;
    a.scale = scale != 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
    a.out = out;
    a.out_row_stride = query_heads * head_dim;
    return a;
}

template <class T>
Status gather_rows(const T* src, std::size_t src_rows, std::size_t src_row_stride, const std::int64_t* rows,
                   std::size_t count, T* dst, std::size_t dst_row_stride, std::size_t row_elements) {
    return Status(kvfuse_gather_rows(detail::dtype_of<T>(), src, src_rows, src_row_stride, rows, count, dst,
                                     dst_row_stride, row_elements));
}

template <class T>
Status scatter_rows(const T* src, std::size_t src_row_stride, const std::int64_t* rows, std::size_t count, T* dst,
                    std::size_t dst_rows, std::size_t dst_row_stride, std::size_t row_elements) {
    return Status(kvfuse_scatter_rows(detail::dtype_of<T>(), src, src_row_stride, rows, count, dst, dst_rows,
                                      dst_row_stride, row_elements));
}

// ---- top-k selection -------------------------------------------------------------------------

enum class TopkOrder : int { by_position = KVFUSE_TOPK_BY_POSITION, by_score = KVFUSE_TOPK_BY_SCORE };

inline Status topk(const float* scores, std::size_t n, std::size_t k, TopkOrder order, std::int64_t* indices,
                   std::size_t& count) {
    return Status(kvfuse_topk(scores, n, k, static_cast<kvfuse_topk_order>(order), indices, &count));
}

// Convenience form: the selected indices as a vector (empty on error; see the Status).
inline std::vector<std::int64_t> topk(const std::vector<float>& scores, std::size_t k,
                                      TopkOrder order = TopkOrder::by_position, Status* status = nullptr) {
    std::vector<std::int64_t> out(k < scores.size() ? k : scores.size());
    std::size_t count = 0;
    Status s = topk(scores.data(), scores.size(), k, order, out.data(), count);
    out.resize(s.ok() ? count : 0);
    if (status) *status = s;
    return out;
}

inline Status topk_batched(const float* scores, std::size_t rows, std::size_t n, std::size_t row_stride, std::size_t k,
                           TopkOrder order, std::int64_t* indices, std::size_t indices_stride) {
    return Status(kvfuse_topk_batched(scores, rows, n, row_stride, k, static_cast<kvfuse_topk_order>(order), indices,
                                      indices_stride));
}

// ---- execution context ------------------------------------------------------------------------
// A kvfuse_context (see kvfuse.h): its thread count, the engine's parallel-for, its scratch and
// its tuning. Move-only; create() reports failure through the Status (no exception).
class Context {
   public:
    Context() = default;
    ~Context() { kvfuse_context_destroy(context_); }
    Context(Context&& other) noexcept : context_(other.context_) { other.context_ = nullptr; }
    Context& operator=(Context&& other) noexcept {
        if (this != &other) {
            kvfuse_context_destroy(context_);
            context_ = other.context_;
            other.context_ = nullptr;
        }
        return *this;
    }
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;

    // options: kvfuse_context_options_init's defaults (threads 1) unless given.
    static Status create(Context& out, const kvfuse_context_options* options = nullptr) {
        kvfuse_context_options defaults;
        kvfuse_context_options_init(&defaults);
        kvfuse_context* created = nullptr;
        Status s(kvfuse_context_create(options != nullptr ? options : &defaults, &created));
        if (s.ok()) out = Context(created);
        return s;
    }
    kvfuse_context* get() const noexcept { return context_; }
    Status set_tuning(const kvfuse_tuning* tuning) { return Status(kvfuse_context_set_tuning(context_, tuning)); }

   private:
    explicit Context(kvfuse_context* context) : context_(context) {}
    kvfuse_context* context_ = nullptr;
};

inline Status sparse_attention(Context& context, const kvfuse_attention_args& args) {
    return Status(kvfuse_ctx_sparse_attention(context.get(), &args));
}
inline Status topk(Context& context, const float* scores, std::size_t n, std::size_t k, TopkOrder order,
                   std::int64_t* indices, std::size_t& count) {
    return Status(kvfuse_ctx_topk(context.get(), scores, n, k, static_cast<kvfuse_topk_order>(order), indices, &count));
}
inline Status topk_batched(Context& context, const float* scores, std::size_t rows, std::size_t n,
                           std::size_t row_stride, std::size_t k, TopkOrder order, std::int64_t* indices,
                           std::size_t indices_stride) {
    return Status(kvfuse_ctx_topk_batched(context.get(), scores, rows, n, row_stride, k,
                                          static_cast<kvfuse_topk_order>(order), indices, indices_stride));
}
template <class T>
Status rope_rotate_span_copy(Context& context, const RopeConfig& config, const T* src, std::size_t src_token_stride,
                             T* dst, std::size_t dst_token_stride, std::size_t tokens, std::size_t heads,
                             std::int64_t delta) {
    const kvfuse_rope_config c = config.to_c();
    return Status(kvfuse_ctx_rope_rotate_span_copy(context.get(), &c, detail::dtype_of<T>(), src, src_token_stride,
                                                   dst, dst_token_stride, tokens, heads, delta));
}
template <class T>
Status rope_rotate(Context& context, const RopeConfig& config, T* keys, std::size_t tokens, std::size_t heads,
                   std::size_t token_stride, const std::int64_t* deltas) {
    const kvfuse_rope_config c = config.to_c();
    return Status(
        kvfuse_ctx_rope_rotate(context.get(), &c, detail::dtype_of<T>(), keys, tokens, heads, token_stride, deltas));
}

inline Status rope_rotate_layout(Context& context, const RopeConfig& config, kvfuse_rope_args args) {
    const kvfuse_rope_config c = config.to_c();
    args.config = &c;
    return Status(kvfuse_ctx_rope_rotate_layout(context.get(), &args));
}

// ---- tuning -------------------------------------------------------------------------------

struct Tuning : kvfuse_tuning {
    Tuning() { kvfuse_tuning_init(this); }
};
inline Tuning default_tuning() {
    Tuning t;
    (void)kvfuse_default_tuning(&t);  // cannot fail: the size is this header's
    return t;
}
inline Tuning current_tuning() {
    Tuning t;
    (void)kvfuse_get_tuning(&t);
    return t;
}
// nullptr restores the defaults.
inline Status set_tuning(const kvfuse_tuning* tuning) { return Status(kvfuse_set_tuning(tuning)); }
inline Status load_profile(const std::string& path) { return Status(kvfuse_load_profile(path.c_str())); }
inline Status save_profile(const std::string& path, const kvfuse_tuning& tuning, const std::string& measurements_json = {}) {
    return Status(kvfuse_save_profile(path.c_str(), &tuning, measurements_json.empty() ? nullptr : measurements_json.c_str()));
}
// Empty when neither XDG_CACHE_HOME nor HOME is set.
inline std::string default_profile_path() {
    char path[4096];
    return kvfuse_default_profile_path(path, sizeof path) == KVFUSE_OK ? std::string(path) : std::string();
}
inline std::string profile_status() { return kvfuse_profile_status(); }

// ---- quantized scoring ---------------------------------------------------------------------

struct RelevanceArgs : kvfuse_relevance_args {
    RelevanceArgs() { kvfuse_relevance_args_init(this); }
};
struct RelevanceSegment : kvfuse_relevance_segment {
    RelevanceSegment() { kvfuse_relevance_segment_init(this); }
};
static_assert(sizeof(RelevanceSegment) == sizeof(kvfuse_relevance_segment), "an array of them is one of the C struct");
// Keys of T (float, bf16 or f16) for the f32 path, scored in place (kvfuse_relevance_args::keys).
template <class T>
void set_relevance_keys(kvfuse_relevance_args& args, const T* keys) {
    args.keys_dtype = detail::dtype_of<T>();
    args.keys = keys;
}
// The same for a segment (its typed_keys).
template <class T>
void set_segment_keys(kvfuse_relevance_segment& segment, const T* keys) {
    segment.keys_dtype = detail::dtype_of<T>();
    segment.typed_keys = keys;
}
inline Status a3_relevance(const kvfuse_relevance_args& args) { return Status(kvfuse_a3_relevance(&args)); }
inline Status a3_relevance(Context& context, const kvfuse_relevance_args& args) {
    return Status(kvfuse_ctx_a3_relevance(context.get(), &args));
}

// Row selection in one call (kvfuse_select_rows): A3 or CacheBlend scores, top-k, sorted row ids.
struct SelectArgs : kvfuse_select_args {
    SelectArgs() { kvfuse_select_args_init(this); }
};
struct SelectSegment : kvfuse_select_segment {
    SelectSegment() { kvfuse_select_segment_init(this); }
};
static_assert(sizeof(SelectSegment) == sizeof(kvfuse_select_segment), "an array of them is one of the C struct");
// Keys of T (float, bf16 or f16) for a selection segment, read in place (instead of keys_f32).
template <class T>
void set_select_keys(kvfuse_select_segment& segment, const T* keys) {
    segment.keys_dtype = detail::dtype_of<T>();
    segment.keys = keys;
}
inline Status select_rows(const kvfuse_select_args& args) { return Status(kvfuse_select_rows(&args)); }
inline Status select_rows(Context& context, const kvfuse_select_args& args) {
    return Status(kvfuse_ctx_select_rows(context.get(), &args));
}
// ---- dense layers (GEMM) ------------------------------------------------------------------------

// Owns packed weights (kvfuse_pack_weights); move-only. An empty object (default, moved from,
// or a failed pack) holds no handle.
class PackedWeights {
   public:
    PackedWeights() = default;
    PackedWeights(PackedWeights&& other) noexcept : handle_(other.handle_) { other.handle_ = nullptr; }
    PackedWeights& operator=(PackedWeights&& other) noexcept {
        if (this != &other) {
            kvfuse_packed_weights_free(handle_);
            handle_ = other.handle_;
            other.handle_ = nullptr;
        }
        return *this;
    }
    PackedWeights(const PackedWeights&) = delete;
    PackedWeights& operator=(const PackedWeights&) = delete;
    ~PackedWeights() { kvfuse_packed_weights_free(handle_); }

    // W [out x in] of T (float or bf16), row stride row_stride (0: in), packed as `packed`.
    template <class T>
    static Status pack(const T* weights, std::size_t out, std::size_t in, std::size_t row_stride, Dtype packed,
                       PackedWeights& result) {
        kvfuse_packed_weights* handle = nullptr;
        const Status s(kvfuse_pack_weights(detail::weight_dtype_of<T>(), weights, out, in, row_stride == 0 ? in : row_stride,
                                           static_cast<kvfuse_dtype>(packed), &handle));
        if (s.ok()) result = PackedWeights(handle);
        return s;
    }

    // Block-quantized W (kvfuse_pack_quantized_weights).
    static Status pack_quantized(const kvfuse_quantized_weights& weights, PackedWeights& result) {
        kvfuse_packed_weights* handle = nullptr;
        const Status s(kvfuse_pack_quantized_weights(&weights, &handle));
        if (s.ok()) result = PackedWeights(handle);
        return s;
    }

    bool empty() const noexcept { return handle_ == nullptr; }
    const kvfuse_packed_weights* handle() const noexcept { return handle_; }
    std::size_t out() const { return info().out; }
    std::size_t in() const { return info().in; }
    Dtype dtype() const { return info().dtype; }

   private:
    explicit PackedWeights(kvfuse_packed_weights* handle) : handle_(handle) {}
    struct Info {
        std::size_t out = 0, in = 0;
        Dtype dtype = Dtype::f32;
    };
    Info info() const {
        Info i;
        kvfuse_dtype d = KVFUSE_DTYPE_F32;
        if (handle_ != nullptr && kvfuse_packed_weights_info(handle_, &i.out, &i.in, &d) == KVFUSE_OK)
            i.dtype = static_cast<Dtype>(d);
        return i;
    }
    kvfuse_packed_weights* handle_ = nullptr;
};

// C[n x out] = A[n x in] W^T + beta C (see kvfuse_gemm); lda/ldc 0 mean in/out.
inline Status gemm(const PackedWeights& weights, const float* a, std::size_t n, float* c, float beta = 0.0f,
                   int threads = 0, std::size_t lda = 0, std::size_t ldc = 0) {
    return Status(kvfuse_gemm(weights.handle(), a, n, lda == 0 ? weights.in() : lda, beta, c,
                              ldc == 0 ? weights.out() : ldc, threads));
}
// The same on a context's workers and scratch (kvfuse_ctx_gemm).
inline Status gemm(Context& context, const PackedWeights& weights, const float* a, std::size_t n, float* c,
                   float beta = 0.0f, std::size_t lda = 0, std::size_t ldc = 0) {
    return Status(kvfuse_ctx_gemm(context.get(), weights.handle(), a, n, lda == 0 ? weights.in() : lda, beta, c,
                                  ldc == 0 ? weights.out() : ldc));
}

inline std::string gemm_bf16_scheme() {
    const char* scheme = "";
    if (kvfuse_gemm_bf16_scheme(&scheme) != KVFUSE_OK) return "";
    return scheme;
}
inline std::string gemm_int8_scheme() {
    const char* scheme = "";
    if (kvfuse_gemm_int8_scheme(&scheme) != KVFUSE_OK) return "";
    return scheme;
}

// The dot schemes of the active ISA's relevance kernel (see kvfuse_relevance_dot_schemes).
struct RelevanceDotSchemes {
    std::string int8_keys, int4_keys;
};
inline Status relevance_dot_schemes(RelevanceDotSchemes& out) {
    const char* int8_keys = nullptr;
    const char* int4_keys = nullptr;
    const Status s(kvfuse_relevance_dot_schemes(&int8_keys, &int4_keys));
    if (s.ok()) out = {int8_keys, int4_keys};
    return s;
}
inline Status quantize_keys_i8(const float* keys, std::size_t tokens, std::size_t kv_heads, std::size_t head_dim,
                               std::size_t token_stride, std::int8_t* out, float* scales, float* means) {
    return Status(kvfuse_quantize_keys_i8(keys, tokens, kv_heads, head_dim, token_stride, out, scales, means));
}
inline Status quantize_keys_i4(const float* keys, std::size_t tokens, std::size_t kv_heads, std::size_t head_dim,
                               std::size_t token_stride, std::uint8_t* out, float* scales, float* means) {
    return Status(kvfuse_quantize_keys_i4(keys, tokens, kv_heads, head_dim, token_stride, out, scales, means));
}
inline Status quantize_rows_i8(const float* x, std::size_t rows, std::size_t heads, std::size_t head_dim,
                               std::size_t row_stride, std::int8_t* out, float* scales) {
    return Status(kvfuse_quantize_rows_i8(x, rows, heads, head_dim, row_stride, out, scales));
}
// The same from bf16 or f16 keys / rows (T = float, bf16 or f16; strides in elements of T).
template <class T>
Status quantize_keys_i8(const T* keys, std::size_t tokens, std::size_t kv_heads, std::size_t head_dim,
                        std::size_t token_stride, std::int8_t* out, float* scales, float* means) {
    return Status(kvfuse_quantize_keys_i8_typed(detail::dtype_of<T>(), keys, tokens, kv_heads, head_dim, token_stride,
                                                out, scales, means));
}
template <class T>
Status quantize_keys_i4(const T* keys, std::size_t tokens, std::size_t kv_heads, std::size_t head_dim,
                        std::size_t token_stride, std::uint8_t* out, float* scales, float* means) {
    return Status(kvfuse_quantize_keys_i4_typed(detail::dtype_of<T>(), keys, tokens, kv_heads, head_dim, token_stride,
                                                out, scales, means));
}
template <class T>
Status quantize_rows_i8(const T* x, std::size_t rows, std::size_t heads, std::size_t head_dim, std::size_t row_stride,
                        std::int8_t* out, float* scales) {
    return Status(kvfuse_quantize_rows_i8_typed(detail::dtype_of<T>(), x, rows, heads, head_dim, row_stride, out, scales));
}
// The quantizers on a context's workers, scratch and tuning (T = float, bf16 or f16).
template <class T>
Status quantize_keys_i8(Context& context, const T* keys, std::size_t tokens, std::size_t kv_heads, std::size_t head_dim,
                        std::size_t token_stride, std::int8_t* out, float* scales, float* means) {
    return Status(kvfuse_ctx_quantize_keys_i8_typed(context.get(), detail::dtype_of<T>(), keys, tokens, kv_heads,
                                                    head_dim, token_stride, out, scales, means));
}
template <class T>
Status quantize_keys_i4(Context& context, const T* keys, std::size_t tokens, std::size_t kv_heads, std::size_t head_dim,
                        std::size_t token_stride, std::uint8_t* out, float* scales, float* means) {
    return Status(kvfuse_ctx_quantize_keys_i4_typed(context.get(), detail::dtype_of<T>(), keys, tokens, kv_heads,
                                                    head_dim, token_stride, out, scales, means));
}
template <class T>
Status quantize_rows_i8(Context& context, const T* x, std::size_t rows, std::size_t heads, std::size_t head_dim,
                        std::size_t row_stride, std::int8_t* out, float* scales) {
    return Status(kvfuse_ctx_quantize_rows_i8_typed(context.get(), detail::dtype_of<T>(), x, rows, heads, head_dim,
                                                    row_stride, out, scales));
}

// ---- topology and thread placement -----------------------------------------------------------

struct Topology : kvfuse_topology {
    Topology() { kvfuse_topology_init(this); }
};
inline Status topology(kvfuse_topology& out) { return Status(kvfuse_get_topology(&out)); }

// Pins OpenMP workers one per core (0 threads = every core); `description` gets the placement.
inline Status place_threads(int threads, bool use_smt, std::string* description = nullptr,
                            const std::vector<int>& cores = {}) {
    kvfuse_placement_options options;
    kvfuse_placement_options_init(&options);
    options.threads = threads;
    options.use_smt = use_smt ? 1 : 0;
    options.cores = cores.empty() ? nullptr : cores.data();
    options.core_count = static_cast<int>(cores.size());
    char text[4096] = {};
    Status status(kvfuse_place_threads(&options, text, sizeof text));
    if (description) *description = text;
    return status;
}

// std::allocator stand-in that puts buffers of a MiB or more on the NUMA node(s) of the
// placed threads (kvfuse_alloc_local) and smaller ones on the heap.
template <class T>
struct LocalAllocator {
    using value_type = T;
    static constexpr std::size_t kLocalBytes = std::size_t{1} << 20;
    LocalAllocator() = default;
    template <class U>
    LocalAllocator(const LocalAllocator<U>&) noexcept {}
    T* allocate(std::size_t n) {
        const std::size_t bytes = n * sizeof(T);
        if (bytes < kLocalBytes) return static_cast<T*>(::operator new(bytes));
        void* memory = nullptr;
        if (kvfuse_alloc_local(bytes, &memory, nullptr) != KVFUSE_OK) {
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
            throw std::bad_alloc();
#else
            std::abort();  // what operator new does without exceptions
#endif
        }
        return static_cast<T*>(memory);
    }
    void deallocate(T* p, std::size_t n) noexcept {
        const std::size_t bytes = n * sizeof(T);
        if (bytes < kLocalBytes)
            ::operator delete(p);
        else
            kvfuse_free_local(p, bytes);
    }
    template <class U>
    bool operator==(const LocalAllocator<U>&) const noexcept { return true; }
    template <class U>
    bool operator!=(const LocalAllocator<U>&) const noexcept { return false; }
};

}  // namespace kvfuse

#endif  // KVFUSE_KVFUSE_HPP
