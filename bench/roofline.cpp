#include "roofline.h"

#include <omp.h>

#include <chrono>

#include "kvfuse/kvfuse.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace kvfuse::bench {

namespace {

volatile float benchmark_sink = 0.0f;

#if defined(__x86_64__)
// 12 independent chains hide the FMA latency (4 cycles) on two pipes; `iterations` rounds.
__attribute__((target("avx2,fma"))) float fma_avx2(long iterations) {
    __m256 acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i) * 1e-3f);
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (long it = 0; it < iterations; ++it)
        for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    __m256 sum = acc[0];
    for (int i = 1; i < 12; ++i) sum = _mm256_add_ps(sum, acc[i]);
    float out[8];
    _mm256_storeu_ps(out, sum);
    return out[0];
}

__attribute__((target("avx512f"))) float fma_avx512(long iterations) {
    __m512 acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i) * 1e-3f);
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (long it = 0; it < iterations; ++it)
        for (int i = 0; i < 12; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    __m512 sum = acc[0];
    for (int i = 1; i < 12; ++i) sum = _mm512_add_ps(sum, acc[i]);
    float out[16];
    _mm512_storeu_ps(out, sum);
    return out[0];
}

// int8 chains: 12 independent accumulators, each step 4 multiply-adds per 32-bit lane (VNNI in
// one instruction; else maddubs + maddwd + add, the accumulator feeding maddubs so that nothing
// is loop-invariant).
__attribute__((target("avx2"))) int maddubs_avx2(long iterations) {
    __m256i acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_epi32(i);
    const __m256i a = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    for (long it = 0; it < iterations; ++it)
        for (int i = 0; i < 12; ++i)
            acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(_mm256_maddubs_epi16(a, acc[i]), ones));
    __m256i sum = acc[0];
    for (int i = 1; i < 12; ++i) sum = _mm256_add_epi32(sum, acc[i]);
    return _mm256_extract_epi32(sum, 0);
}

__attribute__((target("avx512bw"))) int maddubs_avx512(long iterations) {
    __m512i acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_epi32(i);
    const __m512i a = _mm512_set1_epi8(3), ones = _mm512_set1_epi16(1);
    for (long it = 0; it < iterations; ++it)
        for (int i = 0; i < 12; ++i)
            acc[i] = _mm512_add_epi32(acc[i], _mm512_madd_epi16(_mm512_maddubs_epi16(a, acc[i]), ones));
    __m512i sum = acc[0];
    for (int i = 1; i < 12; ++i) sum = _mm512_add_epi32(sum, acc[i]);
    alignas(64) int lanes[16];
    _mm512_store_si512(lanes, sum);
    return lanes[0];
}

__attribute__((target("avx512f,avx512vnni"))) int vnni_avx512(long iterations) {
    __m512i acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_epi32(i);
    const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
    for (long it = 0; it < iterations; ++it)
        for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
    __m512i sum = acc[0];
    for (int i = 1; i < 12; ++i) sum = _mm512_add_epi32(sum, acc[i]);
    alignas(64) int lanes[16];
    _mm512_store_si512(lanes, sum);
    return lanes[0];
}

__attribute__((target("avx2,avxvnni"))) int vnni_avx2(long iterations) {
    __m256i acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_epi32(i);
    const __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-2);
    for (long it = 0; it < iterations; ++it)
        for (int i = 0; i < 12; ++i) acc[i] = _mm256_dpbusd_avx_epi32(acc[i], a, b);
    __m256i sum = acc[0];
    for (int i = 1; i < 12; ++i) sum = _mm256_add_epi32(sum, acc[i]);
    return _mm256_extract_epi32(sum, 0);
}
#endif

}  // namespace

double measure_int8_peak_gops(int isa, int threads, const char** name) {
    *name = "none";
#if defined(__x86_64__)
    if (!kvfuse::isa_supported(static_cast<kvfuse::Isa>(isa)) || (isa != 1 && isa != 2)) return 0.0;
    kvfuse_cpu_features cpu;
    kvfuse_cpu_features_init(&cpu);
    kvfuse_get_cpu_features(&cpu);
    const bool vnni = isa == 2 ? cpu.avx512_vnni != 0 : cpu.avx_vnni != 0;
    *name = vnni ? (isa == 2 ? "vpdpbusd zmm" : "vpdpbusd ymm (AVX-VNNI)")
                 : (isa == 2 ? "vpmaddubsw+vpmaddwd zmm" : "vpmaddubsw+vpmaddwd ymm");
    const long iterations = 2'000'000;
    const int lanes = isa == 2 ? 16 : 8;
    double best = 0.0;
    for (int attempt = 0; attempt < 5; ++attempt) {
        int sink = 0;
        const auto start = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
        {
            const int r = isa == 2 ? (vnni ? vnni_avx512(iterations) : maddubs_avx512(iterations))
                                   : (vnni ? vnni_avx2(iterations) : maddubs_avx2(iterations));
#pragma omp atomic
            sink += r;
        }
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const double ops = 2.0 * 4.0 * lanes * 12.0 * static_cast<double>(iterations) * threads;
        best = std::max(best, ops / seconds / 1e9);
        benchmark_sink = static_cast<float>(sink);
    }
    return best;
#else
    (void)isa;
    (void)threads;
    return 0.0;
#endif
}

double measure_f32_fma_peak_gflops(int isa, int threads) {
#if defined(__x86_64__)
    if (!kvfuse::isa_supported(static_cast<kvfuse::Isa>(isa)) || (isa != 1 && isa != 2)) return 0.0;
    const long iterations = 4'000'000;
    const int lanes = isa == 2 ? 16 : 8;
    double best = 0.0;
    for (int attempt = 0; attempt < 5; ++attempt) {
        float sink = 0.0f;
        const auto start = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
        {
            const float r = isa == 2 ? fma_avx512(iterations) : fma_avx2(iterations);
#pragma omp atomic
            sink += r;
        }
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const double flops = 2.0 * lanes * 12.0 * static_cast<double>(iterations) * threads;
        best = std::max(best, flops / seconds / 1e9);
        // Keeps the chains' results alive so the loops cannot be optimised away.
        benchmark_sink = sink;
    }
    return best;
#else
    (void)isa;
    (void)threads;
    return 0.0;
#endif
}

}  // namespace kvfuse::bench
