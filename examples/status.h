// How the example stops: a clear message on stderr and a non-zero exit, for a failed kvfuse
// call (its status text and kvfuse_last_error's detail) or a failed check.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#include <kvfuse/kvfuse.h>

[[noreturn]] inline void fail(const std::string& what) {
    std::fprintf(stderr, "fused_request: FAILED: %s\n", what.c_str());
    std::exit(1);
}

// Allocates nothing unless the call failed.
inline void require(kvfuse_status status, const char* call) {
    if (status != KVFUSE_OK)
        fail(std::string(call) + ": " + kvfuse_status_message(status) + " (" + kvfuse_last_error() + ")");
}
