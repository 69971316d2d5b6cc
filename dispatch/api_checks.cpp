#include "dispatch/api_checks.h"

namespace kvfuse::detail {

kvfuse_status check_span(const char* what, std::size_t count, std::size_t stride, std::size_t row,
                         std::size_t element_bytes) {
    return check_size(what, span_bytes(count, stride, row, element_bytes));
}

kvfuse_status check_size(const char* what, CheckedSize size) {
    if (size.fits()) return KVFUSE_OK;
    return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                std::string(what) + " spans more bytes than memory can hold (its size arithmetic overflows)");
}

kvfuse_status check_enum(const char* what, int value, int count, const char* allowed) {
    if (value >= 0 && value < count) return KVFUSE_OK;
    return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                std::string(what) + " (" + std::to_string(value) + ") must be " + allowed);
}

kvfuse_status check_dtype(const char* what, int value) {
    return check_enum(what, value, 3, "KVFUSE_DTYPE_F32 (0), KVFUSE_DTYPE_BF16 (1) or KVFUSE_DTYPE_F16 (2)");
}

kvfuse_status check_weight_dtype(const char* what, int value) {
    if (value == KVFUSE_DTYPE_F16)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                    std::string(what) + " (2, KVFUSE_DTYPE_F16) must be KVFUSE_DTYPE_F32 (0) or KVFUSE_DTYPE_BF16 (1): "
                                        "f16 is a KV-cache type, not a weight type");
    return check_dtype(what, value);
}

kvfuse_status check_aligned(const char* what, const void* pointer, std::size_t alignment) {
    if (reinterpret_cast<std::uintptr_t>(pointer) % alignment == 0) return KVFUSE_OK;
    return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                std::string(what) + " must be aligned to " + std::to_string(alignment) + " bytes (its element size)");
}

kvfuse_status status_of_exception(const char* function, std::exception_ptr error) noexcept {
    // fail() allocates the detail string; if that throws too, the status alone still goes back.
    try {
        std::rethrow_exception(error);
    } catch (const std::bad_alloc&) {
        try {
            return fail(KVFUSE_ERROR_OUT_OF_MEMORY, std::string(function) + ": out of memory");
        } catch (...) {
            return KVFUSE_ERROR_OUT_OF_MEMORY;
        }
    } catch (const std::exception& e) {
        try {
            return fail(KVFUSE_ERROR_INTERNAL, std::string(function) + ": unexpected exception: " + e.what());
        } catch (...) {
            return KVFUSE_ERROR_INTERNAL;
        }
    } catch (...) {
        try {
            return fail(KVFUSE_ERROR_INTERNAL, std::string(function) + ": unexpected non-standard exception");
        } catch (...) {
            return KVFUSE_ERROR_INTERNAL;
        }
    }
}

}  // namespace kvfuse::detail
