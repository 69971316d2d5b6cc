// Dispatch: ISA listing, forcing, the active ISA, clean refusal of what cannot run, and the
// checks every C entry point shares (sizes, exceptions, profiles that are not files).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <ios>
#include <new>
#include <set>
#include <sstream>
#include <string>

#include "dispatch/api_checks.h"
#include "dispatch/kernel_builds.h"
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

// The CPU flags the Linux kernel reports (/proc/cpuinfo "flags" on x86, "Features" on
// AArch64): an account of the CPU independent of the library's own CPUID/XCR0 reading (the
// kernel also drops a flag whose register state the OS does not save). Empty elsewhere.
// The kernel's feature list of this architecture ("flags" on x86, "Features" on AArch64). Under
// qemu-user /proc/cpuinfo is the host's: another architecture's list reads as none (the tests
// skip), and the no-AVX lane filters these tests out (tools/run-tests.sh).
std::set<std::string> kernel_cpu_flags() {
#if defined(__aarch64__)
    const char* key = "Features";
#else
    const char* key = "flags";
#endif
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind(key, 0) != 0) continue;
        std::istringstream words(line.substr(line.find(':') + 1));
        std::set<std::string> flags;
        for (std::string w; words >> w;) flags.insert(w);
        return flags;
    }
    return {};
}

TEST(Dispatch, CpuFeaturesAgreeWithTheOperatingSystem) {
    const std::set<std::string> flags = kernel_cpu_flags();
    if (flags.empty()) GTEST_SKIP() << "no /proc/cpuinfo flags";
    const kvfuse::CpuFeatures f = kvfuse::cpu_features();
    auto has = [&](const char* name) { return flags.count(name) != 0; };
#if defined(__x86_64__)
    EXPECT_EQ(f.avx2 != 0, has("avx2"));
    EXPECT_EQ(f.fma != 0, has("fma"));
    EXPECT_EQ(f.f16c != 0, has("f16c"));
    EXPECT_EQ(f.avx512f != 0, has("avx512f"));
    EXPECT_EQ(f.avx512bw != 0, has("avx512bw"));
    EXPECT_EQ(f.avx512dq != 0, has("avx512dq"));
    EXPECT_EQ(f.avx512vl != 0, has("avx512vl"));
    EXPECT_EQ(f.avx512_vnni != 0, has("avx512_vnni"));
    EXPECT_EQ(f.avx_vnni != 0, has("avx_vnni"));
    EXPECT_EQ(f.avx512_bf16 != 0, has("avx512_bf16"));
    EXPECT_EQ(f.avx512_vbmi2 != 0, has("avx512_vbmi2"));
#elif defined(__aarch64__)
    EXPECT_EQ(f.neon != 0, has("asimd"));
    EXPECT_EQ(f.arm_dotprod != 0, has("asimddp"));
#endif
}

