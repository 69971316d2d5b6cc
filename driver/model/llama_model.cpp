#include "model/llama_model.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "driver_errors.h"
#include "model/block_codes.h"

namespace kvfuse::model {

namespace {

// Rows of a quantized matrix dequantized per product: about this many bytes of f32 at a time,
// so the scratch stays bounded (and cache-sized) whatever the matrix.
constexpr std::size_t kTileBytes = std::size_t{4} << 20;

void check_matrix_shape(const GgufFile& f, const GgufTensor& t, std::uint64_t in, std::uint64_t out) {
    if (t.dims.size() != 2 || t.dims[0] != in || t.dims[1] != out)
        throw GgufError(f.path() + ": tensor " + t.name + " has shape [" + std::to_string(t.dims[0]) +
                        (t.dims.size() > 1 ? ", " + std::to_string(t.dims[1]) : "") + "], expected [" + std::to_string(in) +
                        ", " + std::to_string(out) + "]");
}

std::vector<float> load_vector(const GgufFile& f, const std::string& name, std::uint64_t n) {
    const GgufTensor& t = f.require_tensor(name);
    if (t.dims.size() != 1 || t.dims[0] != n)
        throw GgufError(f.path() + ": tensor " + name + " should hold " + std::to_string(n) + " values");
    return f.read_f32(t);
}

// The mapped file's pages under [data, data + bytes) (whole pages only) dropped from this
// process's resident set once the tensor has been packed: they are clean file pages that are
// read again from the page cache if anything touches them later.
void release_pages(const std::uint8_t* data, std::uint64_t bytes) {
    const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    if (page == 0 || page > (1u << 30)) return;
    const auto begin = (reinterpret_cast<std::uintptr_t>(data) + page - 1) / page * page;
    const auto end = (reinterpret_cast<std::uintptr_t>(data) + static_cast<std::uintptr_t>(bytes)) / page * page;
    if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

// FNV-1a over the tensor bytes and shape-defining metadata: cheap, and any change of weights
// or settings changes it, so stored chunks of another model never match. Each tensor's pages
// are released once hashed: otherwise the whole file stays resident through the load, beside
// the packed copies (peak RSS file + packed, not about the larger of the two); the tensors the
// forward pass reads from the file fault back in from the page cache.
std::string fingerprint_of(const GgufFile& f, const kvfuse::fusion::ModelShape& s) {
    std::uint64_t h = 1469598103934665603ull;
    auto mix = [&](const void* data, std::size_t bytes) {
        const auto* p = static_cast<const unsigned char*>(data);
        for (std::size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
    };
    for (const auto& t : f.tensors()) {
        mix(t.name.data(), t.name.size());
        mix(t.data, static_cast<std::size_t>(t.bytes));
        release_pages(t.data, t.bytes);
    }
    mix(&s.rope.base, sizeof s.rope.base);
    mix(&s.rope.pairing, sizeof s.rope.pairing);
    char text[64];
    std::snprintf(text, sizeof text, "gguf-%016llx", static_cast<unsigned long long>(h));
    return text;
}

// KVFUSE_DEQUANTIZED_GEMM=1 keeps every quantized matrix on the dequantize-a-tile path (f32
// activations), for comparing the two.
bool quantized_gemm_enabled() {
    const char* value = std::getenv("KVFUSE_DEQUANTIZED_GEMM");
    return value == nullptr || std::strcmp(value, "1") != 0;
}


}  // namespace

LlamaModel::LlamaModel(std::shared_ptr<const GgufFile> file) : file_(std::move(file)) {
    const GgufFile& f = *file_;
    architecture_ = f.get_string("general.architecture");
    if (architecture_ != "llama" && architecture_ != "mistral" && architecture_ != "qwen2" && architecture_ != "qwen3")
        throw GgufError(f.path() + ": architecture '" + architecture_ + "' is not supported (llama, mistral, qwen2, qwen3 are)");
    const std::string a = architecture_ + ".";
    // Mixtral's files say "llama" too: refused for what they are, not for the dense feed-forward
    // tensors they lack (experts stacked as ffn_*_exps, or one tensor per expert in older files,
    // with the router ffn_gate_inp either way).
    const std::uint64_t experts = f.has(a + "expert_count") ? f.get_uint_in(a + "expert_count", 0, std::numeric_limits<std::uint32_t>::max()) : 0;
    const char* expert_tensor = nullptr;
    for (const char* name : {"blk.0.ffn_gate_inp.weight", "blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight",
                             "blk.0.ffn_down_exps.weight"})
        if (expert_tensor == nullptr && f.tensor(name) != nullptr) expert_tensor = name;
    if (experts > 0 || expert_tensor != nullptr)
        throw GgufError(f.path() + ": mixture-of-experts models are not supported (architecture " + architecture_ + " with " +
                        (experts > 0 ? a + "expert_count = " + std::to_string(experts) : std::string("tensor ") + expert_tensor) +
                        "; Mixtral and other MoE files need expert routing, which kvfuse does not implement)");
    // Every size is read as 64 bits and range-checked before it becomes an int, so that 2^32 + 5
    // layers cannot load as 5 nor a context of 2^32 as 0 ("no limit").
    constexpr std::uint64_t kIntMax = std::numeric_limits<std::int32_t>::max();
    shape_.layers = static_cast<int>(f.get_uint_in(a + "block_count", 1, 1000));
    shape_.dim = static_cast<int>(f.get_uint_in(a + "embedding_length", 1, 65536));
    shape_.heads = static_cast<int>(f.get_uint_in(a + "attention.head_count", 1, static_cast<std::uint64_t>(shape_.dim)));
    shape_.kv_heads = static_cast<int>(f.get_uint_in_or(a + "attention.head_count_kv", static_cast<std::uint64_t>(shape_.heads), 1,
                                                        static_cast<std::uint64_t>(shape_.heads)));
    shape_.context = static_cast<int>(f.get_uint_in(a + "context_length", 1, kIntMax));
    ffn_ = static_cast<int>(f.get_uint_in(a + "feed_forward_length", 1, 1u << 20));
    // rms_norm divides by sqrt(mean + epsilon): a NaN, infinite, negative or zero epsilon gives
    // NaN for some rows, and every logit after them.
    epsilon_ = static_cast<float>(f.get_float_in_or(a + "attention.layer_norm_rms_epsilon", 1e-5, 1e-30, 1.0));
    // The head size is attention.key_length where the file has it (Qwen3, Gemma, Mistral-Nemo:
    // heads x head_dim need not be the embedding), else embedding / heads.
    const bool has_key_length = f.has(a + "attention.key_length");
    if (shape_.heads % shape_.kv_heads != 0 || (!has_key_length && shape_.dim % shape_.heads != 0))
        throw GgufError(f.path() + ": inconsistent model sizes: embedding " + std::to_string(shape_.dim) + ", " +
                        std::to_string(shape_.heads) + " heads, " + std::to_string(shape_.kv_heads) +
                        " KV heads (KV heads must divide the heads, and heads the embedding unless " + a +
                        "attention.key_length gives the head size)");
    shape_.head_dim = has_key_length ? static_cast<int>(f.get_uint_in(a + "attention.key_length", 1, 4096)) : shape_.dim / shape_.heads;
    // Keys and values share the head size in every kernel here (and in every supported family).
    const std::uint64_t value_length =
        f.get_uint_in_or(a + "attention.value_length", static_cast<std::uint64_t>(shape_.head_dim), 1, 4096);
    if (value_length != static_cast<std::uint64_t>(shape_.head_dim))
        throw GgufError(f.path() + ": " + a + "attention.value_length (" + std::to_string(value_length) +
                        ") differs from the key length (" + std::to_string(shape_.head_dim) + "): not supported");
    tokenizer_ = std::make_unique<Tokenizer>(f);
    shape_.vocab = static_cast<int>(tokenizer_->vocab_size());

    // RoPE: GGUF stores llama/mistral Q and K permuted for interleaved pairs; qwen2 uses NeoX.
    shape_.rope.head_dim = shape_.head_dim;
    shape_.rope.rotary_dims = static_cast<int>(f.get_uint_in_or(a + "rope.dimension_count", static_cast<std::uint64_t>(shape_.head_dim),
                                                                1, static_cast<std::uint64_t>(shape_.head_dim)));
    shape_.rope.base = f.get_float_or(a + "rope.freq_base", 10000.0);
    shape_.rope.pairing =
        architecture_ == "qwen2" || architecture_ == "qwen3" ? kvfuse::RopePairing::neox : kvfuse::RopePairing::interleaved;
    const std::string scaling = f.has(a + "rope.scaling.type") ? f.get_string(a + "rope.scaling.type") : "none";
    if (scaling == "linear") {
        shape_.rope.scaling = kvfuse::RopeScaling::linear;
        shape_.rope.scaling_factor = f.get_float(a + "rope.scaling.factor");
    } else if (scaling == "llama3") {
        shape_.rope.scaling = kvfuse::RopeScaling::llama3;
        shape_.rope.scaling_factor = f.get_float(a + "rope.scaling.factor");
        shape_.rope.llama3_low_freq_factor = f.get_float_or(a + "rope.scaling.low_freq_factor", 1.0);
        shape_.rope.llama3_high_freq_factor = f.get_float_or(a + "rope.scaling.high_freq_factor", 4.0);
        shape_.rope.llama3_original_context =
            static_cast<int>(f.get_uint_in_or(a + "rope.scaling.original_context_length", 8192, 1, kIntMax));
    } else if (scaling != "none") {
        throw GgufError(f.path() + ": rope scaling '" + scaling + "' is not supported (none, linear, llama3 are)");
    }
    // Llama 3.1/3.2 files carry their RoPE scaling as one divisor per rotated pair (llama.cpp's
    // converter computes the llama3 formula into rope_freqs.weight). Read whenever present: a
    // file with it must never run without it.
    if (const GgufTensor* freqs = f.tensor("rope_freqs.weight"); freqs != nullptr) {
        const std::uint64_t pairs = static_cast<std::uint64_t>(shape_.rope.rotary_dims) / 2;
        if (freqs->type != GgmlType::f32 || freqs->dims.size() != 1 || freqs->dims[0] != pairs)
            throw GgufError(f.path() + ": tensor rope_freqs.weight must be f32 with " + std::to_string(pairs) +
                            " values (one per rotated pair of a head of " + std::to_string(shape_.rope.rotary_dims) +
                            " rotary dims)");
        if (shape_.rope.scaling == kvfuse::RopeScaling::llama3)
            throw GgufError(f.path() + ": both rope_freqs.weight and " + a +
                            "rope.scaling.type = llama3: the scaling would be applied twice");
        shape_.rope.freq_factors = f.read_f32(*freqs);
    }
    // The library is the one judge of a RoPE configuration (even rotary dims, base > 1, finite
    // positive factors, ...): one zero row rotated now, so that a model every command would
    // reject later is rejected at load, by `info` too.
    {
        std::vector<float> row(static_cast<std::size_t>(shape_.head_dim), 0.0f);
        const std::int64_t position = 0;
        const kvfuse::Status rope = kvfuse::rope_rotate(shape_.rope, row.data(), 1, 1, row.size(), &position);
        if (!rope.ok()) throw GgufError(f.path() + ": RoPE metadata (" + a + "rope.*) rejected: " + rope.message());
    }

    // Before the weights are packed: packing releases the file pages of the tensors it copies.
    fingerprint_ = fingerprint_of(f, shape_);
    const std::uint64_t d = static_cast<std::uint64_t>(shape_.dim), q = shape_.q_row(), kv = shape_.kv_row(),
                        head = static_cast<std::uint64_t>(shape_.head_dim), ffn = static_cast<std::uint64_t>(ffn_),
                        vocab = static_cast<std::uint64_t>(shape_.vocab);
    embedding_ = &f.require_tensor("token_embd.weight");
    check_matrix_shape(f, *embedding_, d, vocab);
    f.require_readable(*embedding_);
    output_norm_ = load_vector(f, "output_norm.weight", d);
    tied_output_ = f.tensor("output.weight") == nullptr;
    output_ = load_dense(tied_output_ ? "token_embd.weight" : "output.weight", d, vocab);
    for (int l = 0; l < shape_.layers; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        Layer layer;
        layer.attn_norm = load_vector(f, p + "attn_norm.weight", d);
        layer.wq = load_dense(p + "attn_q.weight", d, q);
        layer.wk = load_dense(p + "attn_k.weight", d, kv);
        layer.wv = load_dense(p + "attn_v.weight", d, kv);
        layer.wo = load_dense(p + "attn_output.weight", q, d);
        layer.ffn_norm = load_vector(f, p + "ffn_norm.weight", d);
        layer.w_gate = load_dense(p + "ffn_gate.weight", d, ffn);
        layer.w_up = load_dense(p + "ffn_up.weight", d, ffn);
        layer.w_down = load_dense(p + "ffn_down.weight", ffn, d);
        // Qwen2 adds biases to the Q, K and V projections.
        if (f.tensor(p + "attn_q.bias") != nullptr) layer.bq = load_vector(f, p + "attn_q.bias", q);
        if (f.tensor(p + "attn_k.bias") != nullptr) layer.bk = load_vector(f, p + "attn_k.bias", kv);
        if (f.tensor(p + "attn_v.bias") != nullptr) layer.bv = load_vector(f, p + "attn_v.bias", kv);
        // Qwen3 normalises each query and key head (RMS over head_dim) before RoPE; only there.
        const bool qk_norm = architecture_ == "qwen3";
        for (const char* name : {"attn_q_norm.weight", "attn_k_norm.weight"})
            if (!qk_norm && f.tensor(p + name) != nullptr)
                throw GgufError(f.path() + ": tensor " + p + name + " is not part of architecture " + architecture_ +
                                " (per-head Q/K norms are qwen3's)");
        if (qk_norm) {
            layer.q_norm = load_vector(f, p + "attn_q_norm.weight", head);
            layer.k_norm = load_vector(f, p + "attn_k_norm.weight", head);
        }
        layers_.push_back(std::move(layer));
    }
}

// F32 and BF16 matrices are packed once (the packed copy is the size of the file's; bf16 stays
// bf16); the block types of block_codes.h are packed from their codes (no f32 copy, no
// requantization: Q4_K in its two-level form, 4.75 bits a weight; Q6_K in its own, 6.625; other
// 4-bit codes 6, 8-bit 10) for the int8 product, and their file pages released; every other
// type stays in the mapped file in its stored form.
LlamaModel::Dense LlamaModel::load_dense(const std::string& name, std::uint64_t in, std::uint64_t out) {
    const GgufFile& f = *file_;
    const GgufTensor& t = f.require_tensor(name);
    check_matrix_shape(f, t, in, out);
    f.require_readable(t);
    Dense dense;
    dense.in = static_cast<std::size_t>(in);
    dense.out = static_cast<std::size_t>(out);
    kvfuse::Status status;
    // The block types: their codes in the API's form, packed, then the file's pages let go (the
    // embedding's stay: its rows are read from them per token).
    const auto quantized_form = [&](int code_bits, const std::uint8_t* codes) {
        kvfuse_quantized_weights q;
        kvfuse_quantized_weights_init(&q);
        q.out = dense.out;
        q.in = dense.in;
        q.code_bits = code_bits;
        q.codes = codes;
        q.codes_stride = dense.in;
        return q;
    };
    const auto pack_codes = [&](const kvfuse_quantized_weights& q, std::size_t packed_bytes) {
        status = kvfuse::PackedWeights::pack_quantized(q, dense.packed);
        resident_bytes_ += packed_bytes;
        if (status.ok() && &t != embedding_) release_pages(t.data, t.bytes);
    };
    if (t.type == GgmlType::bf16 && reinterpret_cast<std::uintptr_t>(t.data) % alignof(kvfuse::bf16) == 0) {
        status = kvfuse::PackedWeights::pack(reinterpret_cast<const kvfuse::bf16*>(t.data), dense.out, dense.in, dense.in,
                                             kvfuse::Dtype::bf16, dense.packed);
        resident_bytes_ += t.bytes;
    } else if (t.type == GgmlType::f32 || t.type == GgmlType::bf16) {
        const std::vector<float> w = f.read_f32(t);
        status = kvfuse::PackedWeights::pack(w.data(), dense.out, dense.in, dense.in, kvfuse::Dtype::f32, dense.packed);
        resident_bytes_ += w.size() * sizeof(float);
    } else if (t.type == GgmlType::q4_k && quantized_gemm_enabled()) {
        // Q4_K's own two-level form (4.75 bits a weight), not the one-level 6.
        const std::size_t blocks = dense.in / 32, supers = dense.in / 256;
        std::vector<std::uint8_t> codes(dense.out * dense.in), sub_scales(dense.out * blocks), sub_offsets(dense.out * blocks);
        std::vector<float> super_scales(dense.out * supers), super_offsets(dense.out * supers);
        const std::size_t row_bytes = static_cast<std::size_t>(t.bytes / t.rows());
        for (std::size_t r = 0; r < dense.out; ++r)
            q4_k_two_level_codes(t.data + r * row_bytes, dense.in, codes.data() + r * dense.in, sub_scales.data() + r * blocks,
                                 sub_offsets.data() + r * blocks, super_scales.data() + r * supers,
                                 super_offsets.data() + r * supers);
        kvfuse_quantized_weights q = quantized_form(4, codes.data());
        q.block_stride = blocks;
        q.sub_scales = sub_scales.data();
        q.sub_offsets = sub_offsets.data();
        q.super_scales = super_scales.data();
        q.super_offsets = super_offsets.data();
        q.super_stride = supers;
        pack_codes(q, (dense.out + 31) / 32 * 32 * (dense.in / 2 + blocks * 2 + supers * 8));
    } else if (t.type == GgmlType::q6_k && quantized_gemm_enabled()) {
        // Q6_K's own form (6.625 bits a weight): codes, signed per-16 sub-scales, d per 256.
        const std::size_t subs = dense.in / 16, supers = dense.in / 256;
        std::vector<std::uint8_t> codes(dense.out * dense.in);
        std::vector<std::int8_t> sub_scales(dense.out * subs);
        std::vector<float> super_scales(dense.out * supers);
        const std::size_t row_bytes = static_cast<std::size_t>(t.bytes / t.rows());
        for (std::size_t r = 0; r < dense.out; ++r)
            q6_k_codes(t.data + r * row_bytes, dense.in, codes.data() + r * dense.in, sub_scales.data() + r * subs,
                       super_scales.data() + r * supers);
        kvfuse_quantized_weights q = quantized_form(6, codes.data());
        q.signed_sub_scales = sub_scales.data();
        q.signed_sub_stride = subs;
        q.super_scales = super_scales.data();
        q.super_stride = supers;
        pack_codes(q, (dense.out + 31) / 32 * 32 * (dense.in * 6 / 8 + subs + supers * 4));
    } else if (const int bits = block32_code_bits(t.type); bits != 0 && quantized_gemm_enabled()) {
        const std::size_t blocks = dense.in / 32;
        std::vector<std::uint8_t> codes(dense.out * dense.in);
        std::vector<float> scales(dense.out * blocks), offsets(dense.out * blocks);
        const std::size_t row_bytes = static_cast<std::size_t>(t.bytes / t.rows());
        for (std::size_t r = 0; r < dense.out; ++r)
            block32_codes(t.type, t.data + r * row_bytes, dense.in, codes.data() + r * dense.in, scales.data() + r * blocks,
                          offsets.data() + r * blocks);
        kvfuse_quantized_weights q = quantized_form(bits, codes.data());
        q.scales = scales.data();
        q.offsets = offsets.data();
        q.block_stride = blocks;
        pack_codes(q, (dense.out + 31) / 32 * 32 * (dense.in * static_cast<std::size_t>(bits) / 8 + blocks * 8));
    } else {
        dense.tensor = &t;
        tiled_bytes_ += t.bytes;
    }
    if (!status.ok()) throw GgufError(f.path() + ": tensor " + name + " could not be packed: " + status.message());
    return dense;
}

LlamaModel::Borrowed::Borrowed(const LlamaModel& model) : model_(model) {
    {
        std::lock_guard lock(model_.workspaces_mutex_);
        if (!model_.idle_workspaces_.empty()) {
            workspace_ = std::move(model_.idle_workspaces_.back());
            model_.idle_workspaces_.pop_back();
            return;
        }
    }
    workspace_ = std::make_unique<Workspace>();
}

LlamaModel::Borrowed::~Borrowed() {
    std::lock_guard lock(model_.workspaces_mutex_);
    try {
        model_.idle_workspaces_.push_back(std::move(workspace_));
    } catch (const std::bad_alloc&) {
        // Not kept: a later call makes a new set. (Only a return that leaves more sets idle at
        // once than ever before grows the vector.)
    }
}

void LlamaModel::linear(kvfuse::Context& context, const float* x, std::size_t n, const Dense& w, float* y, float beta) const {
    const Borrowed workspace(*this);
    linear(context, x, n, w, y, beta, workspace->tile);
}

void LlamaModel::linear(kvfuse::Context& context, const float* x, std::size_t n, const Dense& w, float* y, float beta,
                        std::vector<float>& tile_buffer) const {
    if (w.tensor == nullptr) {
        driver::throw_if_failed(kvfuse::gemm(context, w.packed, x, n, y, beta), "matrix product");
        return;
    }
    // Dequantize a tile of rows (output features), pack it, multiply into the tile's columns of
    // Y. The packing costs about as much as the dequantization, both linear in the weights,
    // against the product's n times as much work. (Packing makes a new handle per tile: the
    // public API has no repacking into an existing one.)
    const std::size_t tile_rows = std::min(w.out, std::max<std::size_t>(16, kTileBytes / (w.in * sizeof(float))) / 16 * 16);
    tile_buffer.resize(tile_rows * w.in);
    kvfuse::PackedWeights packed;
    for (std::size_t first = 0; first < w.out; first += tile_rows) {
        const std::size_t rows = std::min(tile_rows, w.out - first);
        const std::size_t row_bytes = static_cast<std::size_t>(w.tensor->bytes / w.tensor->rows());
        const DequantizeRow dequantize = w.tensor->traits->dequantize_row;
        const std::uint8_t* base = w.tensor->data + first * row_bytes;
        float* tile = tile_buffer.data();
        const std::size_t in = w.in;
        for (std::size_t r = 0; r < rows; ++r) dequantize(base + r * row_bytes, tile + r * in, in);
        driver::throw_if_failed(kvfuse::PackedWeights::pack(tile, rows, in, in, kvfuse::Dtype::f32, packed), "packing a weight tile");
        driver::throw_if_failed(kvfuse::gemm(context, packed, x, n, y + first, beta, in, w.out),
                                "matrix product (weight tile)");
    }
}

std::string LlamaModel::describe() const {
    char text[256];
    std::snprintf(text, sizeof text, "%s: %d layers, dim %d, %d heads (%d KV, head dim %d), ffn %d, vocab %d, context %d",
                  architecture_.c_str(), shape_.layers, shape_.dim, shape_.heads, shape_.kv_heads, shape_.head_dim, ffn_,
                  shape_.vocab, shape_.context);
    return text;
}

void LlamaModel::rms_norm(const float* in, const std::vector<float>& weight, std::size_t n, float* out) const {
    rms_norm_rows(in, weight, n, static_cast<std::size_t>(shape_.dim), out);
}

void LlamaModel::rms_norm_rows(const float* in, const std::vector<float>& weight, std::size_t n, std::size_t d,
                               float* out) const {
    for (std::size_t r = 0; r < n; ++r) {
        const float* x = in + r * d;
        float sum = 0.0f;
        for (std::size_t e = 0; e < d; ++e) sum += x[e] * x[e];
        const float scale = 1.0f / std::sqrt(sum / static_cast<float>(d) + epsilon_);
        for (std::size_t e = 0; e < d; ++e) out[r * d + e] = x[e] * scale * weight[e];
    }
}

void LlamaModel::embed(std::span<const std::int32_t> tokens, float* hidden) const {
    const std::size_t d = static_cast<std::size_t>(shape_.dim);
    for (std::size_t t = 0; t < tokens.size(); ++t) {
        if (tokens[t] < 0 || tokens[t] >= shape_.vocab)
            throw std::out_of_range("token id " + std::to_string(tokens[t]) + " is outside the vocabulary");
        file_->dequantize_rows(*embedding_, static_cast<std::uint64_t>(tokens[t]), 1, hidden + t * d);
    }
}

void LlamaModel::project_qkv(kvfuse::Context& context, int layer, const float* hidden, std::size_t n,
                             const std::int64_t* positions, float* q, float* k, float* v) const {
    const Layer& w = layers_[static_cast<std::size_t>(layer)];
    const std::size_t d = static_cast<std::size_t>(shape_.dim);
    const Borrowed work(*this);
    std::vector<float>& normed = work->normed;
    normed.resize(n * d);
    rms_norm(hidden, w.attn_norm, n, normed.data());
    linear(context, normed.data(), n, w.wq, q, 0.0f, work->tile);
    linear(context, normed.data(), n, w.wk, k, 0.0f, work->tile);
    linear(context, normed.data(), n, w.wv, v, 0.0f, work->tile);
    // Biases before RoPE, as the reference implementations apply them.
    auto add_bias = [n](float* x, const std::vector<float>& bias) {
        for (std::size_t r = 0; r < n && !bias.empty(); ++r)
            for (std::size_t e = 0; e < bias.size(); ++e) x[r * bias.size() + e] += bias[e];
    };
    add_bias(q, w.bq);
    add_bias(k, w.bk);
    add_bias(v, w.bv);
    if (!w.q_norm.empty()) {
        rms_norm_rows(q, w.q_norm, n * static_cast<std::size_t>(shape_.heads), w.q_norm.size(), q);
        rms_norm_rows(k, w.k_norm, n * static_cast<std::size_t>(shape_.kv_heads), w.k_norm.size(), k);
    }
    kvfuse::Status s =
        kvfuse::rope_rotate(context, shape_.rope, q, n, static_cast<std::size_t>(shape_.heads), shape_.q_row(), positions);
    if (s.ok())
        s = kvfuse::rope_rotate(context, shape_.rope, k, n, static_cast<std::size_t>(shape_.kv_heads), shape_.kv_row(), positions);
    driver::throw_if_failed(s, "RoPE of the queries and keys");
}

void LlamaModel::finish_layer(kvfuse::Context& context, int layer, const float* attention, std::size_t n, float* hidden) const {
    const Layer& w = layers_[static_cast<std::size_t>(layer)];
    const std::size_t d = static_cast<std::size_t>(shape_.dim), ffn = static_cast<std::size_t>(ffn_);
    const Borrowed work(*this);
    std::vector<float>& normed = work->normed;
    std::vector<float>& gate = work->gate;
    std::vector<float>& up = work->up;
    linear(context, attention, n, w.wo, hidden, 1.0f, work->tile);  // residual: hidden += attention * Wo^T
    normed.resize(n * d);
    rms_norm(hidden, w.ffn_norm, n, normed.data());
    // The feed-forward a block of rows at a time: its two ffn-wide activations would otherwise be
    // n x ffn floats each (2 x 235 MiB for 2K rows of an 8B model, more than its KV cache),
    // memory that grows with the prompt but not with the model. Each row's result is the same
    // either way (rows are independent); a block of ffn_rows still gives the GEMM enough rows
    // to reuse each weight tile many times.
    const std::size_t block = ffn_block_rows();
    gate.resize(std::min(n, block) * ffn);
    up.resize(std::min(n, block) * ffn);
    for (std::size_t first = 0; first < n; first += block) {
        const std::size_t rows = std::min(block, n - first);
        linear(context, normed.data() + first * d, rows, w.w_gate, gate.data(), 0.0f, work->tile);
        linear(context, normed.data() + first * d, rows, w.w_up, up.data(), 0.0f, work->tile);
        for (std::size_t i = 0; i < rows * ffn; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
        linear(context, gate.data(), rows, w.w_down, hidden + first * d, 1.0f, work->tile);
    }
}

std::size_t LlamaModel::ffn_block_rows() const {
    const std::size_t rows = ffn_block_bytes_ / (2 * static_cast<std::size_t>(ffn_) * sizeof(float));
    return std::max<std::size_t>(1, rows >= 64 ? rows / 16 * 16 : rows);
}

void LlamaModel::logits(kvfuse::Context& context, const float* hidden, std::size_t n, float* out) const {
    const std::size_t d = static_cast<std::size_t>(shape_.dim);
    const Borrowed work(*this);
    work->normed.resize(n * d);
    rms_norm(hidden, output_norm_, n, work->normed.data());
    linear(context, work->normed.data(), n, output_, out, 0.0f, work->tile);
}

}  // namespace kvfuse::model
