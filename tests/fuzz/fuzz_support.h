// Shared by the fuzz targets: a path whose file holds exactly the fuzzer's bytes (for readers
// that take a path), and a finding that is not a sanitizer report (a violated property).
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace kvfuse::fuzz {

// An anonymous in-memory file (memfd) reached through /proc/self/fd: rewritten for every input,
// so a reader that opens a path sees exactly the input, without touching the disk.
class InputFile {
   public:
    InputFile() {
        fd_ = ::memfd_create("kvfuse-fuzz-input", MFD_CLOEXEC);
        if (fd_ < 0) {
            std::perror("memfd_create");
            std::abort();
        }
        path_ = "/proc/self/fd/" + std::to_string(fd_);
    }
    const std::string& write(const std::uint8_t* data, std::size_t size) {
        if (::ftruncate(fd_, 0) != 0 || (size > 0 && ::pwrite(fd_, data, size, 0) != static_cast<ssize_t>(size))) {
            std::perror("writing the fuzz input file");
            std::abort();
        }
        return path_;
    }

   private:
    int fd_ = -1;
    std::string path_;
};

// A property the target checks failed: report it and abort, which libFuzzer records as a crash
// with its input.
[[noreturn]] inline void property_failed(const char* what, const std::string& detail = {}) {
    std::fprintf(stderr, "fuzz property violated: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
    std::abort();
}

}  // namespace kvfuse::fuzz
