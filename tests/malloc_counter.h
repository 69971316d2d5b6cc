// Replaces malloc and its relatives (forwarding to glibc's __libc_* functions) so that a test
// binary can count every allocation of the process, operator new's included, and make large
// ones fail. Include it in exactly one translation unit of a test binary.
#pragma once

#include <atomic>
#include <cstddef>

// Sanitizers replace malloc themselves: there, nothing is counted and the tests that count or
// fail allocations skip.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define KVFUSE_TEST_OWNS_MALLOC 0
#else
#define KVFUSE_TEST_OWNS_MALLOC 1
#endif

#if KVFUSE_TEST_OWNS_MALLOC
extern "C" {
void* __libc_malloc(size_t);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* __libc_memalign(size_t, size_t);
void __libc_free(void*);
}
#endif

namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocations{0};
// Allocations of at least this many bytes fail (0: none fail).
std::atomic<size_t> g_fail_from{0};

bool refuse(size_t bytes) {
    if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1, std::memory_order_relaxed);
    const size_t limit = g_fail_from.load(std::memory_order_relaxed);
    return limit != 0 && bytes >= limit;
}
}  // namespace

#if KVFUSE_TEST_OWNS_MALLOC
extern "C" {
void* malloc(size_t bytes) { return refuse(bytes) ? nullptr : __libc_malloc(bytes); }
void* calloc(size_t count, size_t bytes) { return refuse(count * bytes) ? nullptr : __libc_calloc(count, bytes); }
void* realloc(void* p, size_t bytes) { return refuse(bytes) ? nullptr : __libc_realloc(p, bytes); }
void* memalign(size_t alignment, size_t bytes) { return refuse(bytes) ? nullptr : __libc_memalign(alignment, bytes); }
void* aligned_alloc(size_t alignment, size_t bytes) { return memalign(alignment, bytes); }
int posix_memalign(void** out, size_t alignment, size_t bytes) {
    void* p = memalign(alignment, bytes);
    if (p == nullptr) return 12;  // ENOMEM
    *out = p;
    return 0;
}
void free(void* p) { __libc_free(p); }
}
#endif

