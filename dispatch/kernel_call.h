// The frame of every entry point that runs kernels, once its arguments are checked: the context
// claimed for the call (ContextCall), its kernel table looked up, then the kernel calls.
#pragma once

#include "dispatch/context.h"
#include "dispatch/dispatch.h"
#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {

// Runs `body(call, kernels)` (ContextCall&, const KernelTable&) holding `context` (NULL: the
// calling thread's default context) and returns the body's status; when the context cannot be
// claimed or its kernel table resolved, that status instead, without running the body.
template <class Body>
kvfuse_status with_kernels(kvfuse_context* context, Body&& body) {
    ContextCall call(context);
    if (call.status() != KVFUSE_OK) return call.status();
    const KernelTable* kernels = nullptr;
    if (const kvfuse_status s = call.kernels(kernels); s != KVFUSE_OK) return s;
    return body(call, *kernels);
}

}  // namespace kvfuse::detail
