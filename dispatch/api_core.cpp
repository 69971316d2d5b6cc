// C API: status, version, ISA selection, CPU features, bf16 and f16 conversion.
#include <cctype>
#include <cstring>
#include <string>

#include "dispatch/api_checks.h"
#include "dispatch/cpu_features.h"
#include "dispatch/dispatch.h"
#include "dispatch/errors.h"
#include "dispatch/struct_versions.h"
#include "kernels/common/bf16.h"
#include "kvfuse/kvfuse.h"

using kvfuse::detail::enum_value;
using kvfuse::detail::fail;
using kvfuse::detail::guarded;

extern "C" {

const char* kvfuse_status_message(kvfuse_status status) {
    switch (enum_value(status)) {  // any int a C caller passes: not loaded as the enum
        case KVFUSE_OK: return "ok";
        case KVFUSE_ERROR_INVALID_ARGUMENT: return "invalid argument";
        case KVFUSE_ERROR_NULL_POINTER: return "null pointer";
        case KVFUSE_ERROR_UNKNOWN_ISA: return "unknown ISA";
        case KVFUSE_ERROR_UNSUPPORTED_ISA: return "unsupported ISA";
        case KVFUSE_ERROR_OUT_OF_MEMORY: return "out of memory";
        case KVFUSE_ERROR_INTERNAL: return "internal error";
        case KVFUSE_ERROR_IO: return "file could not be read or written";
        case KVFUSE_ERROR_BAD_PROFILE: return "tuning profile is malformed or for another machine";
        case KVFUSE_ERROR_STRUCT_SIZE: return "struct_size is not a size this library knows";
        default: break;
    }
    return "unknown status";
}

const char* kvfuse_last_error(void) { return kvfuse::detail::last_error(); }

const char* kvfuse_version_string(void) { return KVFUSE_VERSION_STRING; }

int kvfuse_version_number(void) { return KVFUSE_VERSION_NUMBER; }

const char* kvfuse_isa_name(kvfuse_isa isa) {
    switch (enum_value(isa)) {
        case KVFUSE_ISA_SCALAR: return "scalar";
        case KVFUSE_ISA_AVX2: return "avx2";
        case KVFUSE_ISA_AVX512: return "avx512";
        case KVFUSE_ISA_NEON: return "neon";
        default: break;
    }
    return "unknown";
}

kvfuse_status kvfuse_isa_from_name(const char* name, kvfuse_isa* isa) {
    return guarded("kvfuse_isa_from_name", [&] {
    if (name == nullptr || isa == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "name and isa are required");
    std::string lower(name);
    for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    for (int i = 0; i < KVFUSE_ISA_COUNT; ++i) {
        if (lower == kvfuse_isa_name(static_cast<kvfuse_isa>(i))) {
            *isa = static_cast<kvfuse_isa>(i);
            return KVFUSE_OK;
        }
    }
    std::string detail = "'";
    detail += name;
    detail += "' is not an ISA name (use scalar, avx2, avx512 or neon)";
    return fail(KVFUSE_ERROR_UNKNOWN_ISA, std::move(detail));
    });
}

int kvfuse_isa_compiled(kvfuse_isa isa) { return kvfuse::detail::isa_compiled(enum_value(isa)) ? 1 : 0; }

int kvfuse_isa_supported(kvfuse_isa isa) { return kvfuse::detail::kernels_for(enum_value(isa)) != nullptr ? 1 : 0; }

kvfuse_status kvfuse_active_isa(kvfuse_isa* isa) {
    return guarded("kvfuse_active_isa", [&] {
        if (isa == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "isa is required");
        const kvfuse::detail::KernelTable* table = nullptr;
        const kvfuse_status status = kvfuse::detail::active_kernels(table);
        if (status == KVFUSE_OK) *isa = table->isa;
        return status;
    });
}

kvfuse_status kvfuse_force_isa(kvfuse_isa isa) {
    const int value = enum_value(isa);
    return guarded("kvfuse_force_isa", [&] { return kvfuse::detail::force_kernels(&value); });
}

void kvfuse_reset_isa(void) { (void)kvfuse::detail::force_kernels(nullptr); }

const char* kvfuse_kernel_name(kvfuse_kernel kernel) {
    switch (kvfuse::detail::enum_value(kernel)) {
        case KVFUSE_KERNEL_ROPE: return "rope";
        case KVFUSE_KERNEL_ATTENTION: return "attention";
        case KVFUSE_KERNEL_TOPK: return "topk";
        case KVFUSE_KERNEL_RELEVANCE: return "relevance";
        default: break;
    }
    return "unknown";
}

kvfuse_status kvfuse_kernel_from_name(const char* name, kvfuse_kernel* kernel) {
    if (name == nullptr || kernel == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "name and kernel are required");
    for (int i = 0; i < KVFUSE_KERNEL_COUNT; ++i) {
        if (std::strcmp(name, kvfuse_kernel_name(static_cast<kvfuse_kernel>(i))) == 0) {
            *kernel = static_cast<kvfuse_kernel>(i);
            return KVFUSE_OK;
        }
    }
    return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                std::string("'") + name + "' is not a kernel name (use rope, attention, topk or relevance)");
}

// The kernel argument read as the int the C caller passed (api_checks.h: enum_value).
static kvfuse_status check_kernel(kvfuse_kernel kernel) {
    return kvfuse::detail::check_enum("kernel", kvfuse::detail::enum_value(kernel), KVFUSE_KERNEL_COUNT,
                                      "KVFUSE_KERNEL_ROPE, _ATTENTION, _TOPK or _RELEVANCE (0..3)");
}

