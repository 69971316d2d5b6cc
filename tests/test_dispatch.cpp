// Dispatch: ISA listing, forcing, the active ISA, and clean refusal of what cannot run.
#include <gtest/gtest.h>

#include "kvfuse/kvfuse.hpp"

namespace {

TEST(Dispatch, ScalarIsAlwaysCompiledAndSupported) {
    EXPECT_TRUE(kvfuse::isa_compiled(kvfuse::Isa::scalar));
    EXPECT_TRUE(kvfuse::isa_supported(kvfuse::Isa::scalar));
}

TEST(Dispatch, SupportedIsasAreCompiled) {
    for (kvfuse::Isa isa : kvfuse::supported_isas()) EXPECT_TRUE(kvfuse::isa_compiled(isa));
}

TEST(Dispatch, CompiledIsasMatchTheArchitecture) {
#if defined(__x86_64__)
    EXPECT_TRUE(kvfuse::isa_compiled(kvfuse::Isa::avx2));
    EXPECT_TRUE(kvfuse::isa_compiled(kvfuse::Isa::avx512));
    EXPECT_FALSE(kvfuse::isa_compiled(kvfuse::Isa::neon));
#elif defined(__aarch64__)
    EXPECT_TRUE(kvfuse::isa_compiled(kvfuse::Isa::neon));
    EXPECT_FALSE(kvfuse::isa_compiled(kvfuse::Isa::avx2));
#endif
}

TEST(Dispatch, SupportMatchesCpuFeatures) {
    const kvfuse::CpuFeatures f = kvfuse::cpu_features();
    EXPECT_EQ(kvfuse::isa_supported(kvfuse::Isa::avx2), f.avx2 && f.fma && f.f16c);
    EXPECT_EQ(kvfuse::isa_supported(kvfuse::Isa::avx512),
              f.avx2 && f.fma && f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl);
    if (f.avx512f) {
        EXPECT_TRUE(f.os_saves_avx512);
    }
}

TEST(Dispatch, ForcingEverySupportedIsaMakesItActive) {
    for (kvfuse::Isa isa : kvfuse::supported_isas()) {
        kvfuse::ScopedIsa scoped(isa);
        ASSERT_TRUE(scoped.status().ok()) << scoped.status().message();
        kvfuse::Isa active;
        ASSERT_TRUE(kvfuse::active_isa(active).ok());
        EXPECT_EQ(active, isa);
    }
}

TEST(Dispatch, DefaultIsTheBestSupportedIsa) {
    kvfuse::reset_isa();
    kvfuse::Isa active;
    ASSERT_TRUE(kvfuse::active_isa(active).ok());
    const auto supported = kvfuse::supported_isas();
    kvfuse::Isa best = kvfuse::Isa::scalar;
    for (kvfuse::Isa isa : {kvfuse::Isa::neon, kvfuse::Isa::avx2, kvfuse::Isa::avx512})
        for (kvfuse::Isa s : supported)
            if (s == isa) best = isa;
    EXPECT_EQ(active, best);
}

TEST(Dispatch, ForcingAnIsaThatCannotRunFails) {
    for (kvfuse::Isa isa : kvfuse::all_isas()) {
        if (kvfuse::isa_supported(isa)) continue;
        const kvfuse::Status status = kvfuse::force_isa(isa);
        EXPECT_EQ(status.code(), kvfuse::StatusCode::unsupported_isa);
        EXPECT_NE(status.message().find(kvfuse::isa_name(isa)), std::string::npos);
    }
    EXPECT_EQ(kvfuse_force_isa(static_cast<kvfuse_isa>(17)), KVFUSE_ERROR_UNKNOWN_ISA);
}

TEST(Dispatch, NamesRoundTripCaseInsensitively) {
    for (kvfuse::Isa isa : kvfuse::all_isas()) {
        kvfuse::Isa parsed;
        ASSERT_TRUE(kvfuse::isa_from_name(kvfuse::isa_name(isa), parsed).ok());
        EXPECT_EQ(parsed, isa);
    }
    kvfuse::Isa parsed;
    EXPECT_TRUE(kvfuse::isa_from_name("AVX512", parsed).ok());
    EXPECT_EQ(parsed, kvfuse::Isa::avx512);
    const kvfuse::Status bad = kvfuse::isa_from_name("sse9", parsed);
    EXPECT_EQ(bad.code(), kvfuse::StatusCode::unknown_isa);
    EXPECT_NE(bad.message().find("sse9"), std::string::npos);
}

TEST(Version, HeaderMatchesLibrary) {
    EXPECT_EQ(kvfuse_version_number(), KVFUSE_VERSION_NUMBER);
    EXPECT_EQ(kvfuse::version(), KVFUSE_VERSION_STRING);
}

TEST(Status, EveryCodeHasAMessage) {
    for (int code = 0; code <= KVFUSE_ERROR_BAD_PROFILE; ++code)
        EXPECT_STRNE(kvfuse_status_message(static_cast<kvfuse_status>(code)), "unknown status");
    EXPECT_STREQ(kvfuse_status_message(static_cast<kvfuse_status>(999)), "unknown status");
}

// The bf16 converters: exact on representable values, round to nearest even, and a count no
// buffer can have refused (found by fuzz_c_api: count * 4 past SIZE_MAX read past the buffers).
TEST(Bf16Conversion, RoundsAndRefusesImpossibleCounts) {
    const float src[3] = {1.0f, -2.5f, 1.0f + 0x1.8p-7f};  // the last is halfway (1.5 ulp): to even
    std::uint16_t bits[3] = {};
    ASSERT_EQ(kvfuse_f32_to_bf16(src, bits, 3), KVFUSE_OK);
    EXPECT_EQ(bits[0], 0x3f80);
    EXPECT_EQ(bits[1], 0xc020);
    EXPECT_EQ(bits[2], 0x3f82);
    float back[3] = {};
    ASSERT_EQ(kvfuse_bf16_to_f32(bits, back, 3), KVFUSE_OK);
    EXPECT_EQ(back[0], 1.0f);
    EXPECT_EQ(back[1], -2.5f);
    const std::size_t impossible = SIZE_MAX / 4 + 1;
    EXPECT_EQ(kvfuse_f32_to_bf16(src, bits, impossible), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_bf16_to_f32(bits, back, impossible), KVFUSE_ERROR_INVALID_ARGUMENT);
}

}  // namespace
