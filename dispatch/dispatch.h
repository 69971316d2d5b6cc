// The kernel table in use. Resolved once on first use: KVFUSE_ISA if set (an unknown or
// unsupported name disables every kernel with a clear error rather than fall back), else the
// best ISA this CPU runs, with each kernel's slot from the ISA a profile or the program chose
// for it. Later calls are one or two atomic loads.
#pragma once

#include "kernels/kernel_table.h"

namespace kvfuse::detail {

// Sets `table` to the active table; otherwise returns why not (bad KVFUSE_ISA) after recording
// the detail with fail().
kvfuse_status active_kernels(const KernelTable*& table);

// The same, for a context with its own tuning: never loads the start-up profile (its per-kernel
// ISA choices apply only once something else loaded it); choices made by the program apply.
kvfuse_status active_kernels_without_profile(const KernelTable*& table);

// The ISA-wide table: forced (kvfuse_force_isa), else the start-up choice, without the
// per-kernel choices. What a tuning profile is keyed by.
kvfuse_status isa_wide_kernels(const KernelTable*& table);

// Where a kernel's ISA choice came from.
enum class KernelIsaSource { active_isa, profile, program };

// Sets every kernel's ISA (-1: the active ISA), all or nothing: an unknown ISA or one this
// CPU or build cannot run fails with the reason. KVFUSE_ISA and force_kernels override them.
kvfuse_status set_kernel_isas(const int (&isa)[KVFUSE_KERNEL_COUNT], KernelIsaSource source);
// One kernel's (kernel already validated), the others unchanged.
kvfuse_status set_kernel_isa(kvfuse_kernel kernel, int isa);
// The choices made so far (does not load the start-up profile: saving a profile must not).
void chosen_kernel_isas(int (&isa)[KVFUSE_KERNEL_COUNT], KernelIsaSource (&source)[KVFUSE_KERNEL_COUNT]);
// True when KVFUSE_ISA or force_kernels runs one ISA for everything; *by says which.
bool isa_forced_for_every_kernel(const char** by);

// The ISA whose code fills `kernel`'s slot of `table`.
kvfuse_isa slot_isa(const KernelTable& table, kvfuse_kernel kernel);

// Forces one ISA (null = back to the start-up choice). ISA values are the ints a C caller
// passed, checked before they become a kvfuse_isa.
kvfuse_status force_kernels(const int* isa);

// Table of one ISA if compiled and supported, else null.
const KernelTable* kernels_for(int isa);

bool isa_compiled(int isa);

}  // namespace kvfuse::detail
