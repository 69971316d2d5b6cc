// What this CPU and its OS can run. The only place in kvfuse that asks the hardware.
#pragma once

#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {

// Detected once (thread-safe) and cached.
const kvfuse_cpu_features& cpu_features();

// True when the CPU has every feature the ISA's kernels are compiled for and the OS saves the
// matching vector registers.
bool cpu_runs(kvfuse_isa isa);

}  // namespace kvfuse::detail
