// The one GGUF v3 writer: metadata and tensor table serialized in memory, padded to the data
// section. `kvfuse make-model` streams the tensor data after it; the tests' writer
// (tests/gguf_writer.h) appends payloads, and can write a bad magic or version to damage a file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/gguf_types.h"

namespace kvfuse::model {

class GgufHeaderWriter {
   public:
    static constexpr std::uint32_t kMagic = 0x46554747;  // "GGUF" little endian

    void add_string(const std::string& key, const std::string& value) {
        begin(key, kString);
        str(value);
    }
    void add_u32(const std::string& key, std::uint32_t value) {
        begin(key, kU32);
        raw(&value, 4);
    }
    void add_u64(const std::string& key, std::uint64_t value) {
        begin(key, kU64);
        raw(&value, 8);
    }
    void add_i32(const std::string& key, std::int32_t value) {
        begin(key, kI32);
        raw(&value, 4);
    }
    void add_f32(const std::string& key, float value) {
        begin(key, kF32);
        raw(&value, 4);
    }
    void add_strings(const std::string& key, const std::vector<std::string>& values) {
        array(key, kString, values.size());
        for (const auto& v : values) str(v);
    }
    void add_f32s(const std::string& key, const std::vector<float>& values) {
        array(key, kF32, values.size());
        raw(values.data(), values.size() * 4);
    }
    void add_i32s(const std::string& key, const std::vector<std::int32_t>& values) {
        array(key, kI32, values.size());
        raw(values.data(), values.size() * 4);
    }
    // A tensor table entry; `type` is a raw id so that tests can write ids ggml does not define.
    void add_tensor_info(const std::string& name, const std::vector<std::uint64_t>& dims, std::uint32_t type,
                         std::uint64_t offset) {
        auto put = [this](const void* p, std::size_t n) {
            tensors_.insert(tensors_.end(), static_cast<const std::uint8_t*>(p), static_cast<const std::uint8_t*>(p) + n);
        };
        const std::uint64_t length = name.size();
        put(&length, 8);
        put(name.data(), name.size());
        const std::uint32_t rank = static_cast<std::uint32_t>(dims.size());
        put(&rank, 4);
        for (std::uint64_t d : dims) put(&d, 8);
        put(&type, 4);
        put(&offset, 8);
        ++tensor_count_;
    }
    void add_tensor_info(const std::string& name, const std::vector<std::uint64_t>& dims, GgmlType type, std::uint64_t offset) {
        add_tensor_info(name, dims, static_cast<std::uint32_t>(type), offset);
    }
    // magic, version, counts, metadata, tensor table, zero padding to `alignment`: the data
    // section starts right after.
    std::vector<std::uint8_t> bytes(std::uint64_t alignment = 32, std::uint32_t version = 3, std::uint32_t magic = kMagic) const {
        std::vector<std::uint8_t> out;
        auto put = [&](const void* p, std::size_t n) {
            out.insert(out.end(), static_cast<const std::uint8_t*>(p), static_cast<const std::uint8_t*>(p) + n);
        };
        put(&magic, 4);
        put(&version, 4);
        put(&tensor_count_, 8);
        put(&kv_count_, 8);
        out.insert(out.end(), meta_.begin(), meta_.end());
        out.insert(out.end(), tensors_.begin(), tensors_.end());
        out.resize((out.size() + alignment - 1) / alignment * alignment, 0);
        return out;
    }

   private:
    // GGUF metadata value types.
    static constexpr std::uint32_t kU32 = 4, kI32 = 5, kF32 = 6, kString = 8, kArray = 9, kU64 = 10;
    void raw(const void* p, std::size_t n) {
        meta_.insert(meta_.end(), static_cast<const std::uint8_t*>(p), static_cast<const std::uint8_t*>(p) + n);
    }
    void str(const std::string& s) {
        const std::uint64_t length = s.size();
        raw(&length, 8);
        raw(s.data(), s.size());
    }
    void begin(const std::string& key, std::uint32_t type) {
        str(key);
        raw(&type, 4);
        ++kv_count_;
    }
    void array(const std::string& key, std::uint32_t element_type, std::uint64_t count) {
        begin(key, kArray);
        raw(&element_type, 4);
        raw(&count, 8);
    }
    std::vector<std::uint8_t> meta_, tensors_;
    std::uint64_t kv_count_ = 0, tensor_count_ = 0;
};

}  // namespace kvfuse::model
