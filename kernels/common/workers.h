// Runs a kernel's lambda as the workers of a call (kernels/call_context.h's context_run). Only
// ever instantiated with a kernel's own lambda, whose type is local to its ISA's translation
// unit, so each instantiation stays inside that ISA's object.
#pragma once

#include <cstddef>

#include "kernels/call_context.h"

namespace kvfuse::detail {

// body(w) for every w in [0, workers); body must not throw or allocate.
template <class Body>
void run_workers(const kvfuse_context& context, std::size_t workers, Body& body) {
    context_run(
        context, workers, [](void* b, std::size_t worker) { (*static_cast<Body*>(b))(worker); }, &body);
}

// first(w) for every w in [0, workers), then second(w) for every w (context_run_two_phases).
template <class First, class Second>
void run_workers_in_two_phases(const kvfuse_context& context, std::size_t workers, First& first, Second& second) {
    struct Bodies {
        First& first;
        Second& second;
    } bodies{first, second};
    context_run_two_phases(
        context, workers, [](void* b, std::size_t worker) { static_cast<Bodies*>(b)->first(worker); },
        [](void* b, std::size_t worker) { static_cast<Bodies*>(b)->second(worker); }, &bodies);
}

}  // namespace kvfuse::detail
