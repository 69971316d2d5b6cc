// A tiny GGUF v3 writer for tests: builds well-formed files that a test then damages.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace kvfuse::testing {

class GgufWriter {
   public:
    void add_string(const std::string& key, const std::string& value) {
        key_(key);
        u32(8);
        str(value);
        ++kv_;
    }
    void add_u32(const std::string& key, std::uint32_t value) {
        key_(key);
        u32(4);
        u32(value);
        ++kv_;
    }
    void add_u64(const std::string& key, std::uint64_t value) {
        key_(key);
        u32(10);
        u64(value);
        ++kv_;
    }
    void add_i32(const std::string& key, std::int32_t value) {
        key_(key);
        u32(5);
        raw(&value, 4);
        ++kv_;
    }
    void add_f32(const std::string& key, float value) {
        key_(key);
        u32(6);
        raw(&value, 4);
        ++kv_;
    }
    void add_strings(const std::string& key, const std::vector<std::string>& values) {
        key_(key);
        u32(9);
        u32(8);
        u64(values.size());
        for (const auto& v : values) str(v);
        ++kv_;
    }
    void add_f32s(const std::string& key, const std::vector<float>& values) {
        key_(key);
        u32(9);
        u32(6);
        u64(values.size());
        for (float v : values) raw(&v, 4);
        ++kv_;
    }
    void add_i32s(const std::string& key, const std::vector<std::int32_t>& values) {
        key_(key);
        u32(9);
        u32(5);
        u64(values.size());
        for (auto v : values) raw(&v, 4);
        ++kv_;
    }
    // A tensor with raw payload bytes of the given ggml type; offset chosen by the writer unless
    // `offset` >= 0 forces one.
    void add_tensor(const std::string& name, std::vector<std::uint64_t> dims, std::uint32_t type,
                    std::vector<std::uint8_t> payload, std::int64_t offset = -1) {
        tensors_.push_back({name, std::move(dims), type, std::move(payload), offset});
    }
    std::vector<std::uint8_t> bytes(std::uint32_t version = 3, std::uint32_t magic = 0x46554747) const {
        std::vector<std::uint8_t> out;
        auto put = [&](const void* p, std::size_t n) {
            out.insert(out.end(), static_cast<const std::uint8_t*>(p), static_cast<const std::uint8_t*>(p) + n);
        };
        const std::uint64_t tensor_count = tensors_.size(), kv = kv_;
        put(&magic, 4);
        put(&version, 4);
        put(&tensor_count, 8);
        put(&kv, 8);
        out.insert(out.end(), meta_.begin(), meta_.end());
        std::vector<std::uint64_t> offsets;
        std::uint64_t next = 0;
        for (const auto& t : tensors_) {
            const std::uint64_t off = t.offset >= 0 ? static_cast<std::uint64_t>(t.offset) : next;
            offsets.push_back(off);
            next = (std::max(next, off + t.payload.size()) + 31) / 32 * 32;
            const std::uint64_t len = t.name.size();
            put(&len, 8);
            put(t.name.data(), len);
            const std::uint32_t rank = static_cast<std::uint32_t>(t.dims.size());
            put(&rank, 4);
            for (auto d : t.dims) put(&d, 8);
            put(&t.type, 4);
            put(&off, 8);
        }
        while (out.size() % 32) out.push_back(0);
        const std::size_t data_start = out.size();
        for (std::size_t i = 0; i < tensors_.size(); ++i) {
            const std::size_t end = data_start + offsets[i] + tensors_[i].payload.size();
            if (out.size() < end) out.resize(end, 0);
            if (!tensors_[i].payload.empty())
                std::memcpy(out.data() + data_start + offsets[i], tensors_[i].payload.data(), tensors_[i].payload.size());
        }
        while (out.size() % 32) out.push_back(0);
        return out;
    }

   private:
    struct Tensor {
        std::string name;
        std::vector<std::uint64_t> dims;
        std::uint32_t type;
        std::vector<std::uint8_t> payload;
        std::int64_t offset;
    };
    void raw(const void* p, std::size_t n) {
        meta_.insert(meta_.end(), static_cast<const std::uint8_t*>(p), static_cast<const std::uint8_t*>(p) + n);
    }
    void u32(std::uint32_t v) { raw(&v, 4); }
    void u64(std::uint64_t v) { raw(&v, 8); }
    void str(const std::string& s) {
        u64(s.size());
        raw(s.data(), s.size());
    }
    void key_(const std::string& k) { str(k); }
    std::vector<std::uint8_t> meta_;
    std::uint64_t kv_ = 0;
    std::vector<Tensor> tensors_;
};

inline std::vector<std::uint8_t> f32_bytes(const std::vector<float>& v) {
    std::vector<std::uint8_t> out(v.size() * 4);
    std::memcpy(out.data(), v.data(), out.size());
    return out;
}

}  // namespace kvfuse::testing
