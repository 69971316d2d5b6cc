// A llama-architecture model (llama incl. Llama 3.1's rope_freqs, mistral, qwen2 with its Q/K/V
// biases, qwen3 with its per-head Q/K RMSNorm; head size from attention.key_length) from a GGUF file. Dense
// weights: F32 and BF16 packed once for kvfuse_gemm (bf16 kept bf16); Q8_0, Q4_0, Q4_1, Q5_0,
// Q5_1, Q4_K, Q5_K and Q6_K packed once from their codes (model/block_codes.h) for kvfuse_gemm's int8
// product (KVFUSE_DEQUANTIZED_GEMM=1 turns that off); every other type stays in the mapped file
// in its stored form, and each product dequantizes a bounded tile of rows into scratch and runs
// kvfuse_gemm on it. Embedding rows are dequantized per token from the file.
// RoPE and attention through kvfuse's public API, every kernel call on the kvfuse::Context the
// caller passes. It implements fusion::FusionModel, so the fusion pipeline and plain generation
// share one forward pass. Calls may overlap (requests on threads of their own) when each passes
// a context of its own: each call borrows a set of working buffers from the model's idle ones,
// kept across calls, so after warm-up a call allocates nothing of the model's.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fusion/fusion_model.h"
#include "kvfuse/kvfuse.hpp"
#include "model/gguf.h"
#include "model/tokenizer.h"

namespace kvfuse::model {

class LlamaModel : public kvfuse::fusion::FusionModel {
   public:
    // Reads metadata and every tensor; throws GgufError naming the problem.
    explicit LlamaModel(std::shared_ptr<const GgufFile> file);

    const kvfuse::fusion::ModelShape& shape() const override { return shape_; }
    std::string fingerprint() const override { return fingerprint_; }
    std::int32_t bos() const override { return tokenizer_->bos(); }

    void embed(std::span<const std::int32_t> tokens, float* hidden) const override;
    void project_qkv(kvfuse::Context& context, int layer, const float* hidden, std::size_t n, const std::int64_t* positions,
                     float* q, float* k, float* v) const override;
    void finish_layer(kvfuse::Context& context, int layer, const float* attention, std::size_t n,
                      float* hidden) const override;
    void logits(kvfuse::Context& context, const float* hidden, std::size_t n, float* out) const override;

    const Tokenizer& tokenizer() const { return *tokenizer_; }
    const GgufFile& file() const { return *file_; }
    std::string architecture() const { return architecture_; }
    std::string describe() const;
    int hidden_size_ffn() const { return ffn_; }
    float rms_epsilon() const { return epsilon_; }

    // A dense layer's weights: packed for kvfuse_gemm, or (`tensor` set) read from the mapped file
    // a tile of rows at a time. Public for the tests.
    struct Dense {
        kvfuse::PackedWeights packed;
        const GgufTensor* tensor = nullptr;
        std::size_t in = 0, out = 0;
    };
    // Y[n x out] = X[n x in] * W^T (+ Y when beta = 1), on `context`.
    void linear(kvfuse::Context& context, const float* x, std::size_t n, const Dense& w, float* y,
                float beta = 0.0f) const;
    // The feed-forward's working memory: finish_layer computes the gate and up activations of
    // as many rows at once as fit in these bytes (at least one row), so that memory is bounded by
    // this, not by the rows of the request. Default 28 MiB: 256 rows of an 8B model's ffn 14336.
    // Results do not depend on it (tests set it small to run many blocks). Not to be changed
    // while calls run.
    void set_ffn_block_bytes(std::size_t bytes) { ffn_block_bytes_ = bytes; }
    std::size_t ffn_block_rows() const;
    // Bytes of dense weights held in memory outside the mapped file (packed copies).
    std::size_t resident_weight_bytes() const { return resident_bytes_; }
    // Bytes of dense weights left in the mapped file and dequantized a tile at a time per product
    // (types without a packed form; every type with KVFUSE_DEQUANTIZED_GEMM=1).
    std::size_t tiled_weight_bytes() const { return tiled_bytes_; }

   private:
    Dense load_dense(const std::string& name, std::uint64_t in, std::uint64_t out);
    // One call's working buffers: normed rows, the MLP's gate and up, a dequantized weight tile.
    struct Workspace {
        std::vector<float> normed, gate, up, tile;
    };
    // A Workspace borrowed for one call: an idle one (or a new one when every set is in use,
    // i.e. more calls overlap than ever before), given back when the call ends.
    class Borrowed {
       public:
        explicit Borrowed(const LlamaModel& model);
        ~Borrowed();
        Borrowed(const Borrowed&) = delete;
        Borrowed& operator=(const Borrowed&) = delete;
        Workspace* operator->() const { return workspace_.get(); }

       private:
        const LlamaModel& model_;
        std::unique_ptr<Workspace> workspace_;
    };
    void linear(kvfuse::Context& context, const float* x, std::size_t n, const Dense& w, float* y, float beta,
                std::vector<float>& tile) const;
    struct Layer {
        std::vector<float> attn_norm, ffn_norm;
        Dense wq, wk, wv, wo, w_gate, w_up, w_down;
        std::vector<float> bq, bk, bv;  // Qwen2's attention biases (empty when absent)
        std::vector<float> q_norm, k_norm;  // Qwen3's per-head RMSNorm weights (head_dim each; empty when absent)
    };
    void rms_norm(const float* in, const std::vector<float>& weight, std::size_t n, float* out) const;
    // n rows of d values each (in may equal out).
    void rms_norm_rows(const float* in, const std::vector<float>& weight, std::size_t n, std::size_t d, float* out) const;

    std::shared_ptr<const GgufFile> file_;
    std::unique_ptr<Tokenizer> tokenizer_;
    kvfuse::fusion::ModelShape shape_;
    std::string architecture_, fingerprint_;
    int ffn_ = 0;
    float epsilon_ = 1e-5f;
    bool tied_output_ = false;
    const GgufTensor* embedding_ = nullptr;  // rows looked up by token, dequantized on use
    std::vector<float> output_norm_;
    Dense output_;  // the output layer (token_embd when tied)
    std::vector<Layer> layers_;
    std::size_t resident_bytes_ = 0;
    std::size_t tiled_bytes_ = 0;
    mutable std::mutex workspaces_mutex_;
    mutable std::vector<std::unique_ptr<Workspace>> idle_workspaces_;
    std::size_t ffn_block_bytes_ = std::size_t{28} << 20;
};

}  // namespace kvfuse::model
