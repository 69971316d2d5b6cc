// The kernel table in use. Resolved once on first use: KVFUSE_ISA if set (an unknown or
// unsupported name disables every kernel with a clear error rather than fall back), else the
// best ISA this CPU runs. Later calls are one atomic load.
#pragma once

#include "kernels/kernel_table.h"

namespace kvfuse::detail {

// Sets `table` to the active table; otherwise returns why not (bad KVFUSE_ISA) after recording
// the detail with fail().
kvfuse_status active_kernels(const KernelTable*& table);

// Forces one ISA (null = back to the start-up choice). ISA values are the ints a C caller
// passed, checked before they become a kvfuse_isa.
kvfuse_status force_kernels(const int* isa);

// Table of one ISA if compiled and supported, else null.
const KernelTable* kernels_for(int isa);

bool isa_compiled(int isa);

}  // namespace kvfuse::detail
