// Per-thread error detail behind kvfuse_last_error().
#pragma once

#include <string>

#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {

// Records `detail` for this thread and returns `status`, so a check reads
// `if (bad) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "heads must be > 0");`
kvfuse_status fail(kvfuse_status status, std::string detail);
void clear_error();
const char* last_error();

}  // namespace kvfuse::detail
