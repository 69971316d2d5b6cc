// The machine's own roofline, measured in the benchmark's run: f32 FMA peak per ISA and
// thread count, from loops of independent FMA chains that never touch memory.
#pragma once

namespace kvfuse::bench {

// GFLOP/s (2 per FMA lane) of `isa` (1 = avx2, 2 = avx512) on `threads` threads; 0 when the
// CPU cannot run it.
double measure_f32_fma_peak_gflops(int isa, int threads);

}  // namespace kvfuse::bench
