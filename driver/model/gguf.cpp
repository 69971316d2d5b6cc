#include "model/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

namespace kvfuse::model {

namespace {

constexpr std::uint32_t kMagic = 0x46554747;  // "GGUF" little endian
constexpr std::uint64_t kMaxCount = 1u << 24;  // tensors, keys, array elements: far above any real model
constexpr std::uint64_t kMaxString = 1u << 20;

// Bounds-checked little-endian reader over the file's bytes.
class Cursor {
   public:
    Cursor(const std::uint8_t* base, std::uint64_t size, const std::string& name) : base_(base), size_(size), name_(name) {}
    template <class T>
    T read(const char* what) {
        need(sizeof(T), what);
        T value;
        std::memcpy(&value, base_ + at_, sizeof(T));
        at_ += sizeof(T);
        return value;
    }
    std::string read_string(const char* what) {
        const auto length = read<std::uint64_t>(what);
        if (length > kMaxString) fail(std::string(what) + ": string length " + std::to_string(length) + " is implausible");
        need(length, what);
        std::string s(reinterpret_cast<const char*>(base_ + at_), length);
        at_ += length;
        return s;
    }
    void need(std::uint64_t bytes, const char* what) const {
        if (bytes > size_ - at_)
            fail(std::string("truncated file: ") + what + " needs " + std::to_string(bytes) + " bytes at offset " +
                 std::to_string(at_) + ", " + std::to_string(size_ - at_) + " remain");
    }
    [[noreturn]] void fail(const std::string& what) const { throw GgufError(name_ + ": " + what); }
    std::uint64_t position() const { return at_; }
    std::uint64_t remaining() const { return size_ - at_; }

   private:
    const std::uint8_t* base_;
    std::uint64_t size_;
    std::uint64_t at_ = 0;
    const std::string& name_;
};

GgufValue read_value(Cursor& c, std::uint32_t type, int depth) {
    switch (type) {
        case 0: return static_cast<std::uint64_t>(c.read<std::uint8_t>("u8 value"));
        case 1: return static_cast<std::int64_t>(c.read<std::int8_t>("i8 value"));
        case 2: return static_cast<std::uint64_t>(c.read<std::uint16_t>("u16 value"));
        case 3: return static_cast<std::int64_t>(c.read<std::int16_t>("i16 value"));
        case 4: return static_cast<std::uint64_t>(c.read<std::uint32_t>("u32 value"));
        case 5: return static_cast<std::int64_t>(c.read<std::int32_t>("i32 value"));
        case 6: return static_cast<double>(c.read<float>("f32 value"));
        case 7: return c.read<std::uint8_t>("bool value") != 0;
        case 8: return c.read_string("string value");
        case 10: return c.read<std::uint64_t>("u64 value");
        case 11: return c.read<std::int64_t>("i64 value");
        case 12: return c.read<double>("f64 value");
        case 9: {
            if (depth > 0) c.fail("nested arrays are not supported");
            const auto element_type = c.read<std::uint32_t>("array type");
            const auto count = c.read<std::uint64_t>("array count");
            if (count > kMaxCount) c.fail("array of " + std::to_string(count) + " elements is implausible");
            // Every element takes at least this many bytes of the file (a string its 8-byte
            // length): a count the rest of the file cannot hold is refused before anything is
            // reserved for it (a 40-byte file could otherwise make the loader reserve 512 MiB).
            static constexpr std::uint8_t kMinBytes[13] = {1, 1, 2, 2, 4, 4, 4, 1, 8, 0, 8, 8, 8};
            if (element_type < 13 && element_type != 9 && count * kMinBytes[element_type] > c.remaining())
                c.fail("truncated file: array of " + std::to_string(count) + " elements of type " +
                       std::to_string(element_type) + " needs at least " + std::to_string(count * kMinBytes[element_type]) +
                       " bytes, " + std::to_string(c.remaining()) + " remain");
            if (element_type == 8) {
                std::vector<std::string> out;
                out.reserve(count);
                for (std::uint64_t i = 0; i < count; ++i) out.push_back(c.read_string("array string"));
                return out;
            }
            std::vector<double> floats;
            std::vector<std::int64_t> ints;
            const bool is_float = element_type == 6 || element_type == 12;
            for (std::uint64_t i = 0; i < count; ++i) {
                GgufValue v = read_value(c, element_type, depth + 1);
                if (is_float)
                    floats.push_back(std::get<double>(v));
                else if (auto* u = std::get_if<std::uint64_t>(&v))
                    ints.push_back(static_cast<std::int64_t>(*u));
                else if (auto* s = std::get_if<std::int64_t>(&v))
                    ints.push_back(*s);
                else if (auto* b = std::get_if<bool>(&v))
                    ints.push_back(*b);
                else
                    c.fail("unsupported array element type " + std::to_string(element_type));
            }
            if (is_float) return floats;
            return ints;
        }
        default:
            c.fail("unknown metadata value type " + std::to_string(type));
    }
}

}  // namespace

std::uint64_t GgufTensor::elements() const {
    std::uint64_t n = 1;
    for (auto d : dims) n *= d;
    return n;
}

GgufFile::~GgufFile() {
    if (mapping_ != nullptr) ::munmap(mapping_, size_);
}

std::shared_ptr<const GgufFile> GgufFile::open(const std::string& path) {
    // O_NONBLOCK: open() of a FIFO would otherwise wait for a writer before fstat could reject
    // it. On a regular file the flag changes nothing, so it is kept.
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) throw GgufError(path + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        throw GgufError(path + ": not a regular file");
    }
    if (st.st_size < 24) {
        ::close(fd);
        throw GgufError(path + ": truncated file: " + std::to_string(st.st_size) + " bytes is smaller than a GGUF header");
    }
    void* map = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (map == MAP_FAILED) throw GgufError(path + ": mmap failed: " + std::strerror(errno));
    std::shared_ptr<GgufFile> file(new GgufFile());
    file->path_ = path;
    file->mapping_ = map;
    file->size_ = static_cast<std::uint64_t>(st.st_size);
    file->parse_all(static_cast<const std::uint8_t*>(map), file->size_);
    return file;
}

