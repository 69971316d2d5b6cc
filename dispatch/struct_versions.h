// The versioned structs of the C API (kvfuse.h, "Versioned structs"): the sizes of each
// struct's versions, oldest first, and the reads and writes that honour the caller's
// struct_size. A struct that grows gets a new KVFUSE_<NAME>_SIZE_V<n> in kvfuse.h, appended to
// its list here; the fields beyond an older caller's size keep the defaults the entry point put
// in `out` before reading.
#pragma once

#include <cstddef>
#include <cstring>
#include <initializer_list>

#include "dispatch/errors.h"
#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {

template <class Struct>
struct StructVersions;

#define KVFUSE_STRUCT_VERSIONS(type, ...)                                           \
    template <>                                                                     \
    struct StructVersions<type> {                                                   \
        static constexpr const char* name = #type;                                  \
        static constexpr std::initializer_list<std::size_t> sizes = {__VA_ARGS__}; \
    }
KVFUSE_STRUCT_VERSIONS(kvfuse_cpu_features, KVFUSE_CPU_FEATURES_SIZE_V1, KVFUSE_CPU_FEATURES_SIZE_V2);
KVFUSE_STRUCT_VERSIONS(kvfuse_rope_config, KVFUSE_ROPE_CONFIG_SIZE_V1, KVFUSE_ROPE_CONFIG_SIZE_V2);
KVFUSE_STRUCT_VERSIONS(kvfuse_attention_args, KVFUSE_ATTENTION_ARGS_SIZE_V1, KVFUSE_ATTENTION_ARGS_SIZE_V2);
KVFUSE_STRUCT_VERSIONS(kvfuse_rope_args, KVFUSE_ROPE_ARGS_SIZE_V1, KVFUSE_ROPE_ARGS_SIZE_V2);
KVFUSE_STRUCT_VERSIONS(kvfuse_relevance_segment, KVFUSE_RELEVANCE_SEGMENT_SIZE_V1, KVFUSE_RELEVANCE_SEGMENT_SIZE_V2);
KVFUSE_STRUCT_VERSIONS(kvfuse_relevance_args, KVFUSE_RELEVANCE_ARGS_SIZE_V1, KVFUSE_RELEVANCE_ARGS_SIZE_V2,
                       KVFUSE_RELEVANCE_ARGS_SIZE_V3, KVFUSE_RELEVANCE_ARGS_SIZE_V4);
KVFUSE_STRUCT_VERSIONS(kvfuse_tuning, KVFUSE_TUNING_SIZE_V1, KVFUSE_TUNING_SIZE_V2);
KVFUSE_STRUCT_VERSIONS(kvfuse_topology, KVFUSE_TOPOLOGY_SIZE_V1);
KVFUSE_STRUCT_VERSIONS(kvfuse_placement_options, KVFUSE_PLACEMENT_OPTIONS_SIZE_V1);
KVFUSE_STRUCT_VERSIONS(kvfuse_context_options, KVFUSE_CONTEXT_OPTIONS_SIZE_V1);
KVFUSE_STRUCT_VERSIONS(kvfuse_select_segment, KVFUSE_SELECT_SEGMENT_SIZE_V1, KVFUSE_SELECT_SEGMENT_SIZE_V2,
                       KVFUSE_SELECT_SEGMENT_SIZE_V3);
KVFUSE_STRUCT_VERSIONS(kvfuse_select_args, KVFUSE_SELECT_ARGS_SIZE_V1);
KVFUSE_STRUCT_VERSIONS(kvfuse_quantized_weights, KVFUSE_QUANTIZED_WEIGHTS_SIZE_V1, KVFUSE_QUANTIZED_WEIGHTS_SIZE_V2,
                       KVFUSE_QUANTIZED_WEIGHTS_SIZE_V3);
#undef KVFUSE_STRUCT_VERSIONS

// KVFUSE_OK when `size` is one of `known`, else KVFUSE_ERROR_STRUCT_SIZE saying what is wrong
// with it (never set, newer than this library, between versions).
kvfuse_status check_struct_size(const char* what, const char* type, std::size_t size,
                                std::initializer_list<std::size_t> known);

// The struct_size a caller put in *s, read as bytes (the rest of *s may be shorter than ours).
template <class Struct>
std::size_t struct_size_of(const Struct* s) {
    std::size_t size;
    std::memcpy(&size, s, sizeof size);
    return size;
}

template <class Struct>
kvfuse_status check_struct_size(const char* what, const Struct* s) {
    using V = StructVersions<Struct>;
    return check_struct_size(what, V::name, struct_size_of(s), V::sizes);
}

// Reads the caller's struct `in` (named `what` in errors; NULL refused) into `out`, which holds
// the defaults of every field: the caller's struct_size bytes are copied over them.
template <class Struct>
kvfuse_status read_struct(const char* what, const Struct* in, Struct& out) {
    if (in == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, std::string(what) + " is required");
    if (auto s = check_struct_size(what, in); s != KVFUSE_OK) return s;
    std::memcpy(static_cast<void*>(&out), in, struct_size_of(in));
    out.struct_size = sizeof(Struct);
    return KVFUSE_OK;
}

// Writes `value` to the caller's `out` up to its struct_size (checked first; NULL refused).
template <class Struct>
kvfuse_status write_struct(const char* what, const Struct& value, Struct* out) {
    if (out == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, std::string(what) + " is required");
    if (auto s = check_struct_size(what, out); s != KVFUSE_OK) return s;
    const std::size_t size = struct_size_of(out);
    std::memcpy(reinterpret_cast<char*>(out) + sizeof(std::size_t),
                reinterpret_cast<const char*>(&value) + sizeof(std::size_t), size - sizeof(std::size_t));
    return KVFUSE_OK;
}

}  // namespace kvfuse::detail
