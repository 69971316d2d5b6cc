// The machine's own roofline, measured in the benchmark's run: f32 FMA peak per ISA and
// thread count, from loops of independent FMA chains that never touch memory.
#pragma once

namespace kvfuse::bench {

// GFLOP/s (2 per FMA lane) of `isa` (1 = avx2, 2 = avx512) on `threads` threads; 0 when the
// CPU cannot run it.
double measure_f32_fma_peak_gflops(int isa, int threads);

// GOP/s (2 per multiply-add) of the best int8 dot-product instruction `isa` has on this CPU:
// AVX-512 VNNI `vpdpbusd` zmm, AVX-VNNI `vpdpbusd` ymm, else the AVX2/AVX-512BW
// `vpmaddubsw` + `vpmaddwd` + `vpaddd` sequence; `name` says which. 0 when unsupported.
double measure_int8_peak_gops(int isa, int threads, const char** name);

}  // namespace kvfuse::bench
