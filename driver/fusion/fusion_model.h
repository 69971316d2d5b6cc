// What the fusion pipeline needs from a model: the pieces of a llama-style layer, split where
// fusion must act between them (after Q/K/V are projected, before attention). Any engine can
// run kvfuse's pipeline by implementing this; the driver's GGUF model does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "kvfuse/kvfuse.hpp"

namespace kvfuse::fusion {

struct ModelShape {
    int layers = 0;
    int dim = 0;        // hidden size
    int heads = 0;      // query heads H
    int kv_heads = 0;   // Hkv (GQA group H / Hkv)
    int head_dim = 0;   // D
    int vocab = 0;
    int context = 0;    // trained context length
    kvfuse::RopeConfig rope;

    std::size_t q_row() const { return static_cast<std::size_t>(heads) * head_dim; }
    std::size_t kv_row() const { return static_cast<std::size_t>(kv_heads) * head_dim; }
};

class FusionModel {
   public:
    virtual ~FusionModel() = default;
    virtual const ModelShape& shape() const = 0;
    // Identifies the weights (content hash or path + size): part of every stored chunk's key.
    virtual std::string fingerprint() const = 0;
    virtual std::int32_t bos() const = 0;

    // hidden[n x dim] = embeddings of tokens (a table lookup: no kernel call).
    virtual void embed(std::span<const std::int32_t> tokens, float* hidden) const = 0;
    // The calls below run every kvfuse kernel they use (the dense layers' GEMM, RoPE, ...) on
    // `context`: the caller's thread count or parallel-for, its scratch. A context serves one
    // call at a time (kvfuse.h), so callers running at once pass contexts of their own; an
    // empty kvfuse::Context is the calling thread's default context. Implementations say
    // whether calls on different contexts may overlap (the driver's LlamaModel: yes).
    //
    // For n rows of hidden states (input of `layer`) at the given absolute positions:
    // q[n x H x D] and k[n x Hkv x D] after RoPE at those positions, v[n x Hkv x D].
    virtual void project_qkv(kvfuse::Context& context, int layer, const float* hidden, std::size_t n,
                             const std::int64_t* positions, float* q, float* k, float* v) const = 0;
    // Completes the layer for n rows: hidden += Wo * attention; hidden += MLP(norm(hidden)).
    virtual void finish_layer(kvfuse::Context& context, int layer, const float* attention, std::size_t n,
                              float* hidden) const = 0;
    // logits[n x vocab] of final hidden states (final norm and output matrix).
    virtual void logits(kvfuse::Context& context, const float* hidden, std::size_t n, float* out) const = 0;
};

}  // namespace kvfuse::fusion
