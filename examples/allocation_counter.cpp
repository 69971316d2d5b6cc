// allocation_counter.h: malloc, calloc, realloc and the aligned forms forward to glibc's own
// (__libc_*) and count while a window is open. Linked into the program, these definitions
// interpose on every caller in the process, shared libraries included.
#include "allocation_counter.h"

#include <atomic>
#include <cstddef>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__) || defined(__SANITIZE_MEMORY__)
#define EXAMPLE_OWNS_MALLOC 0
#else
#define EXAMPLE_OWNS_MALLOC 1
#endif

namespace {
std::atomic<int> g_slot{-1};
std::atomic<long> g_counts[3];

[[maybe_unused]] void counted() {
    const int slot = g_slot.load(std::memory_order_relaxed);
    if (slot >= 0) g_counts[slot].fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

namespace allocation_counter {
bool available() { return EXAMPLE_OWNS_MALLOC != 0; }
void start(int slot) { g_slot.store(slot, std::memory_order_seq_cst); }
int current() { return g_slot.load(std::memory_order_seq_cst); }
void stop() { g_slot.store(-1, std::memory_order_seq_cst); }
long count(int slot) { return g_counts[slot].load(); }
void reset() {
    for (auto& c : g_counts) c.store(0);
}
}  // namespace allocation_counter

#if EXAMPLE_OWNS_MALLOC
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);

void* malloc(std::size_t bytes) {
    counted();
    return __libc_malloc(bytes);
}
void* calloc(std::size_t count, std::size_t bytes) {
    counted();
    return __libc_calloc(count, bytes);
}
void* realloc(void* p, std::size_t bytes) {
    counted();
    return __libc_realloc(p, bytes);
}
void* memalign(std::size_t alignment, std::size_t bytes) {
    counted();
    return __libc_memalign(alignment, bytes);
}
void* aligned_alloc(std::size_t alignment, std::size_t bytes) { return memalign(alignment, bytes); }
int posix_memalign(void** out, std::size_t alignment, std::size_t bytes) {
    void* p = memalign(alignment, bytes);
    if (p == nullptr) return 12;  // ENOMEM
    *out = p;
    return 0;
}
void free(void* p) { __libc_free(p); }
}
#endif
