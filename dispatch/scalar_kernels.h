// The `scalar` ISA: every slot of the kernel table served by reference/.
#pragma once

#include "kernels/kernel_table.h"

namespace kvfuse::detail {

void register_scalar_kernels(KernelTable& table);

}  // namespace kvfuse::detail
