// The type table and every quantized format: dequantization against llama.cpp's values for files
// its own quantizer wrote (tests/data/quants, see its README), our quantizers' round trip, and
// files whose quantized tensors are damaged.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "gguf_writer.h"
#include "model/gguf.h"
#include "model/gguf_types.h"
#include "model/llama_model.h"

namespace {

using kvfuse::model::find_type_traits;
using kvfuse::model::GgmlType;
using kvfuse::model::GgufError;
using kvfuse::model::GgufFile;
using kvfuse::model::TypeTraits;
using kvfuse::testing::GgufWriter;

const std::string kData = KVFUSE_QUANT_FIXTURES;

nlohmann::json expected_values() {
    std::ifstream in(kData + "/expected.json");
    return nlohmann::json::parse(in);
}

// Every tensor of every fixture: type as llama.cpp named it, shape, first rows value by value,
// every row's sum and the totals.
TEST(GgufQuants, DequantizationMatchesLlamaCpp) {
    const nlohmann::json expected = expected_values();
    std::map<std::string, int> tensors_per_type;
    for (const auto& [file_name, tensors] : expected.items()) {
        SCOPED_TRACE(file_name);
        const auto file = GgufFile::open(kData + "/" + file_name);
        for (const auto& [name, e] : tensors.items()) {
            SCOPED_TRACE(name);
            const auto& t = file->require_tensor(name);
            ASSERT_EQ(t.type_name(), e["type"].get<std::string>());
            ASSERT_EQ(t.dims, e["shape_ggml"].get<std::vector<std::uint64_t>>());
            ++tensors_per_type[t.type_name()];
            const std::vector<float> values = file->read_f32(t);
            const std::size_t row = t.row_length();
            if (e.contains("first_rows")) {
                const auto rows = e["first_rows"].get<std::vector<std::vector<double>>>();
                for (std::size_t r = 0; r < rows.size(); ++r)
                    for (std::size_t i = 0; i < row; ++i)
                        ASSERT_NEAR(values[r * row + i], rows[r][i], 1e-6 * std::max(1.0, std::fabs(rows[r][i])))
                            << "row " << r << " value " << i;
            }
            const auto sums = e["row_sums"].get<std::vector<double>>();
            ASSERT_EQ(sums.size(), t.rows());
            double total = 0.0, squares = 0.0;
            for (std::size_t r = 0; r < sums.size(); ++r) {
                double sum = 0.0, magnitude = 0.0;
                for (std::size_t i = 0; i < row; ++i) {
                    sum += values[r * row + i];
                    magnitude += std::fabs(values[r * row + i]);
                    squares += static_cast<double>(values[r * row + i]) * values[r * row + i];
                }
                total += sum;
                ASSERT_NEAR(sum, sums[r], 1e-5 * std::max(1.0, magnitude)) << "row " << r;
            }
            if (e.contains("sum")) {
                EXPECT_NEAR(total, e["sum"].get<double>(), 1e-5 * std::max(1.0, std::fabs(e["sum"].get<double>())));
                EXPECT_NEAR(squares, e["sum_squares"].get<double>(), 1e-5 * e["sum_squares"].get<double>());
            }
            // Row by row through the tile reader gives the same values.
            std::vector<float> one(row);
            const std::uint64_t last = t.rows() - 1;
            file->dequantize_rows(t, last, 1, one.data());
            for (std::size_t i = 0; i < row; ++i) ASSERT_EQ(one[i], values[last * row + i]);
        }
    }
    // Every type the issue names is covered by a llama.cpp file (F32/F16/BF16 have their own tests).
    for (const char* type : {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"})
        EXPECT_GT(tensors_per_type[type], 0) << type;
}

// The table: one entry per id, names found back, the readable set is exactly the list.
TEST(GgufQuants, TypeTableIsConsistent) {
    std::set<std::uint32_t> ids;
    std::vector<std::string> readable;
    for (const TypeTraits& t : kvfuse::model::all_type_traits()) {
        EXPECT_TRUE(ids.insert(static_cast<std::uint32_t>(t.type)).second) << t.name;
        EXPECT_EQ(find_type_traits(static_cast<std::uint32_t>(t.type)), &t);
        EXPECT_EQ(find_type_traits(std::string_view(t.name)), &t);
        EXPECT_EQ(t.dequantize_row == nullptr, t.quantize_row == nullptr) << t.name;
        EXPECT_GT(t.block_bytes, 0u);
        if (t.supported()) readable.push_back(t.name);
    }
    EXPECT_EQ(readable, (std::vector<std::string>{"F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
                                                  "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "BF16"}));
    EXPECT_EQ(find_type_traits(std::string_view("q4_k")), &kvfuse::model::type_traits(GgmlType::q4_k));
    EXPECT_EQ(find_type_traits(std::uint32_t{77}), nullptr);
    EXPECT_EQ(kvfuse::model::type_name(77), "type 77 (unknown)");
    EXPECT_EQ(kvfuse::model::type_name(12), "Q4_K");
}

// Gaussian rows with a few outliers, as weight rows look.
std::vector<float> weight_like(std::size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    std::vector<float> x(n);
    for (auto& v : x) v = normal(rng);
    for (std::size_t i = 0; i < n; i += 97) x[i] *= 6.0f;
    return x;
}

double relative_rms_error(const std::vector<float>& a, const std::vector<float>& b) {
    double error = 0.0, energy = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        error += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
        energy += static_cast<double>(a[i]) * a[i];
    }
    return std::sqrt(error / energy);
}

// quantize -> dequantize of every readable type stays within its bits' worth of error (bounds a
// little above what docs/MODEL.md measures), and re-quantizing the dequantized values changes
// little more: the quantizer writes what the dequantizer reads.
TEST(GgufQuants, QuantizeRoundTrip) {
    const std::map<std::string, double> bound = {
        {"F32", 0.0},   {"F16", 1e-3},  {"BF16", 5e-3}, {"Q8_0", 0.01},  {"Q6_K", 0.027},  {"Q5_0", 0.065}, {"Q5_1", 0.05},
        {"Q5_K", 0.05}, {"Q4_0", 0.13}, {"Q4_1", 0.11}, {"Q4_K", 0.1},   {"IQ4_NL", 0.11}, {"IQ4_XS", 0.11}, {"Q3_K", 0.2},
        {"Q2_K", 0.4}};
    const std::vector<float> x = weight_like(4096, 3);
    for (const TypeTraits& t : kvfuse::model::all_type_traits()) {
        if (!t.supported()) continue;
        SCOPED_TRACE(t.name);
        std::vector<std::uint8_t> blocks(*t.row_bytes(x.size()));
        t.quantize_row(x.data(), blocks.data(), x.size());
        std::vector<float> y(x.size());
        t.dequantize_row(blocks.data(), y.data(), y.size());
        const double error = relative_rms_error(x, y);
        EXPECT_LE(error, bound.at(t.name));
        // The figures of docs/MODEL.md's round-trip table.
        std::printf("round trip %-7s %6.2f bits/value  relative RMS error %.4f\n", t.name,
                    8.0 * t.block_bytes / t.block_elements, error);
        std::vector<std::uint8_t> again(blocks.size());
        t.quantize_row(y.data(), again.data(), y.size());
        std::vector<float> z(y.size());
        t.dequantize_row(again.data(), z.data(), z.size());
        EXPECT_LE(relative_rms_error(y, z), bound.at(t.name) * 0.5 + 1e-6);
        // All-zero and constant rows do not produce NaN.
        std::vector<float> flat(x.size(), 0.0f);
        t.quantize_row(flat.data(), blocks.data(), flat.size());
        t.dequantize_row(blocks.data(), y.data(), y.size());
        for (float v : y) ASSERT_EQ(v, 0.0f);
    }
}

// A file whose only tensor is quantized: well-formed parses, and each damage is named.
GgufWriter one_tensor(GgmlType type, std::uint64_t row, std::uint64_t rows, std::int64_t offset = -1) {
    const TypeTraits& t = kvfuse::model::type_traits(type);
    GgufWriter w;
    std::vector<float> x = weight_like(row * rows, 5);
    std::vector<std::uint8_t> blocks(*t.row_bytes(row) * rows);
    t.quantize_row(x.data(), blocks.data(), x.size());
    w.add_tensor("w", {row, rows}, static_cast<std::uint32_t>(type), blocks, offset);
    return w;
}

std::string error_of(const std::vector<std::uint8_t>& bytes) {
    try {
        const auto file = GgufFile::parse(bytes, "q.gguf");
        for (const auto& t : file->tensors()) (void)file->read_f32(t);
    } catch (const GgufError& e) {
        return e.what();
    }
    return "no error";
}

TEST(GgufQuants, CorruptedQuantizedFilesAreRefused) {
    for (GgmlType type : {GgmlType::q4_0, GgmlType::q2_k, GgmlType::q6_k, GgmlType::iq4_xs}) {
        const std::string name = kvfuse::model::type_traits(type).name;
        SCOPED_TRACE(name);
        const auto good = one_tensor(type, 512, 4).bytes();
        EXPECT_EQ(error_of(good), "no error");
        // Truncated anywhere: in the header, in the table, in the data.
        for (std::size_t cut : {std::size_t{30}, std::size_t{60}, good.size() / 2, good.size() - 64}) {
            const std::vector<std::uint8_t> truncated(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(cut));
            EXPECT_NE(error_of(truncated).find("truncated"), std::string::npos) << cut << ": " << error_of(truncated);
        }
        // An offset pointing past the data.
        auto moved = one_tensor(type, 512, 4, 1 << 20).bytes();
        moved.resize(moved.size() - 4096);  // the offset now points past the end
        EXPECT_NE(error_of(moved).find("past the end"), std::string::npos) << error_of(moved);
        // Rows that are not whole blocks (the K formats need multiples of 256).
        GgufWriter partial;
        partial.add_tensor("w", {48, 1}, static_cast<std::uint32_t>(type), std::vector<std::uint8_t>(1024));
        EXPECT_NE(error_of(partial.bytes()).find("not whole blocks"), std::string::npos) << error_of(partial.bytes());
        // Huge dimensions: refused before anything is allocated.
        GgufWriter huge;
        huge.add_tensor("w", {std::uint64_t{1} << 38, 1u << 20}, static_cast<std::uint32_t>(type), std::vector<std::uint8_t>(64));
        EXPECT_NE(error_of(huge.bytes()).find("implausible"), std::string::npos) << error_of(huge.bytes());
        GgufWriter big;
        big.add_tensor("w", {std::uint64_t{1} << 30, 256}, static_cast<std::uint32_t>(type), std::vector<std::uint8_t>(64));
        EXPECT_NE(error_of(big.bytes()).find("past the end"), std::string::npos) << error_of(big.bytes());
    }
}

// Types kvfuse does not read: fine in a tensor nobody reads, a clear error in one that is read.
TEST(GgufQuants, UnsupportedTypeIsAnErrorOnlyWhereUsed) {
    GgufWriter w;
    w.add_tensor("unused_iq2", {256, 2}, static_cast<std::uint32_t>(GgmlType::iq2_xxs), std::vector<std::uint8_t>(2 * 66));
    w.add_tensor("unknown_id", {256, 2}, 99, std::vector<std::uint8_t>(16));
    const auto bytes = w.bytes();
    const auto file = GgufFile::parse(bytes, "mixed.gguf");
    const auto& iq2 = file->require_tensor("unused_iq2");
    EXPECT_FALSE(iq2.readable());
    EXPECT_EQ(iq2.bytes, 2u * 66u);  // a known type's extent is still checked
    try {
        (void)file->read_f32(iq2);
        ADD_FAILURE() << "no error";
    } catch (const GgufError& e) {
        EXPECT_NE(std::string(e.what()).find("tensor unused_iq2 has type IQ2_XXS, which kvfuse does not read"), std::string::npos)
            << e.what();
    }
    try {
        (void)file->read_f32(file->require_tensor("unknown_id"));
        ADD_FAILURE() << "no error";
    } catch (const GgufError& e) {
        EXPECT_NE(std::string(e.what()).find("tensor unknown_id has type type 99 (unknown)"), std::string::npos) << e.what();
    }
    // A model whose used tensor has such a type names that tensor.
    GgufWriter too_short;
    too_short.add_tensor("w", {256, 2}, static_cast<std::uint32_t>(GgmlType::iq2_xxs), std::vector<std::uint8_t>(10));
    EXPECT_NE(error_of(too_short.bytes()).find("past the end"), std::string::npos);
}

// Half and bfloat16 conversions round to nearest even, through subnormals and overflow.
TEST(GgufQuants, HalfConversionsRound) {
    using kvfuse::model::float_to_half;
    using kvfuse::model::half_to_float;
    for (std::uint32_t h = 0; h < 0x10000; ++h) {
        const float f = half_to_float(static_cast<std::uint16_t>(h));
        if (std::isnan(f)) continue;
        ASSERT_EQ(float_to_half(f), h) << h;
    }
    EXPECT_EQ(float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie to even: down
    EXPECT_EQ(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie to even: up
    EXPECT_EQ(float_to_half(65520.0f), 0x7c00);                      // rounds past the largest half
    EXPECT_EQ(float_to_half(std::ldexp(1.0f, -25)), 0x0000);          // half the smallest subnormal: even
    EXPECT_EQ(float_to_half(std::ldexp(3.0f, -26)), 0x0001);
    EXPECT_EQ(kvfuse::model::float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
    EXPECT_EQ(kvfuse::model::float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
}

}  // namespace

namespace {

// A quantized matrix multiplied from the mapped file, a tile of rows at a time, equals the
// product with its dequantized values (reference in double), with several tiles and a partial
// last one, with beta 0 and 1.
TEST(GgufQuants, TiledProductsMatchTheDequantizedMatrix) {
    const kvfuse::model::LlamaModel model(GgufFile::open(kData + "/stories260K-Q4_0.gguf"));
    const std::uint64_t in = 2048, out = 1100;  // 4 MiB tiles of f32: 512 rows, three tiles
    GgufWriter w;
    const TypeTraits& q4k = kvfuse::model::type_traits(GgmlType::q4_k);
    const std::vector<float> values = weight_like(in * out, 11);
    std::vector<std::uint8_t> blocks(*q4k.row_bytes(in) * out);
    q4k.quantize_row(values.data(), blocks.data(), values.size());
    w.add_tensor("w", {in, out}, static_cast<std::uint32_t>(GgmlType::q4_k), blocks);
    const auto bytes = w.bytes();
    const auto file = GgufFile::parse(bytes, "tiles.gguf");
    kvfuse::model::LlamaModel::Dense dense;
    dense.tensor = &file->require_tensor("w");
    dense.in = in;
    dense.out = out;
    const std::vector<float> weights = file->read_f32(*dense.tensor);
    const std::size_t n = 5;
    const std::vector<float> x = weight_like(n * in, 12);
    std::vector<float> y(n * out, 0.0f), y_accumulated(n * out, 1.0f);
    kvfuse::Context context;  // the calling thread's default context
    model.linear(context, x.data(), n, dense, y.data());
    model.linear(context, x.data(), n, dense, y_accumulated.data(), 1.0f);
    for (std::size_t r = 0; r < n; ++r)
        for (std::size_t o = 0; o < out; ++o) {
            double expected = 0.0, magnitude = 0.0;
            for (std::size_t i = 0; i < in; ++i) {
                expected += static_cast<double>(x[r * in + i]) * weights[o * in + i];
                magnitude += std::fabs(static_cast<double>(x[r * in + i]) * weights[o * in + i]);
            }
            ASSERT_NEAR(y[r * out + o], expected, 1e-5 * magnitude + 1e-7) << r << ", " << o;
            ASSERT_NEAR(y_accumulated[r * out + o], expected + 1.0, 1e-5 * magnitude + 1e-6) << r << ", " << o;
        }
}

}  // namespace