std::shared_ptr<const GgufFile> GgufFile::parse(std::span<const std::uint8_t> bytes, const std::string& name) {
    std::shared_ptr<GgufFile> file(new GgufFile());
    file->path_ = name;
    file->size_ = bytes.size();
    file->parse_all(bytes.data(), bytes.size());
    return file;
}

void GgufFile::parse_all(const std::uint8_t* base, std::uint64_t size) {
    Cursor c(base, size, path_);
    const auto magic = c.read<std::uint32_t>("magic");
    if (magic != kMagic) c.fail("not a GGUF file (bad magic)");
    version_ = c.read<std::uint32_t>("version");
    if (version_ != 3 && version_ != 2) c.fail("unsupported GGUF version " + std::to_string(version_) + " (2 and 3 are read)");
    const auto tensor_count = c.read<std::uint64_t>("tensor count");
    const auto kv_count = c.read<std::uint64_t>("metadata count");
    if (tensor_count > kMaxCount) c.fail("tensor count " + std::to_string(tensor_count) + " is implausible");
    if (kv_count > kMaxCount) c.fail("metadata count " + std::to_string(kv_count) + " is implausible");
    for (std::uint64_t i = 0; i < kv_count; ++i) {
        std::string key = c.read_string("metadata key");
        const auto type = c.read<std::uint32_t>("metadata type");
        GgufValue value = read_value(c, type, 0);
        // Two values for one key: which one a reader means is anyone's guess, so neither is used.
        if (!metadata_.emplace(key, std::move(value)).second) c.fail("metadata key " + key + " appears twice");
    }
    for (std::uint64_t i = 0; i < tensor_count; ++i) {
        GgufTensor t;
        t.name = c.read_string("tensor name");
        const auto dims = c.read<std::uint32_t>("tensor rank");
        if (dims == 0 || dims > 4) c.fail("tensor " + t.name + " has rank " + std::to_string(dims) + " (1 to 4 supported)");
        std::uint64_t elements = 1;
        for (std::uint32_t d = 0; d < dims; ++d) {
            const auto extent = c.read<std::uint64_t>("tensor dimension");
            if (extent == 0 || extent > (std::uint64_t{1} << 40) || elements > (std::uint64_t{1} << 40) / extent)
                c.fail("tensor " + t.name + " has an implausible dimension " + std::to_string(extent));
            elements *= extent;
            t.dims.push_back(extent);
        }
        const auto type = c.read<std::uint32_t>("tensor type");
        t.type = static_cast<GgmlType>(type);
        // Any type ggml defines parses, read by kvfuse or not: whether a tensor's type matters
        // is the model's question (a file may carry tensors it never reads). A known type's
        // extent is checked like any other; an id ggml does not define has no known extent.
        t.traits = find_type_traits(type);
        if (t.traits != nullptr) {
            const auto row = t.traits->row_bytes(t.dims[0]);
            if (!row)
                c.fail("tensor " + t.name + " of type " + t.traits->name + ": its rows of " + std::to_string(t.dims[0]) +
                       " values are not whole blocks of " + std::to_string(t.traits->block_elements));
            t.bytes = *row * (elements / t.dims[0]);
        }
        t.offset = c.read<std::uint64_t>("tensor offset");
        if (by_name_.count(t.name)) c.fail("tensor " + t.name + " appears twice");
        by_name_[t.name] = tensors_.size();
        tensors_.push_back(std::move(t));
    }
    std::uint64_t alignment = 32;
    if (const auto* a = find("general.alignment")) {
        const auto* value = std::get_if<std::uint64_t>(a);
        if (value == nullptr || *value == 0 || (*value & (*value - 1)) != 0 || *value > 65536)
            c.fail("general.alignment must be a power of two up to 65536");
        alignment = *value;
    }
    const std::uint64_t data_start = (c.position() + alignment - 1) / alignment * alignment;
    // A vocabulary-only file (no tensors, as llama.cpp's ggml-vocab-*.gguf) may end before the
    // padding of its empty data section.
    if (data_start > size && !tensors_.empty()) c.fail("truncated file: the tensor data section starts past the end");
    const std::uint64_t data_size = data_start > size ? 0 : size - data_start;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
    for (auto& t : tensors_) {
        if (t.traits == nullptr) continue;
        if (t.offset % alignment != 0) c.fail("tensor " + t.name + " offset " + std::to_string(t.offset) + " is not aligned");
        if (t.offset > data_size || t.bytes > data_size - t.offset)
            c.fail("tensor " + t.name + " (offset " + std::to_string(t.offset) + ", " + std::to_string(t.bytes) +
                   " bytes) runs past the end of the file (truncated or bad offset)");
        t.data = base + data_start + t.offset;
        ranges.emplace_back(t.offset, t.offset + t.bytes);
    }
    std::sort(ranges.begin(), ranges.end());
    for (std::size_t i = 1; i < ranges.size(); ++i)
        if (ranges[i].first < ranges[i - 1].second) c.fail("tensors overlap in the data section");
}

