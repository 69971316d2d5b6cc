// Scratch files for tests that write real files (tuning profiles, ...): a fresh directory per
// test under the system's temporary directory, and a file read whole.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace kvfuse::testing {

// <tmp>/kvfuse-test-<suite>-<pid>-<name>, emptied and created.
inline std::filesystem::path fresh_scratch_dir(const std::string& suite, const std::string& name) {
    const std::filesystem::path dir =
        std::filesystem::temp_directory_path() / ("kvfuse-test-" + suite + "-" + std::to_string(::getpid()) + "-" + name);
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    return dir;
}

inline std::string read_whole_file(const std::filesystem::path& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace kvfuse::testing
