// The tests' GGUF writer: the driver's writer (driver/model/gguf_writer.h) plus tensors with
// their payloads in memory, at offsets of the writer's choosing or a test's (to damage a file),
// with any magic or version.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "model/gguf_writer.h"

namespace kvfuse::testing {

class GgufWriter : public kvfuse::model::GgufHeaderWriter {
   public:
    // A tensor with raw payload bytes of the given ggml type id; offset chosen by the writer
    // unless `offset` >= 0 forces one.
    void add_tensor(const std::string& name, std::vector<std::uint64_t> dims, std::uint32_t type,
                    std::vector<std::uint8_t> payload, std::int64_t offset = -1) {
        tensors_.push_back({name, std::move(dims), type, std::move(payload), offset});
    }
    std::vector<std::uint8_t> bytes(std::uint32_t version = 3, std::uint32_t magic = kMagic) const {
        kvfuse::model::GgufHeaderWriter header = *this;
        std::vector<std::uint64_t> offsets;
        std::uint64_t next = 0;
        for (const auto& t : tensors_) {
            const std::uint64_t off = t.offset >= 0 ? static_cast<std::uint64_t>(t.offset) : next;
            offsets.push_back(off);
            next = (std::max(next, off + t.payload.size()) + 31) / 32 * 32;
            header.add_tensor_info(t.name, t.dims, t.type, off);
        }
        std::vector<std::uint8_t> out = header.bytes(32, version, magic);
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
    std::vector<Tensor> tensors_;
};

inline std::vector<std::uint8_t> f32_bytes(const std::vector<float>& v) {
    std::vector<std::uint8_t> out(v.size() * 4);
    std::memcpy(out.data(), v.data(), out.size());
    return out;
}

}  // namespace kvfuse::testing