const GgufValue* GgufFile::find(const std::string& key) const {
    auto it = metadata_.find(key);
    return it == metadata_.end() ? nullptr : &it->second;
}

std::uint64_t GgufFile::get_uint(const std::string& key) const {
    const GgufValue* v = find(key);
    if (v == nullptr) throw GgufError(path_ + ": missing metadata " + key);
    if (auto* u = std::get_if<std::uint64_t>(v)) return *u;
    if (auto* s = std::get_if<std::int64_t>(v); s && *s >= 0) return static_cast<std::uint64_t>(*s);
    throw GgufError(path_ + ": metadata " + key + " is not a non-negative integer");
}

std::uint64_t GgufFile::get_uint_or(const std::string& key, std::uint64_t fallback) const {
    return has(key) ? get_uint(key) : fallback;
}

std::uint64_t GgufFile::get_uint_in(const std::string& key, std::uint64_t min, std::uint64_t max) const {
    const GgufValue* v = find(key);
    if (v == nullptr) throw GgufError(path_ + ": missing metadata " + key);
    std::string shown;
    if (auto* u = std::get_if<std::uint64_t>(v)) {
        if (*u >= min && *u <= max) return *u;
        shown = std::to_string(*u);
    } else if (auto* s = std::get_if<std::int64_t>(v)) {
        if (*s >= 0 && static_cast<std::uint64_t>(*s) >= min && static_cast<std::uint64_t>(*s) <= max)
            return static_cast<std::uint64_t>(*s);
        shown = std::to_string(*s);
    } else {
        throw GgufError(path_ + ": metadata " + key + " is not an integer");
    }
    throw GgufError(path_ + ": metadata " + key + " = " + shown + " is outside [" + std::to_string(min) + ", " +
                    std::to_string(max) + "]");
}