// With nothing forced the library runs the widest ISA the kernel says this CPU has (kvfuse.h
// defines each ISA by its extensions), and the variant build where the CPU has its instruction.
TEST(Dispatch, DefaultIsTheWidestIsaTheOperatingSystemReports) {
    const std::set<std::string> flags = kernel_cpu_flags();
    if (flags.empty()) GTEST_SKIP() << "no /proc/cpuinfo flags";
    auto has = [&](std::initializer_list<const char*> names) {
        for (const char* n : names)
            if (flags.count(n) == 0) return false;
        return true;
    };
    kvfuse::Isa expected = kvfuse::Isa::scalar;
    std::string expected_build = "scalar";
#if defined(__x86_64__)
    if (has({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl"})) {
        expected = kvfuse::Isa::avx512;
        // The variants registered over avx512, in registration order, joined by '+'.
        std::string variants;
        for (const char* v : {"avx512_vnni", "avx512_bf16", "avx512_vbmi2"})
            if (has({v})) variants += (variants.empty() ? "" : "+") + std::string(v);
        expected_build = variants.empty() ? "avx512" : variants;
    } else if (has({"avx2", "fma", "f16c"})) {
        expected = kvfuse::Isa::avx2;
        expected_build = has({"avx_vnni"}) ? "avx2_vnni" : "avx2";
    }
#elif defined(__aarch64__)
    if (has({"asimd"})) {
        expected = kvfuse::Isa::neon;
        expected_build = has({"asimddp"}) ? "neon_dotprod" : "neon";
    }
#endif
    kvfuse::reset_isa();
    kvfuse::Isa active;
    ASSERT_TRUE(kvfuse::active_isa(active).ok());
    EXPECT_EQ(active, expected);
    EXPECT_STREQ(kvfuse::detail::active_kernel_build(), expected_build.c_str());
}

// Every build the test hook lists can be forced and is then the one running; the plain build
// of an ISA with a variant is listed too (the reason the hook exists).
TEST(Dispatch, EveryKernelBuildCanBeForced) {
    const auto builds = kvfuse::detail::runnable_kernel_builds();
    std::set<std::string> names;
    for (const auto& b : builds) {
        names.insert(b.name);
        ASSERT_EQ(kvfuse::detail::force_kernel_build(b.name), KVFUSE_OK) << kvfuse_last_error();
        EXPECT_STREQ(kvfuse::detail::active_kernel_build(), b.name);
        kvfuse_isa active;
        ASSERT_EQ(kvfuse_active_isa(&active), KVFUSE_OK);
        EXPECT_EQ(active, b.isa);
    }
    kvfuse::reset_isa();
    for (const auto& b : builds) {
        if (b.variant) {
            EXPECT_EQ(names.count(kvfuse_isa_name(b.isa)), 1u) << b.name << " without its plain build";
        }
    }
    EXPECT_EQ(kvfuse::detail::force_kernel_build("sse9"), KVFUSE_ERROR_UNSUPPORTED_ISA);
    EXPECT_NE(std::string(kvfuse_last_error()).find("sse9"), std::string::npos);
}

// What the C entry points share (dispatch/api_checks.h).
TEST(ApiChecks, CheckedSizeCatchesEveryWrap) {
    using kvfuse::detail::CheckedSize;
    const std::size_t max = SIZE_MAX;
    EXPECT_TRUE((CheckedSize(3) * 5 + 1).fits());
    EXPECT_EQ((CheckedSize(3) * 5 + 1).value(), 16u);
    EXPECT_FALSE((CheckedSize((std::size_t{1} << 61) + 1) * 8).fits());  // wraps to 8
    EXPECT_FALSE((CheckedSize(max) + 1).fits());                         // wraps to 0
    EXPECT_FALSE((CheckedSize(max) * 2 * 0).fits());                     // a wrap is not undone by * 0
    EXPECT_FALSE(CheckedSize(std::size_t{1} << 63).fits());              // no wrap, but past PTRDIFF_MAX
    EXPECT_TRUE(kvfuse::detail::span_bytes(0, max, max, 8).fits());      // no rows: nothing spanned
    EXPECT_EQ(kvfuse::detail::span_bytes(3, 10, 4, 4).value(), (2u * 10 + 4) * 4);
    EXPECT_FALSE(kvfuse::detail::span_bytes(2, std::size_t{1} << 62, 4, 4).fits());
}

TEST(ApiChecks, NoExceptionCrossesTheCBoundary) {
    using kvfuse::detail::guarded;
    EXPECT_EQ(guarded("f", []() -> kvfuse_status { throw std::bad_alloc(); }), KVFUSE_ERROR_OUT_OF_MEMORY);
    EXPECT_NE(std::string(kvfuse_last_error()).find("f: out of memory"), std::string::npos);
    EXPECT_EQ(guarded("g", []() -> kvfuse_status { throw std::ios_base::failure("is a directory"); }), KVFUSE_ERROR_INTERNAL);
    EXPECT_NE(std::string(kvfuse_last_error()).find("is a directory"), std::string::npos);
    EXPECT_EQ(guarded("h", []() -> kvfuse_status { throw 42; }), KVFUSE_ERROR_INTERNAL);
    EXPECT_NE(std::string(kvfuse_last_error()).find("h: "), std::string::npos);
    EXPECT_EQ(guarded("i", []() { return KVFUSE_ERROR_IO; }), KVFUSE_ERROR_IO);
}

// A profile the library cannot read as a file is an I/O error, whatever it is instead.
TEST(ApiChecks, ProfileThatIsNotARegularFileIsRefused) {
    const kvfuse_status status = kvfuse_load_profile("/");
    EXPECT_EQ(status, KVFUSE_ERROR_IO);
    EXPECT_NE(std::string(kvfuse_last_error()).find("not a regular file"), std::string::npos);
    EXPECT_EQ(kvfuse_load_profile("/dev/null"), KVFUSE_ERROR_IO);
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
    int negative = -1;  // as a C caller passes it, without a C++ conversion to the enum
    kvfuse_status from_c;
    std::memcpy(&from_c, &negative, sizeof from_c);
    EXPECT_STREQ(kvfuse_status_message(from_c), "unknown status");
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
