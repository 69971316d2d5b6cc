// What every exported C function shares: overflow-checked sizes, enum values read as the int the
// caller passed, pointer alignment, and the wrapper that keeps every C++ exception inside the
// library. Each check records the detail with fail() and returns the status, so an entry point
// reads `if (auto s = check_span(...); s != KVFUSE_OK) return s;`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <type_traits>

#include "dispatch/errors.h"
#include "kvfuse/kvfuse.h"

// Exported for the in-tree tests although not in the public header.
#ifndef KVFUSE_TEST_HOOK
#define KVFUSE_TEST_HOOK __attribute__((visibility("default")))
#endif

namespace kvfuse::detail {

// Overflow-checked size arithmetic for API arguments. A tensor's extent must also fit in
// ptrdiff_t, the most bytes a pointer difference (and so any index a kernel computes) can hold.
class CheckedSize {
   public:
    constexpr CheckedSize(std::size_t value) : value_(value) {}  // NOLINT: implicit by design
    CheckedSize operator*(CheckedSize other) const {
        CheckedSize out(0);
        out.wrapped_ = wrapped_ || other.wrapped_ || __builtin_mul_overflow(value_, other.value_, &out.value_);
        return out;
    }
    CheckedSize operator+(CheckedSize other) const {
        CheckedSize out(0);
        out.wrapped_ = wrapped_ || other.wrapped_ || __builtin_add_overflow(value_, other.value_, &out.value_);
        return out;
    }
    // True when no step wrapped and the result is a valid object size.
    bool fits() const { return !wrapped_ && value_ <= static_cast<std::size_t>(PTRDIFF_MAX); }
    std::size_t value() const { return value_; }

   private:
    std::size_t value_;
    bool wrapped_ = false;
};

// Bytes spanned by `count` rows of `row` elements placed `stride` elements apart:
// ((count - 1) * stride + row) * element_bytes, 0 for no rows.
inline CheckedSize span_bytes(std::size_t count, std::size_t stride, std::size_t row, std::size_t element_bytes) {
    if (count == 0) return CheckedSize(0);
    return (CheckedSize(count - 1) * stride + row) * element_bytes;
}

// Fails with "<what> spans too many bytes" unless the span fits.
kvfuse_status check_span(const char* what, std::size_t count, std::size_t stride, std::size_t row,
                         std::size_t element_bytes);
// Fails unless `size` (a product of API arguments) fits.
kvfuse_status check_size(const char* what, CheckedSize size);

// The int a C caller put in an enum-typed argument or field, read without loading it as the C++
// enum: a value outside the enumerators (a negative one included) is undefined behaviour once
// loaded as the enum type, so range checks must run on this int.
template <class Enum>
int enum_value(const Enum& e) {
    static_assert(std::is_enum_v<Enum> && sizeof(Enum) == sizeof(int), "the C enums are int-sized");
    int raw;
    std::memcpy(&raw, &e, sizeof raw);
    return raw;
}

// Fails with "<what> (<value>) must be ..." unless the enum holds one of [0, count).
kvfuse_status check_enum(const char* what, int value, int count, const char* allowed);
// KVFUSE_DTYPE_F32, KVFUSE_DTYPE_BF16 or KVFUSE_DTYPE_F16 (K/V tensors, quantizer input).
kvfuse_status check_dtype(const char* what, int value);
// KVFUSE_DTYPE_F32 or KVFUSE_DTYPE_BF16 (dense-layer weights: no f16).
kvfuse_status check_weight_dtype(const char* what, int value);
inline std::size_t dtype_bytes(kvfuse_dtype dtype) { return dtype == KVFUSE_DTYPE_F32 ? 4 : 2; }

// Fails unless `pointer` (when not null) is a multiple of `alignment` bytes: every kernel reads
// its element type through typed (aligned) loads.
kvfuse_status check_aligned(const char* what, const void* pointer, std::size_t alignment);

// Runs `body` (returning kvfuse_status) and turns whatever it throws into a status, so that no
// C++ exception ever crosses the C boundary: std::bad_alloc -> KVFUSE_ERROR_OUT_OF_MEMORY,
// anything else -> KVFUSE_ERROR_INTERNAL with the exception's text.
KVFUSE_TEST_HOOK kvfuse_status status_of_exception(const char* function, std::exception_ptr error) noexcept;

template <class Body>
kvfuse_status guarded(const char* function, Body&& body) noexcept {
    try {
        return body();
    } catch (...) {
        return status_of_exception(function, std::current_exception());
    }
}

}  // namespace kvfuse::detail