std::uint64_t GgufFile::get_uint_in_or(const std::string& key, std::uint64_t fallback, std::uint64_t min,
                                       std::uint64_t max) const {
    return has(key) ? get_uint_in(key, min, max) : fallback;
}

double GgufFile::get_float_in(const std::string& key, double min, double max) const {
    const double value = get_float(key);
    if (!(std::isfinite(value) && value >= min && value <= max)) {
        char text[160];
        std::snprintf(text, sizeof text, " = %g is not a finite number in [%g, %g]", value, min, max);
        throw GgufError(path_ + ": metadata " + key + text);
    }
    return value;
}

double GgufFile::get_float_in_or(const std::string& key, double fallback, double min, double max) const {
    return has(key) ? get_float_in(key, min, max) : fallback;
}

double GgufFile::get_float(const std::string& key) const {
    const GgufValue* v = find(key);
    if (v == nullptr) throw GgufError(path_ + ": missing metadata " + key);
    if (auto* d = std::get_if<double>(v)) return *d;
    if (auto* u = std::get_if<std::uint64_t>(v)) return static_cast<double>(*u);
    if (auto* s = std::get_if<std::int64_t>(v)) return static_cast<double>(*s);
    throw GgufError(path_ + ": metadata " + key + " is not a number");
}

double GgufFile::get_float_or(const std::string& key, double fallback) const { return has(key) ? get_float(key) : fallback; }

std::string GgufFile::get_string(const std::string& key) const {
    const GgufValue* v = find(key);
    if (v == nullptr) throw GgufError(path_ + ": missing metadata " + key);
    if (auto* s = std::get_if<std::string>(v)) return *s;
    throw GgufError(path_ + ": metadata " + key + " is not a string");
}

const std::vector<std::string>& GgufFile::get_strings(const std::string& key) const {
    const GgufValue* v = find(key);
    if (v == nullptr) throw GgufError(path_ + ": missing metadata " + key);
    if (auto* s = std::get_if<std::vector<std::string>>(v)) return *s;
    throw GgufError(path_ + ": metadata " + key + " is not a list of strings");
}

std::vector<double> GgufFile::get_floats(const std::string& key) const {
    const GgufValue* v = find(key);
    if (v == nullptr) throw GgufError(path_ + ": missing metadata " + key);
    if (auto* d = std::get_if<std::vector<double>>(v)) return *d;
    if (auto* i = std::get_if<std::vector<std::int64_t>>(v)) return std::vector<double>(i->begin(), i->end());
    throw GgufError(path_ + ": metadata " + key + " is not a list of numbers");
}

const GgufTensor* GgufFile::tensor(const std::string& name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensor& GgufFile::require_tensor(const std::string& name) const {
    const GgufTensor* t = tensor(name);
    if (t == nullptr) throw GgufError(path_ + ": missing tensor " + name);
    return *t;
}

void GgufFile::require_readable(const GgufTensor& t) const {
    if (!t.readable())
        throw GgufError(path_ + ": tensor " + t.name + " has type " + t.type_name() + ", which kvfuse does not read (" +
                        supported_type_names() + " are read)");
}

void GgufFile::dequantize_rows(const GgufTensor& t, std::uint64_t first, std::uint64_t count, float* out) const {
    require_readable(t);
    if (first > t.rows() || count > t.rows() - first)
        throw GgufError(path_ + ": tensor " + t.name + ": rows " + std::to_string(first) + " + " + std::to_string(count) +
                        " are past its " + std::to_string(t.rows()) + " rows");
    const std::uint64_t row_bytes = t.bytes / t.rows();
    t.traits->dequantize_row(t.data + first * row_bytes, out, static_cast<std::size_t>(count * t.row_length()));
}

std::vector<float> GgufFile::read_f32(const GgufTensor& t) const {
    require_readable(t);
    std::vector<float> out(t.elements());
    dequantize_rows(t, 0, t.rows(), out.data());
    return out;
}

}  // namespace kvfuse::model
