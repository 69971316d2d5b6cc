// What the library does at start-up with KVFUSE_PROFILE, each case in a fresh process (the
// profile is read once, on the first kernel call): a good profile is applied and named by
// kvfuse_profile_status, a corrupt one is reported and ignored, "none" keeps the defaults; a
// directory or a FIFO at the path is reported and ignored too (once an uncaught exception that
// aborted the host, and a hang in open()), and kvfuse_load_profile returns KVFUSE_ERROR_IO for
// them. ctest's timeout catches a hang.
//   test_tuning_startup good|corrupt|none|directory|fifo
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "kvfuse/kvfuse.h"

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const std::string mode = argv[1];
    const std::filesystem::path path =
        std::filesystem::temp_directory_path() / ("kvfuse-startup-" + std::to_string(::getpid()) + ".json");
    kvfuse_tuning defaults{}, tuned{};
    kvfuse_default_tuning(&defaults);
    tuned = defaults;
    tuned.topk_sample = 4096;
    tuned.score_query_rows = 2;
    if (mode == "good") {
        if (kvfuse_save_profile(path.c_str(), &tuned, nullptr) != KVFUSE_OK) return 3;
    } else if (mode == "corrupt") {
        std::ofstream(path) << "{\"format\": \"kvfuse-tuning-profile\", \"format_ver";
    } else if (mode == "directory") {
        std::filesystem::create_directory(path);
    } else if (mode == "fifo") {
        if (::mkfifo(path.c_str(), 0600) != 0) return 3;
    }
    setenv("KVFUSE_PROFILE", mode == "none" ? "none" : path.c_str(), 1);
    kvfuse_tuning now{};
    kvfuse_get_tuning(&now);  // the first read loads the profile
    const std::string status = kvfuse_profile_status();
    const kvfuse_status load = kvfuse_load_profile(path.c_str());
    const std::string load_error = kvfuse_last_error();
    std::filesystem::remove(path);
    std::printf("%s: %s\n", mode.c_str(), status.c_str());
    const bool applied = now.topk_sample == 4096 && now.score_query_rows == 2;
    const bool untouched = now.topk_sample == defaults.topk_sample && now.score_query_rows == defaults.score_query_rows;
    if (mode == "good") return applied && status.find(path.string()) != std::string::npos ? 0 : 1;
    if (mode == "corrupt") return untouched && status.find("ignored") != std::string::npos ? 0 : 1;
    if (mode == "directory" || mode == "fifo") {
        std::printf("kvfuse_load_profile: %s (%s)\n", kvfuse_status_message(load), load_error.c_str());
        return untouched && status.find("ignored") != std::string::npos && status.find("not a regular file") != std::string::npos &&
                       load == KVFUSE_ERROR_IO && load_error.find("not a regular file") != std::string::npos
                   ? 0
                   : 1;
    }
    return untouched && status.find("KVFUSE_PROFILE=none") != std::string::npos ? 0 : 1;
}