kvfuse_status kvfuse_set_kernel_isa(kvfuse_kernel kernel, const kvfuse_isa* isa) {
    return kvfuse::detail::guarded("kvfuse_set_kernel_isa", [&]() -> kvfuse_status {
        if (auto s = check_kernel(kernel); s != KVFUSE_OK) return s;
        if (auto s = kvfuse::detail::check_aligned("isa", isa, alignof(kvfuse_isa)); s != KVFUSE_OK) return s;
        const int value = isa == nullptr ? -1 : kvfuse::detail::enum_value(*isa);
        if (isa != nullptr && (value < 0 || value >= KVFUSE_ISA_COUNT))
            return fail(KVFUSE_ERROR_UNKNOWN_ISA, "ISA value " + std::to_string(value) + " is not known");
        return kvfuse::detail::set_kernel_isa(kernel, value);
    });
}

kvfuse_status kvfuse_kernel_isa(kvfuse_kernel kernel, kvfuse_isa* isa, const char** source) {
    return kvfuse::detail::guarded("kvfuse_kernel_isa", [&]() -> kvfuse_status {
        if (isa == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "isa is required");
        if (auto s = check_kernel(kernel); s != KVFUSE_OK) return s;
        const kvfuse::detail::KernelTable* table = nullptr;
        if (const kvfuse_status s = kvfuse::detail::active_kernels(table); s != KVFUSE_OK) return s;
        *isa = kvfuse::detail::slot_isa(*table, kernel);
        if (source == nullptr) return KVFUSE_OK;
        const char* by = nullptr;
        if (kvfuse::detail::isa_forced_for_every_kernel(&by)) {
            *source = by;
            return KVFUSE_OK;
        }
        int chosen[KVFUSE_KERNEL_COUNT];
        kvfuse::detail::KernelIsaSource from[KVFUSE_KERNEL_COUNT];
        kvfuse::detail::chosen_kernel_isas(chosen, from);
        switch (from[kernel]) {
            case kvfuse::detail::KernelIsaSource::profile: *source = "profile"; break;
            case kvfuse::detail::KernelIsaSource::program: *source = "program"; break;
            default: *source = "default"; break;
        }
        return KVFUSE_OK;
    });
}

kvfuse_status kvfuse_get_cpu_features(kvfuse_cpu_features* features) {
    return kvfuse::detail::guarded("kvfuse_get_cpu_features", [&] {
        return kvfuse::detail::write_struct("features", kvfuse::detail::cpu_features(), features);
    });
}

}  // extern "C"

namespace {

// Every conversion: `count` f32 and `count` bf16 / f16 values, each pointer aligned to its type.
kvfuse_status check_conversion(const void* src, std::size_t src_bytes, const void* dst, std::size_t dst_bytes,
                               std::size_t count) {
    if (src == nullptr || dst == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "src and dst are required");
    if (auto s = kvfuse::detail::check_span("the f32 values (count)", count, 1, 1, sizeof(float)); s != KVFUSE_OK) return s;
    if (auto s = kvfuse::detail::check_aligned("src", src, src_bytes); s != KVFUSE_OK) return s;
    return kvfuse::detail::check_aligned("dst", dst, dst_bytes);
}

}  // namespace

extern "C" {

kvfuse_status kvfuse_f32_to_bf16(const float* src, uint16_t* dst, size_t count) {
    if (count == 0) return KVFUSE_OK;
    if (auto s = check_conversion(src, sizeof(float), dst, sizeof(uint16_t), count); s != KVFUSE_OK) return s;
    for (size_t i = 0; i < count; ++i) dst[i] = kvfuse::detail::f32_to_bf16_bits(src[i]);
    return KVFUSE_OK;
}

kvfuse_status kvfuse_bf16_to_f32(const uint16_t* src, float* dst, size_t count) {
    if (count == 0) return KVFUSE_OK;
    if (auto s = check_conversion(src, sizeof(uint16_t), dst, sizeof(float), count); s != KVFUSE_OK) return s;
    for (size_t i = 0; i < count; ++i) dst[i] = kvfuse::detail::bf16_bits_to_f32(src[i]);
    return KVFUSE_OK;
}

// f16 on the active ISA's instructions (the RoPE kernel's ISA: the table's conversion slots).
kvfuse_status kvfuse_f32_to_f16(const float* src, uint16_t* dst, size_t count) {
    return kvfuse::detail::guarded("kvfuse_f32_to_f16", [&] {
        if (count == 0) return KVFUSE_OK;
        if (auto s = check_conversion(src, sizeof(float), dst, sizeof(uint16_t), count); s != KVFUSE_OK) return s;
        const kvfuse::detail::KernelTable* table = nullptr;
        if (const kvfuse_status s = kvfuse::detail::active_kernels(table); s != KVFUSE_OK) return s;
        table->f32_to_f16(src, dst, count);
        return KVFUSE_OK;
    });
}

kvfuse_status kvfuse_f16_to_f32(const uint16_t* src, float* dst, size_t count) {
    return kvfuse::detail::guarded("kvfuse_f16_to_f32", [&] {
        if (count == 0) return KVFUSE_OK;
        if (auto s = check_conversion(src, sizeof(uint16_t), dst, sizeof(float), count); s != KVFUSE_OK) return s;
        const kvfuse::detail::KernelTable* table = nullptr;
        if (const kvfuse_status s = kvfuse::detail::active_kernels(table); s != KVFUSE_OK) return s;
        table->f16_to_f32(src, dst, count);
        return KVFUSE_OK;
    });
}

}  // extern "C"
