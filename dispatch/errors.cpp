#include "dispatch/errors.h"

namespace kvfuse::detail {

namespace {
thread_local std::string g_last_error;
}

kvfuse_status fail(kvfuse_status status, std::string detail) {
    g_last_error = std::move(detail);
    return status;
}

void clear_error() { g_last_error.clear(); }

const char* last_error() { return g_last_error.c_str(); }

}  // namespace kvfuse::detail
