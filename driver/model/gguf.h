// A GGUF v3 file, memory-mapped and validated: metadata, tensor table, tensor data. Every
// offset, size and count is checked against the file before use; any problem is a GgufError
// naming the file and what is wrong.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "model/gguf_types.h"

namespace kvfuse::model {

class GgufError : public std::runtime_error {
   public:
    using std::runtime_error::runtime_error;
};

struct GgufTensor {
    std::string name;
    std::vector<std::uint64_t> dims;  // ggml order: dims[0] is the contiguous one
    GgmlType type = GgmlType::f32;    // as stored: may be an id ggml does not define
    // The type's traits; nullptr for an id ggml does not define (such a tensor's extent is
    // unknown: bytes 0, data nullptr, and reading it is an error).
    const TypeTraits* traits = nullptr;
    std::uint64_t offset = 0;  // from the start of the data section
    std::uint64_t bytes = 0;
    const std::uint8_t* data = nullptr;

    std::uint64_t elements() const;
    std::uint64_t row_length() const { return dims[0]; }
    std::uint64_t rows() const { return elements() / dims[0]; }
    std::string type_name() const { return model::type_name(static_cast<std::uint32_t>(type)); }
    // Whether kvfuse can read this tensor's values.
    bool readable() const { return traits != nullptr && traits->supported(); }
};

// A metadata value: scalars widened, strings, arrays of scalars or strings.
using GgufValue = std::variant<std::uint64_t, std::int64_t, double, bool, std::string, std::vector<std::string>,
                               std::vector<double>, std::vector<std::int64_t>>;

class GgufFile {
   public:
    // Maps and parses the file; throws GgufError.
    static std::shared_ptr<const GgufFile> open(const std::string& path);
    // Parses bytes already in memory (the tests' hand-made files); they must outlive the result.
    static std::shared_ptr<const GgufFile> parse(std::span<const std::uint8_t> bytes, const std::string& name);

    ~GgufFile();
    const std::string& path() const { return path_; }
    std::uint32_t version() const { return version_; }
    std::uint64_t size() const { return size_; }

    bool has(const std::string& key) const { return metadata_.count(key) != 0; }
    const GgufValue* find(const std::string& key) const;
    // Typed getters: throw GgufError naming the key when absent or of another type.
    std::uint64_t get_uint(const std::string& key) const;
    double get_float(const std::string& key) const;
    std::string get_string(const std::string& key) const;
    const std::vector<std::string>& get_strings(const std::string& key) const;
    std::vector<double> get_floats(const std::string& key) const;  // also from integer arrays
    std::uint64_t get_uint_or(const std::string& key, std::uint64_t fallback) const;
    double get_float_or(const std::string& key, double fallback) const;
    // Range-checked: the value read as 64 bits, then checked against [min, max] before any
    // narrowing; an error names the key and the value. A finite float in [min, max].
    std::uint64_t get_uint_in(const std::string& key, std::uint64_t min, std::uint64_t max) const;
    std::uint64_t get_uint_in_or(const std::string& key, std::uint64_t fallback, std::uint64_t min, std::uint64_t max) const;
    double get_float_in(const std::string& key, double min, double max) const;
    double get_float_in_or(const std::string& key, double fallback, double min, double max) const;

    const std::vector<GgufTensor>& tensors() const { return tensors_; }
    const GgufTensor* tensor(const std::string& name) const;
    const GgufTensor& require_tensor(const std::string& name) const;  // throws if missing

    // The tensor as f32, dequantized through its type's traits. A type kvfuse does not read is
    // a GgufError naming the tensor and the type (a file may hold such tensors as long as the
    // model never reads them).
    std::vector<float> read_f32(const GgufTensor& tensor) const;
    // Rows [first, first + count) of a tensor (rows of dims[0] values) into `out`, same errors.
    void dequantize_rows(const GgufTensor& tensor, std::uint64_t first, std::uint64_t count, float* out) const;
    // Throws the error read_f32 would when the tensor's type is not read by kvfuse.
    void require_readable(const GgufTensor& tensor) const;

   private:
    GgufFile() = default;
    void parse_all(const std::uint8_t* base, std::uint64_t size);

    std::string path_;
    std::uint32_t version_ = 0;
    std::uint64_t size_ = 0;
    void* mapping_ = nullptr;
    std::map<std::string, GgufValue> metadata_;
    std::vector<GgufTensor> tensors_;
    std::map<std::string, std::size_t> by_name_;
};

}  // namespace kvfuse::model
