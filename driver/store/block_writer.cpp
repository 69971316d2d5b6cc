#include "store/block_writer.h"

#include <cerrno>
#include <cstring>
#include <unistd.h>

namespace kvfuse::store {
namespace {

bool pwrite_all(int fd, const std::byte* data, size_t bytes, uint64_t offset) {
    while (bytes > 0) {
        const ssize_t written = ::pwrite(fd, data, bytes, static_cast<off_t>(offset));
        if (written < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        data += written;
        offset += static_cast<uint64_t>(written);
        bytes -= static_cast<size_t>(written);
    }
    return true;
}

}  // namespace

BlockWriter::BlockWriter(int fd, size_t first_block_min_bytes) : fd_(fd) {
    const size_t first_bytes =
        (first_block_min_bytes + kBlockBytes - 1) / kBlockBytes * kBlockBytes;
    current_.resize(first_bytes == 0 ? kBlockBytes : first_bytes);
}

bool BlockWriter::append(std::span<const std::byte> bytes) {
    while (!bytes.empty()) {
        const size_t take = std::min(bytes.size(), current_.size() - filled_);
        std::memcpy(current_.data() + filled_, bytes.data(), take);
        filled_ += take;
        bytes = bytes.subspan(take);
        if (filled_ == current_.size() && !flush_current()) return false;
    }
    return true;
}

bool BlockWriter::append_zeros(size_t count) {
    while (count > 0) {
        const size_t take = std::min(count, current_.size() - filled_);
        std::memset(current_.data() + filled_, 0, take);
        filled_ += take;
        count -= take;
        if (filled_ == current_.size() && !flush_current()) return false;
    }
    return true;
}

std::span<std::byte> BlockWriter::first_block_prefix(size_t bytes) {
    std::vector<std::byte>& first = first_full_ ? first_ : current_;
    return std::span(first).first(bytes);
}

bool BlockWriter::flush_current() {
    if (!first_full_) {
        // The first block waits for finish(); later blocks are the standard size.
        first_ = std::move(current_);
        first_full_ = true;
        current_.assign(kBlockBytes, std::byte{0});
    } else if (!pwrite_all(fd_, current_.data(), filled_, current_offset_)) {
        return false;
    }
    current_offset_ += filled_;
    filled_ = 0;
    return true;
}

bool BlockWriter::finish() {
    if (!first_full_) return pwrite_all(fd_, current_.data(), filled_, 0);
    if (filled_ > 0 && !pwrite_all(fd_, current_.data(), filled_, current_offset_)) return false;
    return pwrite_all(fd_, first_.data(), first_.size(), 0);
}

}  // namespace kvfuse::store
