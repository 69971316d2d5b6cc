// A small random-weight llama (RMSNorm, GQA attention with interleaved RoPE, SwiGLU) written
// with plain loops, implementing FusionModel. It tests the fusion pipeline's logic apart from
// the GGUF driver; the bundled real model tests the whole.
#pragma once

#include <cmath>
#include <random>
#include <stdexcept>
#include <vector>

#include "fusion/fusion_model.h"

namespace kvfuse::testing {

class TinyLlama : public kvfuse::fusion::FusionModel {
   public:
    explicit TinyLlama(std::uint32_t seed, int layers = 3) {
        s_.layers = layers;
        s_.dim = 16;
        s_.heads = 4;
        s_.kv_heads = 2;
        s_.head_dim = 4;
        s_.vocab = 40;
        s_.context = 256;
        s_.rope.head_dim = 4;
        s_.rope.pairing = kvfuse::RopePairing::interleaved;
        std::mt19937 rng(seed);
        std::normal_distribution<float> normal(0.0f, 0.4f);
        auto fill = [&](std::size_t n) {
            std::vector<float> w(n);
            for (float& x : w) x = normal(rng);
            return w;
        };
        const std::size_t d = 16, q = 16, kv = 8, hidden = 24;
        embedding_ = fill(40 * d);
        for (int l = 0; l < layers; ++l)
            layers_.push_back({fill(q * d), fill(kv * d), fill(kv * d), fill(d * q), fill(hidden * d), fill(hidden * d), fill(d * hidden)});
        output_ = fill(40 * d);
    }

    const kvfuse::fusion::ModelShape& shape() const override { return s_; }
    std::string fingerprint() const override { return "tiny-llama"; }
    std::int32_t bos() const override { return 1; }

    void embed(std::span<const std::int32_t> tokens, float* hidden) const override {
        for (std::size_t t = 0; t < tokens.size(); ++t)
            for (int e = 0; e < s_.dim; ++e) hidden[t * s_.dim + e] = embedding_[static_cast<std::size_t>(tokens[t]) * s_.dim + e];
    }

    void project_qkv(kvfuse::Context& context, int layer, const float* hidden, std::size_t n, const std::int64_t* positions,
                     float* q, float* k, float* v) const override {
        const Layer& w = layers_[static_cast<std::size_t>(layer)];
        std::vector<float> x(s_.dim);
        for (std::size_t r = 0; r < n; ++r) {
            rms_norm(hidden + r * s_.dim, x.data());
            matvec(w.wq, x.data(), s_.dim, s_.q_row(), q + r * s_.q_row());
            matvec(w.wk, x.data(), s_.dim, s_.kv_row(), k + r * s_.kv_row());
            matvec(w.wv, x.data(), s_.dim, s_.kv_row(), v + r * s_.kv_row());
        }
        // On the caller's context, as an engine's model would (a failure would be a test bug:
        // the shape is fixed and valid).
        if (!kvfuse::rope_rotate(context, s_.rope, q, n, static_cast<std::size_t>(s_.heads), s_.q_row(), positions).ok() ||
            !kvfuse::rope_rotate(context, s_.rope, k, n, static_cast<std::size_t>(s_.kv_heads), s_.kv_row(), positions).ok())
            throw std::runtime_error("TinyLlama: RoPE failed");
    }

    // Plain loops: no kernel call, so the context is not used.
    void finish_layer(kvfuse::Context&, int layer, const float* attention, std::size_t n, float* hidden) const override {
        const Layer& w = layers_[static_cast<std::size_t>(layer)];
        std::vector<float> out(s_.dim), x(s_.dim), gate(24), up(24);
        for (std::size_t r = 0; r < n; ++r) {
            float* h = hidden + r * s_.dim;
            matvec(w.wo, attention + r * s_.q_row(), s_.q_row(), s_.dim, out.data());
            for (int e = 0; e < s_.dim; ++e) h[e] += out[e];
            rms_norm(h, x.data());
            matvec(w.w1, x.data(), s_.dim, 24, gate.data());
            matvec(w.w3, x.data(), s_.dim, 24, up.data());
            for (int i = 0; i < 24; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
            matvec(w.w2, gate.data(), 24, s_.dim, out.data());
            for (int e = 0; e < s_.dim; ++e) h[e] += out[e];
        }
    }

    void logits(kvfuse::Context&, const float* hidden, std::size_t n, float* out) const override {
        std::vector<float> x(s_.dim);
        for (std::size_t r = 0; r < n; ++r) {
            rms_norm(hidden + r * s_.dim, x.data());
            matvec(output_, x.data(), s_.dim, s_.vocab, out + r * s_.vocab);
        }
    }

   private:
    struct Layer {
        std::vector<float> wq, wk, wv, wo, w1, w3, w2;
    };
    void rms_norm(const float* in, float* out) const {
        float ss = 0.0f;
        for (int e = 0; e < s_.dim; ++e) ss += in[e] * in[e];
        const float scale = 1.0f / std::sqrt(ss / s_.dim + 1e-5f);
        for (int e = 0; e < s_.dim; ++e) out[e] = in[e] * scale;
    }
    static void matvec(const std::vector<float>& w, const float* x, std::size_t in, std::size_t out, float* y) {
        for (std::size_t o = 0; o < out; ++o) {
            float acc = 0.0f;
            for (std::size_t i = 0; i < in; ++i) acc += w[o * in + i] * x[i];
            y[o] = acc;
        }
    }
    kvfuse::fusion::ModelShape s_;
    std::vector<float> embedding_, output_;
    std::vector<Layer> layers_;
};

}  // namespace kvfuse::testing
