// Tuning parameters and profiles: validation, every allowed setting gives the reference's
// results on every ISA, and profiles round-trip, are checked against this machine, and are
// rejected (and the tuning left alone) when corrupt, truncated or foreign.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "isa_test_support.h"
#include "scratch_files.h"
#include "reference/attention_reference.h"
#include "reference/score_reference.h"
#include "reference/topk_reference.h"

namespace {

namespace fs = std::filesystem;

bool same(const kvfuse_tuning& a, const kvfuse_tuning& b) {
    return a.attention_key_tile == b.attention_key_tile && a.attention_row_block == b.attention_row_block &&
           a.score_query_rows == b.score_query_rows && a.topk_sample == b.topk_sample &&
           a.rope_parallel_work == b.rope_parallel_work && a.topk_parallel_work == b.topk_parallel_work && a.attention_parallel_work == b.attention_parallel_work &&
           a.score_parallel_work == b.score_parallel_work && a.quantize_parallel_work == b.quantize_parallel_work;
}

// Restores the defaults after each test: the tuning is process-wide.
class Restore {
   public:
    ~Restore() { (void)kvfuse_set_tuning(nullptr); }
};


void write(const fs::path& p, const std::string& text) {
    std::ofstream out(p, std::ios::trunc);
    out << text;
}

// kvfuse_tuning V1 (before quantize_parallel_work): accepted, the field at its default, and
// written back only up to V1's size.
TEST(Tuning, V1StructsStillWork) {
    Restore restore;
    kvfuse_tuning defaults;
    kvfuse_tuning_init(&defaults);
    ASSERT_EQ(kvfuse_default_tuning(&defaults), KVFUSE_OK);
    EXPECT_EQ(defaults.quantize_parallel_work, std::uint64_t{1} << 16);
    kvfuse_tuning v1 = defaults;
    v1.struct_size = KVFUSE_TUNING_SIZE_V1;
    v1.topk_parallel_work = 777;
    v1.quantize_parallel_work = 5;  // past V1: not read
    ASSERT_EQ(kvfuse_set_tuning(&v1), KVFUSE_OK) << kvfuse_last_error();
    kvfuse_tuning now;
    kvfuse_tuning_init(&now);
    ASSERT_EQ(kvfuse_get_tuning(&now), KVFUSE_OK);
    EXPECT_EQ(now.topk_parallel_work, 777u);
    EXPECT_EQ(now.quantize_parallel_work, defaults.quantize_parallel_work);
    now.quantize_parallel_work = 9;
    ASSERT_EQ(kvfuse_set_tuning(&now), KVFUSE_OK);
    kvfuse_tuning read_v1 = defaults;
    read_v1.struct_size = KVFUSE_TUNING_SIZE_V1;
    read_v1.quantize_parallel_work = 123;
    ASSERT_EQ(kvfuse_get_tuning(&read_v1), KVFUSE_OK);
    EXPECT_EQ(read_v1.quantize_parallel_work, 123u) << "written past the caller's struct_size";
    static_assert(KVFUSE_TUNING_SIZE_V1 < KVFUSE_TUNING_SIZE_V2 && KVFUSE_TUNING_SIZE_V2 == sizeof(kvfuse_tuning));
}

TEST(Tuning, SetValidatesEveryField) {
    Restore restore;
    kvfuse_tuning defaults;
    kvfuse_tuning_init(&defaults);
    kvfuse_default_tuning(&defaults);
    ASSERT_EQ(kvfuse_set_tuning(&defaults), KVFUSE_OK);
    auto rejected = [&](auto change) {
        kvfuse_tuning t = defaults;
        change(t);
        const kvfuse_status s = kvfuse_set_tuning(&t);
        kvfuse_tuning now;
        kvfuse_tuning_init(&now);
        kvfuse_get_tuning(&now);
        return s == KVFUSE_ERROR_INVALID_ARGUMENT && same(now, defaults);
    };
    EXPECT_TRUE(rejected([](auto& t) { t.attention_key_tile = 48; }));
    EXPECT_TRUE(rejected([](auto& t) { t.attention_key_tile = 256; }));
    EXPECT_TRUE(rejected([](auto& t) { t.attention_row_block = 0; }));
    EXPECT_TRUE(rejected([](auto& t) { t.attention_row_block = 65; }));
    EXPECT_TRUE(rejected([](auto& t) { t.score_query_rows = 3; }));
    EXPECT_TRUE(rejected([](auto& t) { t.topk_sample = 1000; }));
    EXPECT_TRUE(rejected([](auto& t) { t.topk_sample = 128; }));
    EXPECT_TRUE(rejected([](auto& t) { t.topk_sample = 32768; }));
    kvfuse_tuning t = defaults;
    t.attention_key_tile = 128;
    t.score_query_rows = 6;
    t.topk_sample = 4096;
    ASSERT_EQ(kvfuse_set_tuning(&t), KVFUSE_OK);
    kvfuse_tuning now;
    kvfuse_tuning_init(&now);
    kvfuse_get_tuning(&now);
    EXPECT_TRUE(same(now, t));
    ASSERT_EQ(kvfuse_set_tuning(nullptr), KVFUSE_OK);
    kvfuse_get_tuning(&now);
    EXPECT_TRUE(same(now, defaults));
}

// Every allowed value of every parameter, on every ISA: results as the reference's.
class TunedKernels : public kvfuse::testing::IsaTest {};
KVFUSE_INSTANTIATE_ISA_TESTS(TunedKernels);

TEST_P(TunedKernels, AttentionAtEveryTileAndRowBlock) {
    Restore restore;
    const std::size_t T = 300, n = 37, H = 8, Hkv = 2, D = 64;
    std::mt19937 rng(3);
    std::normal_distribution<float> normal;
    std::vector<float> q(n * H * D), k(T * Hkv * D), v(T * Hkv * D), got(n * H * D), want(n * H * D);
    for (float& x : q) x = normal(rng);
    for (float& x : k) x = normal(rng);
    for (float& x : v) x = normal(rng);
    std::vector<std::int64_t> positions(n);
    std::uniform_int_distribution<std::int64_t> pos(0, T - 1);
    for (auto& p : positions) p = pos(rng);
    kvfuse::AttentionArgs a = kvfuse::contiguous_attention_args(q.data(), n, positions.data(), H, k.data(), v.data(),
                                                                T, Hkv, D, want.data(), 0.125f);
    kvfuse::reference::sparse_attention(a);
    a.out = got.data();
    for (std::uint32_t tile : {0u, 32u, 64u, 128u})
        for (std::uint32_t block : {1u, 5u, 16u, 64u})
            for (std::uint64_t parallel : {std::uint64_t{0}, ~std::uint64_t{0}}) {
                kvfuse_tuning t;
                kvfuse_tuning_init(&t);
                kvfuse_default_tuning(&t);
                t.attention_key_tile = tile;
                t.attention_row_block = block;
                t.attention_parallel_work = parallel;
                ASSERT_EQ(kvfuse_set_tuning(&t), KVFUSE_OK);
                ASSERT_EQ(kvfuse_sparse_attention(&a), KVFUSE_OK);
                for (std::size_t i = 0; i < got.size(); ++i)
                    ASSERT_NEAR(got[i], want[i], 2e-5 * 5) << "tile " << tile << " block " << block << " at " << i;
            }
}

TEST_P(TunedKernels, ScoringAtEveryRowBlock) {
    Restore restore;
    const std::size_t M = 7, C = 200, H = 12, Hkv = 2, D = 40;
    std::mt19937 rng(4);
    std::normal_distribution<float> normal;
    std::vector<float> q(M * H * D), k(C * Hkv * D), got(C - M), want(C - M);
    for (float& x : q) x = normal(rng);
    for (float& x : k) x = normal(rng);
    std::vector<std::int8_t> q8(q.size()), k8(k.size());
    std::vector<float> qs(M * H), ks(C * Hkv), means(Hkv * D);
    ASSERT_EQ(kvfuse_quantize_rows_i8(q.data(), M, H, D, H * D, q8.data(), qs.data()), KVFUSE_OK);
    ASSERT_EQ(kvfuse_quantize_keys_i8(k.data(), C, Hkv, D, Hkv * D, k8.data(), ks.data(), means.data()), KVFUSE_OK);
    for (bool int8 : {false, true}) {
        kvfuse_relevance_args a;
        kvfuse_relevance_args_init(&a);
        a.question_rows = M;
        a.candidates = C;
        a.query_heads = H;
        a.kv_heads = Hkv;
        a.head_dim = D;
        if (int8) {
            a.queries_i8 = q8.data();
            a.query_scales = qs.data();
            a.keys_i8 = k8.data();
            a.key_scales = ks.data();
        } else {
            a.queries_f32 = q.data();
            a.keys_f32 = k.data();
        }
        a.smoothing = 1;
        a.out = want.data();
        kvfuse::reference::a3_relevance(a);
        a.out = got.data();
        for (std::uint32_t rows : {2u, 4u, 6u})
            for (std::uint64_t parallel : {std::uint64_t{0}, ~std::uint64_t{0}}) {
                kvfuse_tuning t;
                kvfuse_tuning_init(&t);
                kvfuse_default_tuning(&t);
                t.score_query_rows = rows;
                t.score_parallel_work = parallel;
                ASSERT_EQ(kvfuse_set_tuning(&t), KVFUSE_OK);
                ASSERT_EQ(kvfuse_a3_relevance(&a), KVFUSE_OK);
                for (std::size_t j = 0; j < got.size(); ++j)
                    ASSERT_NEAR(got[j], want[j], 2e-4 * (1.0 + want[j])) << "rows " << rows << " int8 " << int8 << " j " << j;
            }
    }
}

TEST_P(TunedKernels, TopkAtEverySampleSize) {
    Restore restore;
    const std::size_t n = 70000;
    std::mt19937 rng(5);
    std::normal_distribution<float> normal;
    std::vector<float> x(n);
    for (float& v : x) v = normal(rng);
    for (std::size_t k : {n / 100, n * 15 / 100}) {
        std::vector<std::int64_t> want(k), got(k);
        kvfuse::reference::topk(x.data(), n, k, KVFUSE_TOPK_BY_POSITION, want.data());
        for (std::uint32_t sample = 256; sample <= 16384; sample *= 2) {
            kvfuse_tuning t;
            kvfuse_tuning_init(&t);
            kvfuse_default_tuning(&t);
            t.topk_sample = sample;
            ASSERT_EQ(kvfuse_set_tuning(&t), KVFUSE_OK);
            std::size_t count = 0;
            ASSERT_EQ(kvfuse_topk(x.data(), n, k, KVFUSE_TOPK_BY_POSITION, got.data(), &count), KVFUSE_OK);
            ASSERT_EQ(count, k);
            ASSERT_EQ(got, want) << "sample " << sample << " k " << k;
        }
    }
}

kvfuse_tuning custom() {
    kvfuse_tuning t;
    kvfuse_tuning_init(&t);
    kvfuse_default_tuning(&t);
    t.attention_key_tile = 32;
    t.attention_row_block = 8;
    t.score_query_rows = 6;
    t.topk_sample = 2048;
    t.rope_parallel_work = 12345;
    return t;
}

TEST(Profile, SaveThenLoadRoundTrips) {
    Restore restore;
    const fs::path dir = kvfuse::testing::fresh_scratch_dir("tuning", "roundtrip");
    const fs::path path = dir / "nested" / "profile.json";  // missing directories are created
    const kvfuse_tuning t = custom();
    ASSERT_EQ(kvfuse_save_profile(path.c_str(), &t, R"({"note": "test"})"), KVFUSE_OK) << kvfuse_last_error();
    for (const auto& entry : fs::directory_iterator(path.parent_path()))
        EXPECT_EQ(entry.path().filename(), "profile.json") << "temporary file left behind";
    ASSERT_EQ(kvfuse_load_profile(path.c_str()), KVFUSE_OK) << kvfuse_last_error();
    kvfuse_tuning now;
    kvfuse_tuning_init(&now);
    kvfuse_get_tuning(&now);
    EXPECT_TRUE(same(now, t));
    EXPECT_NE(std::string(kvfuse_profile_status()).find(path.string()), std::string::npos) << kvfuse_profile_status();
    EXPECT_NE(kvfuse::testing::read_whole_file(path).find("\"note\""), std::string::npos);
    EXPECT_EQ(kvfuse_save_profile(path.c_str(), &t, "{not json"), KVFUSE_ERROR_INVALID_ARGUMENT);
    kvfuse_tuning bad = t;
    bad.score_query_rows = 5;
    EXPECT_EQ(kvfuse_save_profile(path.c_str(), &bad, nullptr), KVFUSE_ERROR_INVALID_ARGUMENT);
    fs::remove_all(dir);
}

TEST(Profile, BadProfilesAreRejectedAndChangeNothing) {
    Restore restore;
    const fs::path dir = kvfuse::testing::fresh_scratch_dir("tuning", "bad");
    const fs::path good = dir / "good.json";
    const kvfuse_tuning t = custom();
    ASSERT_EQ(kvfuse_save_profile(good.c_str(), &t, nullptr), KVFUSE_OK);
    const std::string text = kvfuse::testing::read_whole_file(good);
    auto replaced = [&](const std::string& from, const std::string& to) {
        std::string s = text;
        const auto at = s.find(from);
        EXPECT_NE(at, std::string::npos) << from;
        if (at != std::string::npos) s.replace(at, from.size(), to);
        return s;
    };
    kvfuse_tuning before;
    kvfuse_tuning_init(&before);
    kvfuse_get_tuning(&before);
    struct Case {
        std::string name, content, why;
    };
    const std::vector<Case> cases = {
        {"garbage", "\x01\x02 not json", "not valid JSON"},
        {"truncated", text.substr(0, text.size() / 2), "not valid JSON"},
        {"empty", "", "not valid JSON"},
        {"other format", replaced("kvfuse-tuning-profile", "something-else"), "not a kvfuse tuning profile"},
        {"other version", replaced("\"kvfuse_version\": \"" KVFUSE_VERSION_STRING "\"", "\"kvfuse_version\": \"99.0.0\""),
         "made by kvfuse 99.0.0"},
        {"other cpu", replaced("\"cpu\": \"", "\"cpu\": \"Another "), "another machine (cpu"},
        {"other core count", replaced("\"cores\": ", "\"cores\": 1000"), "another machine (cores"},
        {"bad value", replaced("\"score_query_rows\": 6", "\"score_query_rows\": 5"), "score_query_rows"},
        {"wrong type", replaced("\"topk_sample\": 2048", "\"topk_sample\": \"big\""), "wrong type"},
        {"missing field", replaced("\"attention_row_block\": 8,", ""), "missing a field"},
        // Found by fuzz_profile: a float was cast to an integer (undefined behaviour) and a value
        // past 32 bits was truncated (2^32 + 8 read as 8, a valid row block).
        {"float value", replaced("\"topk_sample\": 2048", "\"topk_sample\": 1e30"), "topk_sample has a wrong type"},
        {"value past 32 bits", replaced("\"attention_row_block\": 8", "\"attention_row_block\": 4294967304"),
         "attention_row_block has a wrong type or is out of range"},
        {"negative value", replaced("\"attention_row_block\": 8", "\"attention_row_block\": -8"), "attention_row_block"},
        {"float format version", replaced("\"format_version\": 1", "\"format_version\": 1e30"), "profile format"},
    };
    for (const Case& c : cases) {
        const fs::path p = dir / "bad.json";
        write(p, c.content);
        EXPECT_EQ(kvfuse_load_profile(p.c_str()), KVFUSE_ERROR_BAD_PROFILE) << c.name;
        EXPECT_NE(std::string(kvfuse_last_error()).find(c.why), std::string::npos) << c.name << ": " << kvfuse_last_error();
        kvfuse_tuning now;
        kvfuse_tuning_init(&now);
        kvfuse_get_tuning(&now);
        EXPECT_TRUE(same(now, before)) << c.name;
    }
    EXPECT_EQ(kvfuse_load_profile((dir / "missing.json").c_str()), KVFUSE_ERROR_IO);
    EXPECT_EQ(kvfuse_load_profile(nullptr), KVFUSE_ERROR_NULL_POINTER);
    fs::remove_all(dir);
}

TEST(Profile, DefaultPathIsKeyedByMachine) {
    char path[4096];
    ASSERT_EQ(kvfuse_default_profile_path(path, sizeof path), KVFUSE_OK);
    const std::string p = path;
    EXPECT_NE(p.find("/kvfuse/tuning/"), std::string::npos) << p;
    kvfuse_isa isa{};
    ASSERT_EQ(kvfuse_active_isa(&isa), KVFUSE_OK);
    EXPECT_NE(p.find(std::string("_") + kvfuse_isa_name(isa) + "_"), std::string::npos) << p;
    char tiny[4];
    EXPECT_EQ(kvfuse_default_profile_path(tiny, sizeof tiny), KVFUSE_ERROR_INVALID_ARGUMENT);
}

}  // namespace
