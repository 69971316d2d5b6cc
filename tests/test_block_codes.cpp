// The GGUF block types packed from their codes for the int8 product (model/block_codes.h): the
// codes, scales and offsets give back exactly (the same f32 values) what the dequantizer gives,
// for rows our quantizers wrote and for every such tensor of llama.cpp's files
// (tests/data/quants); a model of such a file holds its matrices packed.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "model/block_codes.h"
#include "model/gguf.h"
#include "model/gguf_types.h"
#include "model/llama_model.h"

namespace {

using kvfuse::model::GgmlType;
using kvfuse::model::GgufFile;

const std::string kData = KVFUSE_QUANT_FIXTURES;

// Row `blocks` of `type` (elements values) through block32_codes, compared with the dequantizer.
void expect_exact(GgmlType type, const std::uint8_t* blocks, std::size_t elements, const std::string& what) {
    const auto& traits = kvfuse::model::type_traits(type);
    const int bits = kvfuse::model::block32_code_bits(type);
    ASSERT_NE(bits, 0) << what;
    std::vector<float> want(elements), scales(elements / 32), offsets(elements / 32);
    std::vector<std::uint8_t> codes(elements);
    traits.dequantize_row(blocks, want.data(), elements);
    kvfuse::model::block32_codes(type, blocks, elements, codes.data(), scales.data(), offsets.data());
    for (std::size_t k = 0; k < elements; ++k) {
        ASSERT_LT(codes[k], 1u << bits) << what << " value " << k;
        const float got = scales[k / 32] * static_cast<float>(codes[k]) - offsets[k / 32];
        ASSERT_EQ(got, want[k]) << what << " value " << k;  // equal values (0 and -0 alike: d (q - 8) at q = 8)
    }
    if (type != GgmlType::q4_k) return;
    // Q4_K's two-level form: the same codes, and super * sub (one f32 product, as the kernels
    // compute it) the same scales and offsets bit for bit, so the same dequantized values.
    std::vector<std::uint8_t> codes2(elements), sub_scales(elements / 32), sub_offsets(elements / 32);
    std::vector<float> super_scales(elements / 256), super_offsets(elements / 256);
    kvfuse::model::q4_k_two_level_codes(blocks, elements, codes2.data(), sub_scales.data(), sub_offsets.data(),
                                        super_scales.data(), super_offsets.data());
    ASSERT_EQ(codes2, codes) << what;
    for (std::size_t b = 0; b < elements / 32; ++b) {
        ASSERT_LT(sub_scales[b], 64u) << what;
        ASSERT_LT(sub_offsets[b], 64u) << what;
        const float scale = super_scales[b / 8] * static_cast<float>(sub_scales[b]);
        const float offset = super_offsets[b / 8] * static_cast<float>(sub_offsets[b]);
        ASSERT_EQ(std::memcmp(&scale, &scales[b], sizeof scale), 0) << what << " block " << b;
        ASSERT_EQ(std::memcmp(&offset, &offsets[b], sizeof offset), 0) << what << " block " << b;
        for (std::size_t k = 32 * b; k < 32 * b + 32; ++k)
            ASSERT_EQ(scale * static_cast<float>(codes2[k]) - offset, want[k]) << what << " value " << k;
    }
}

// Row `blocks` of Q6_K through q6_k_codes: super * sub (one f32 product, as kvfuse_gemm's scalar
// reference forms it) times (u - 32) is the dequantizer's value bit for bit, and packed into
// KVFUSE_DTYPE_Q6_SUPER256 the one-hot products give those values back.
void expect_q6_exact(const std::uint8_t* blocks, std::size_t elements, const std::string& what) {
    const auto& traits = kvfuse::model::type_traits(GgmlType::q6_k);
    std::vector<float> want(elements), supers(elements / 256);
    std::vector<std::uint8_t> codes(elements);
    std::vector<std::int8_t> subs(elements / 16);
    traits.dequantize_row(blocks, want.data(), elements);
    kvfuse::model::q6_k_codes(blocks, elements, codes.data(), subs.data(), supers.data());
    for (std::size_t k = 0; k < elements; ++k) {
        ASSERT_LT(codes[k], 64u) << what << " value " << k;
        const float got = supers[k / 256] * static_cast<float>(subs[k / 16]) * static_cast<float>(int(codes[k]) - 32);
        ASSERT_EQ(std::memcmp(&got, &want[k], sizeof got), 0) << what << " value " << k << ": " << got << " vs " << want[k];
    }
}

TEST(BlockCodes, OurQuantizersRowsAreExact) {
    const GgmlType types[] = {GgmlType::q8_0, GgmlType::q4_0, GgmlType::q4_1, GgmlType::q5_0,
                              GgmlType::q5_1, GgmlType::q4_k, GgmlType::q5_k};
    std::mt19937 rng(7);
    std::normal_distribution<float> value(0.0f, 0.05f);
    for (GgmlType type : types) {
        const auto& traits = kvfuse::model::type_traits(type);
        const std::size_t elements = 1024;
        std::vector<float> x(elements);
        for (float& v : x) v = value(rng);
        x[3] = 0.5f;  // outliers: the extreme codes
        x[700] = -0.4f;
        std::vector<std::uint8_t> blocks(*traits.row_bytes(elements));
        traits.quantize_row(x.data(), blocks.data(), elements);
        expect_exact(type, blocks.data(), elements, traits.name);
    }
    const auto& traits = kvfuse::model::type_traits(GgmlType::q6_k);
    std::vector<float> x(1024);
    for (float& v : x) v = value(rng);
    x[5] = 0.6f;
    x[900] = -0.45f;
    std::vector<std::uint8_t> blocks(*traits.row_bytes(x.size()));
    traits.quantize_row(x.data(), blocks.data(), x.size());
    expect_q6_exact(blocks.data(), x.size(), "q6_K");
}

TEST(BlockCodes, TypesWithoutBlock32Form) {
    // (Q6_K has its own form, q6_k_codes, not the block-32 one.)
    for (GgmlType type : {GgmlType::f32, GgmlType::bf16, GgmlType::q2_k, GgmlType::q3_k, GgmlType::q6_k,
                          GgmlType::iq4_nl, GgmlType::iq4_xs})
        EXPECT_EQ(kvfuse::model::block32_code_bits(type), 0) << kvfuse::model::type_traits(type).name;
}

// Every tensor of a block-32 type in llama.cpp's files, every row.
TEST(BlockCodes, LlamaCppFilesAreExact) {
    int checked = 0;
    for (const char* name : {"stories260K-Q4_0.gguf", "stories260K-Q4_1.gguf", "stories260K-Q5_0.gguf", "stories260K-Q5_1.gguf",
                             "stories260K-Q8_0.gguf", "synth256-Q4_K.gguf", "synth256-Q5_K.gguf", "synth256-Q4_K_M.gguf"}) {
        const auto file = GgufFile::open(kData + "/" + name);
        for (const auto& t : file->tensors()) {
            if (kvfuse::model::block32_code_bits(t.type) == 0) continue;
            const std::size_t row_bytes = static_cast<std::size_t>(t.bytes / t.rows());
            for (std::uint64_t r = 0; r < t.rows(); ++r)
                expect_exact(t.type, t.data + r * row_bytes, static_cast<std::size_t>(t.row_length()),
                             std::string(name) + " " + t.name + " row " + std::to_string(r));
            ++checked;
        }
    }
    EXPECT_GT(checked, 20);
}

// Every Q6_K tensor of llama.cpp's files (the pure Q6_K model, and the Q4_K_M mix's), every row:
// the codes hold the dequantizer's values exactly (test_gguf_quants checks the dequantizer
// against the values llama.cpp's own package gives for these files).
TEST(BlockCodes, LlamaCppQ6KFilesAreExact) {
    int checked = 0;
    for (const char* name : {"synth256-Q6_K.gguf", "synth256-Q4_K_M.gguf"}) {
        const auto file = GgufFile::open(kData + "/" + name);
        for (const auto& t : file->tensors()) {
            if (t.type != GgmlType::q6_k) continue;
            const std::size_t row_bytes = static_cast<std::size_t>(t.bytes / t.rows());
            for (std::uint64_t r = 0; r < t.rows(); ++r)
                expect_q6_exact(t.data + r * row_bytes, static_cast<std::size_t>(t.row_length()),
                                std::string(name) + " " + t.name + " row " + std::to_string(r));
            ++checked;
        }
    }
    EXPECT_EQ(checked, 2);  // the test copies hold blk.0.ffn_down (Q6_K in the mix) and the pure file's two
}

// A Q4_0 model holds its matrices packed from the codes: 6 bits a weight for 4-bit codes.
TEST(BlockCodes, ModelPacksItsMatrices) {
    const kvfuse::model::LlamaModel model(GgufFile::open(kData + "/stories260K-Q4_0.gguf"));
    EXPECT_GT(model.resident_weight_bytes(), 0u);
}

}  // namespace
