// Internal test hook: every compiled kernel build (an ISA's own objects, and a variant such as
// avx2_vnni registered over them where the CPU has its feature), so that tests run each one
// the CPU can run -- on a VNNI CPU the plain avx2/avx512 scoring objects would otherwise never
// run. Exported from the shared library although not in the public header.
#pragma once

#include <vector>

#include "kvfuse/kvfuse.h"

#ifndef KVFUSE_TEST_HOOK
#define KVFUSE_TEST_HOOK __attribute__((visibility("default")))
#endif

namespace kvfuse::detail {

struct KernelBuild {
    kvfuse_isa isa;    // what kvfuse_active_isa reports while it is forced
    const char* name;  // "avx2", "avx2_vnni", ...: an ISA's name, or a variant's
    bool variant;      // a variant build (what the dispatch picks by itself on this CPU)
};

// The builds this CPU runs, per supported ISA its own kernels first, then its variant if any.
KVFUSE_TEST_HOOK std::vector<KernelBuild> runnable_kernel_builds();
// Forces one build by name for the whole process ("avx2" = the plain avx2 objects even where
// the dispatch would pick avx2_vnni); kvfuse_reset_isa undoes it.
KVFUSE_TEST_HOOK kvfuse_status force_kernel_build(const char* name);
// The build now running ("none" when the dispatch refuses to run kernels).
KVFUSE_TEST_HOOK const char* active_kernel_build();

}  // namespace kvfuse::detail
