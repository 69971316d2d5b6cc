// What the library does at start-up with KVFUSE_PROFILE, each case in a fresh process (the
// profile is read once, on the first kernel call): a good profile is applied and named by
// kvfuse_profile_status, a corrupt one is reported and ignored, "none" keeps the defaults; a
// directory or a FIFO at the path is reported and ignored too (once an uncaught exception that
// aborted the host, and a hang in open()), and kvfuse_load_profile returns KVFUSE_ERROR_IO for
// them. ctest's timeout catches a hang. A profile's per-kernel ISA is applied, overridden by
// KVFUSE_ISA, and refused (the whole profile ignored, with the reason) when this build or CPU
// cannot run it. With KVFUSE_PROFILE unset the library reads no file, not even a good profile
// at this machine's default path (a program loads that one with kvfuse_load_profile).
//   test_tuning_startup good|corrupt|none|directory|fifo|kernel_isa|kernel_isa_forced|kernel_isa_unsupported|unset
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "kvfuse/kvfuse.h"

namespace {

// The ISA the library picks with no KVFUSE_ISA (asked without starting the library up: asking
// for the active ISA would load the start-up profile before KVFUSE_PROFILE is set).
kvfuse_isa best_supported() {
    for (kvfuse_isa isa : {KVFUSE_ISA_AVX512, KVFUSE_ISA_AVX2, KVFUSE_ISA_NEON})
        if (kvfuse_isa_supported(isa)) return isa;
    return KVFUSE_ISA_SCALAR;
}

// Rewrites the saved profile's "topk": "auto" to `isa_name`.
bool choose_topk_isa(const std::filesystem::path& path, const std::string& isa_name) {
    std::string text;
    {
        std::ifstream in(path);
        text.assign(std::istreambuf_iterator<char>(in), {});
    }
    const std::string from = "\"topk\": \"auto\"";
    const auto at = text.find(from);
    if (at == std::string::npos) return false;
    text.replace(at, from.size(), "\"topk\": \"" + isa_name + "\"");
    std::ofstream(path, std::ios::trunc) << text;
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const std::string mode = argv[1];
    const std::filesystem::path path =
        std::filesystem::temp_directory_path() / ("kvfuse-startup-" + std::to_string(::getpid()) + ".json");
    kvfuse_tuning defaults, tuned;
    kvfuse_tuning_init(&defaults);
    kvfuse_default_tuning(&defaults);
    tuned = defaults;
    tuned.topk_sample = 4096;
    tuned.score_query_rows = 2;
    const bool kernel_isa_mode = mode.rfind("kernel_isa", 0) == 0;
    const kvfuse_isa best = best_supported();
    std::string topk_choice = "scalar";
    if (mode == "kernel_isa_unsupported") {
        topk_choice.clear();
        for (int i = 0; i < KVFUSE_ISA_COUNT; ++i)
            if (!kvfuse_isa_supported(static_cast<kvfuse_isa>(i))) topk_choice = kvfuse_isa_name(static_cast<kvfuse_isa>(i));
        if (topk_choice.empty()) return 77;
    }
    if (mode == "unset") {
        const std::filesystem::path cache =
            std::filesystem::temp_directory_path() / ("kvfuse-startup-cache-" + std::to_string(::getpid()));
        setenv("XDG_CACHE_HOME", cache.c_str(), 1);
        unsetenv("KVFUSE_PROFILE");
        char default_path[4096];
        if (kvfuse_default_profile_path(default_path, sizeof default_path) != KVFUSE_OK) return 3;
        if (kvfuse_save_profile(default_path, &tuned, nullptr) != KVFUSE_OK) return 3;
        kvfuse_tuning now;
        kvfuse_tuning_init(&now);
        kvfuse_get_tuning(&now);  // the first call: start-up
        const std::string status = kvfuse_profile_status();
        const bool untouched = now.topk_sample == defaults.topk_sample && now.score_query_rows == defaults.score_query_rows;
        const kvfuse_status load = kvfuse_load_profile(default_path);
        kvfuse_get_tuning(&now);
        const bool applied = now.topk_sample == 4096 && now.score_query_rows == 2;
        std::filesystem::remove_all(cache);
        std::printf("unset: %s; then kvfuse_load_profile: %s\n", status.c_str(), kvfuse_status_message(load));
        return untouched && status.find("KVFUSE_PROFILE not set") != std::string::npos && load == KVFUSE_OK && applied ? 0 : 1;
    }
    // The profile is keyed by the ISA in use: set KVFUSE_ISA before making it.
    if (mode == "kernel_isa_forced") setenv("KVFUSE_ISA", kvfuse_isa_name(best), 1);
    if (mode == "good" || kernel_isa_mode) {
        if (kvfuse_save_profile(path.c_str(), &tuned, nullptr) != KVFUSE_OK) return 3;
        if (kernel_isa_mode && !choose_topk_isa(path, topk_choice)) return 4;
    } else if (mode == "corrupt") {
        std::ofstream(path) << "{\"format\": \"kvfuse-tuning-profile\", \"format_ver";
    } else if (mode == "directory") {
        std::filesystem::create_directory(path);
    } else if (mode == "fifo") {
        if (::mkfifo(path.c_str(), 0600) != 0) return 3;
    }
    setenv("KVFUSE_PROFILE", mode == "none" ? "none" : path.c_str(), 1);
    kvfuse_isa topk_isa = KVFUSE_ISA_SCALAR, rope_isa = KVFUSE_ISA_SCALAR;
    const char* topk_source = "";
    const char* rope_source = "";
    // For the kernel_isa modes the first call is this one: the profile loads on the way.
    if (kvfuse_kernel_isa(KVFUSE_KERNEL_TOPK, &topk_isa, &topk_source) != KVFUSE_OK ||
        kvfuse_kernel_isa(KVFUSE_KERNEL_ROPE, &rope_isa, &rope_source) != KVFUSE_OK)
        return 5;
    kvfuse_tuning now;
    kvfuse_tuning_init(&now);
    kvfuse_get_tuning(&now);
    const std::string status = kvfuse_profile_status();
    const kvfuse_status load = kvfuse_load_profile(path.c_str());
    const std::string load_error = kvfuse_last_error();
    std::filesystem::remove(path);
    std::printf("%s: %s; topk on %s (%s), rope on %s (%s)\n", mode.c_str(), status.c_str(), kvfuse_isa_name(topk_isa),
                topk_source, kvfuse_isa_name(rope_isa), rope_source);
    const bool applied = now.topk_sample == 4096 && now.score_query_rows == 2;
    const bool untouched = now.topk_sample == defaults.topk_sample && now.score_query_rows == defaults.score_query_rows;
    const bool loaded = status.find(path.string()) != std::string::npos && status.find("ignored") == std::string::npos;
    const bool rope_default = rope_isa == best && std::string(rope_source) == (mode == "kernel_isa_forced" ? "KVFUSE_ISA" : "default");
    if (mode == "good") return applied && loaded ? 0 : 1;
    if (mode == "corrupt") return untouched && status.find("ignored") != std::string::npos ? 0 : 1;
    if (mode == "directory" || mode == "fifo") {
        std::printf("kvfuse_load_profile: %s (%s)\n", kvfuse_status_message(load), load_error.c_str());
        return untouched && status.find("ignored") != std::string::npos && status.find("not a regular file") != std::string::npos &&
                       load == KVFUSE_ERROR_IO && load_error.find("not a regular file") != std::string::npos
                   ? 0
                   : 1;
    }
    if (mode == "kernel_isa")
        return applied && loaded && topk_isa == KVFUSE_ISA_SCALAR && std::string(topk_source) == "profile" && rope_default ? 0 : 1;
    if (mode == "kernel_isa_forced")
        return applied && loaded && topk_isa == best && std::string(topk_source) == "KVFUSE_ISA" && rope_default ? 0 : 1;
    if (mode == "kernel_isa_unsupported")
        return untouched && status.find("ignored") != std::string::npos &&
                       status.find("kernel_isa.topk is " + topk_choice) != std::string::npos && topk_isa == best &&
                       std::string(topk_source) == "default" && rope_default
                   ? 0
                   : 1;
    return untouched && status.find("KVFUSE_PROFILE=none") != std::string::npos ? 0 : 1;
}
