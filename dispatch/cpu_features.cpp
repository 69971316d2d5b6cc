#include "dispatch/cpu_features.h"

#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace kvfuse::detail {

namespace {

#if defined(__x86_64__) || defined(__i386__)

// xgetbv by its encoding, so this file needs no -mxsave (it is compiled for plain x86-64).
unsigned long long read_xcr0() {
    unsigned eax = 0, edx = 0;
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
    return (static_cast<unsigned long long>(edx) << 32) | eax;
}

void detect(kvfuse_cpu_features& f) {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const unsigned max_leaf = __get_cpuid_max(0, nullptr);
    if (max_leaf < 1) return;
    __cpuid_count(1, 0, eax, ebx, ecx, edx);
    const bool osxsave = (ecx >> 27) & 1;
    const bool avx = (ecx >> 28) & 1;
    f.fma = (ecx >> 12) & 1;
    f.f16c = (ecx >> 29) & 1;
    if (osxsave) {
        const unsigned long long xcr0 = read_xcr0();
        // XMM and YMM state; then opmask, upper ZMM0-15 and ZMM16-31.
        f.os_saves_avx = (xcr0 & 0x6) == 0x6;
        f.os_saves_avx512 = f.os_saves_avx && (xcr0 & 0xe0) == 0xe0;
    }
    if (max_leaf >= 7) {
        __cpuid_count(7, 0, eax, ebx, ecx, edx);
        const unsigned max_subleaf = eax;
        f.avx2 = avx && ((ebx >> 5) & 1);
        f.avx512f = (ebx >> 16) & 1;
        f.avx512dq = (ebx >> 17) & 1;
        f.avx512bw = (ebx >> 30) & 1;
        f.avx512vl = (ebx >> 31) & 1;
        f.avx512_vnni = (ecx >> 11) & 1;
        f.avx512_vbmi2 = (ecx >> 6) & 1;
        if (max_subleaf >= 1) {
            __cpuid_count(7, 1, eax, ebx, ecx, edx);
            f.avx_vnni = (eax >> 4) & 1;
            f.avx512_bf16 = (eax >> 5) & 1;
        }
    }
    // Features whose registers the OS does not save are unusable: report them as absent.
    if (!f.os_saves_avx) f.avx2 = f.fma = f.f16c = f.avx_vnni = 0;
    if (!f.os_saves_avx512)
        f.avx512f = f.avx512bw = f.avx512dq = f.avx512vl = f.avx512_vnni = f.avx512_bf16 = f.avx512_vbmi2 = 0;

    if (__get_cpuid_max(0x80000000u, nullptr) >= 0x80000004u) {
        unsigned words[12];
        for (unsigned i = 0; i < 3; ++i)
            __cpuid(0x80000002u + i, words[4 * i], words[4 * i + 1], words[4 * i + 2], words[4 * i + 3]);
        char brand[49] = {};
        std::memcpy(brand, words, 48);
        const char* start = brand;
        while (*start == ' ') ++start;
        std::strncpy(f.brand, start, sizeof f.brand - 1);
        for (std::size_t n = std::strlen(f.brand); n > 0 && f.brand[n - 1] == ' '; --n) f.brand[n - 1] = '\0';
    }
}

#elif defined(__aarch64__)

void detect(kvfuse_cpu_features& f) {
    f.neon = 1;  // Advanced SIMD is mandatory in AArch64
#if defined(__linux__)
    const unsigned long hwcap = getauxval(AT_HWCAP);
    f.neon = (hwcap & HWCAP_ASIMD) != 0;
    f.arm_dotprod = (hwcap & HWCAP_ASIMDDP) != 0;
#endif
    std::strncpy(f.brand, "aarch64", sizeof f.brand - 1);
}

#else

void detect(kvfuse_cpu_features&) {}

#endif

}  // namespace

const kvfuse_cpu_features& cpu_features() {
    static const kvfuse_cpu_features features = [] {
        kvfuse_cpu_features f;
        std::memset(&f, 0, sizeof f);
        detect(f);
        return f;
    }();
    return features;
}

bool cpu_runs(kvfuse_isa isa) {
    const kvfuse_cpu_features& f = cpu_features();
    switch (isa) {
        case KVFUSE_ISA_SCALAR:
            return true;
        case KVFUSE_ISA_AVX2:
            return f.avx2 && f.fma && f.f16c;
        case KVFUSE_ISA_AVX512:
            return f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl;
        case KVFUSE_ISA_NEON:
            return f.neon != 0;
        default:
            return false;
    }
    return false;
}

}  // namespace kvfuse::detail
