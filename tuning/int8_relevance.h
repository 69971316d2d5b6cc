// The int8 A3 relevance call the tuner times (its ScoreWork), with its inputs: f32 queries and
// keys quantized by the library (quantize_rows_i8, quantize_keys_i8), then the arguments.
// Header-only and public API only, so that bench_tuning times the same call at its own shape and
// test_kernel_isa checks it against the reference on every ISA without linking the tuner.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kvfuse/kvfuse.hpp"

namespace kvfuse::tuner {

struct Int8Relevance {
    std::vector<std::int8_t> queries_i8, keys_i8;
    std::vector<float> query_scales, key_scales, key_means, out;
    RelevanceArgs args{};  // points into the buffers above (out: key_count scores)

    // `queries`: question_rows x heads x head_dim, `keys`: key_count x kv_heads x head_dim, rows
    // packed. Throws std::runtime_error naming the step when quantizing fails.
    Int8Relevance(const std::vector<float>& queries, std::size_t question_rows, const std::vector<float>& keys,
                  std::size_t key_count, std::size_t heads, std::size_t kv_heads, std::size_t head_dim)
        : queries_i8(queries.size()),
          keys_i8(keys.size()),
          query_scales(question_rows * heads),
          key_scales(key_count * kv_heads),
          key_means(kv_heads * head_dim),
          out(key_count) {
        const std::size_t H = heads, Hkv = kv_heads, D = head_dim;
        if (const Status s = quantize_rows_i8(queries.data(), question_rows, H, D, H * D, queries_i8.data(), query_scales.data());
            !s.ok())
            throw std::runtime_error("quantizing queries: " + s.message());
        if (const Status s = quantize_keys_i8(keys.data(), key_count, Hkv, D, Hkv * D, keys_i8.data(), key_scales.data(),
                                              key_means.data());
            !s.ok())
            throw std::runtime_error("quantizing keys: " + s.message());
        args.question_rows = question_rows;
        args.candidates = key_count;
        args.query_heads = H;
        args.kv_heads = Hkv;
        args.head_dim = D;
        args.queries_i8 = queries_i8.data();
        args.query_scales = query_scales.data();
        args.keys_i8 = keys_i8.data();
        args.key_scales = key_scales.data();
        args.smoothing = 1;
        args.out = out.data();
    }
    // A copy's args would point into this object's buffers.
    Int8Relevance(const Int8Relevance&) = delete;
    Int8Relevance& operator=(const Int8Relevance&) = delete;
};

}  // namespace kvfuse::tuner
