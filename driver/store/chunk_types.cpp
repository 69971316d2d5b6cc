// Status, dtypes and typed section access: the small vocabulary of chunk_store.h.
#include "store/chunk_store.h"

namespace kvfuse::store {

std::string_view status_code_name(StatusCode code) {
    switch (code) {
        case StatusCode::ok: return "ok";
        case StatusCode::invalid_argument: return "invalid argument";
        case StatusCode::io_error: return "I/O error";
        case StatusCode::not_writable: return "not writable";
        case StatusCode::corrupt: return "corrupt";
        case StatusCode::mismatch: return "mismatch";
    }
    return "unknown";
}

std::string Status::to_string() const {
    std::string text(status_code_name(code_));
    if (!message_.empty()) text += ": " + message_;
    return text;
}

std::string_view dtype_name(DType dtype) {
    switch (dtype) {
        case DType::f32: return "f32";
        case DType::bf16: return "bf16";
        case DType::f16: return "f16";
        case DType::i8: return "i8";
        case DType::u8: return "u8";
        case DType::i4: return "i4";
        case DType::i32: return "i32";
    }
    return "unknown";
}

uint32_t dtype_bits(DType dtype) {
    switch (dtype) {
        case DType::f32: case DType::i32: return 32;
        case DType::bf16: case DType::f16: return 16;
        case DType::i8: case DType::u8: return 8;
        case DType::i4: return 4;
    }
    return 0;
}

uint64_t dtype_bytes(DType dtype, uint64_t elements) {
    // elements < 2^62 (checked by callers), so elements * 32 cannot overflow.
    return (elements * dtype_bits(dtype) + 7) / 8;
}

uint64_t SectionView::element_count() const {
    uint64_t count = 1;
    for (uint64_t dim : shape) count *= dim;
    return count;
}

namespace {
template <class T>
std::span<const T> typed(const SectionView& section, bool right_dtype) {
    if (!right_dtype) return {};
    return {reinterpret_cast<const T*>(section.bytes.data()), section.bytes.size() / sizeof(T)};
}
}  // namespace

std::span<const float> SectionView::as_f32() const {
    return typed<float>(*this, dtype == DType::f32);
}
std::span<const uint16_t> SectionView::as_bf16_bits() const {
    return typed<uint16_t>(*this, dtype == DType::bf16 || dtype == DType::f16);
}
std::span<const int8_t> SectionView::as_i8() const {
    return typed<int8_t>(*this, dtype == DType::i8);
}
std::span<const uint8_t> SectionView::as_u8() const {
    return typed<uint8_t>(*this, dtype == DType::u8);
}
std::span<const int32_t> SectionView::as_i32() const {
    return typed<int32_t>(*this, dtype == DType::i32);
}

}  // namespace kvfuse::store
