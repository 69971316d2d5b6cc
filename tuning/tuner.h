// kvfuse_tuner: the search behind `kvfuse tune` and the settings bench_tuning compares.
//
// It measures, on this machine, which compiled ISA each kernel should run on and the kernels'
// parameters (kvfuse_tuning), at shapes the caller gives. Every choice starts from the
// default (the active ISA, the built-in parameters) and keeps a candidate only if a final
// side-by-side round (default and candidate alternating, at least 5 pairs) shows it faster by
// more than kNoiseMargin in the median times and in the median of the pairs' ratios, so a tuned
// setting never loses to the default by more than noise.
//
// Uses the public API only (kvfuse.hpp); the caller finds the shapes (from a model or not).
#pragma once

#include <array>
#include <cstddef>
#include <functional>
#include <optional>
#include <string>

#include "kvfuse/kvfuse.hpp"

namespace kvfuse::tuner {

// A candidate must take less than this fraction of the default's time to replace it.
constexpr double kNoiseMargin = 0.97;

struct Shapes {
    std::size_t heads = 32, kv_heads = 8, head_dim = 128, context = 4096;
    std::string source = "default shapes";
};

// Everything a profile sets: the parameters and, per kernel (indexed by kvfuse::Kernel), the
// ISA it runs on (empty: the active ISA).
struct Settings {
    Tuning tuning{};
    std::array<std::optional<Isa>, KVFUSE_KERNEL_COUNT> kernel_isa{};
};

// The built-in defaults: default parameters, every kernel on the active ISA.
Settings default_settings();
// What is in force now (the start-up profile, kvfuse_load_profile, or the program's choices).
Settings settings_in_force();
// For programs (the `kvfuse` CLI, bench_tuning): loads this machine's profile from
// kvfuse_default_profile_path unless KVFUSE_PROFILE is set (the library has read that one).
// Returns why a profile there was not used; empty when it was loaded or there is none.
std::string load_machine_profile();
// Applies parameters and per-kernel ISAs; on failure the reason (nothing is half-applied for
// the parameters; the ISA choices are all-or-nothing per kernel).
Status apply(const Settings& settings);
// "rope avx512, attention avx2 (profile), ..." as in force now, with where each came from.
std::string describe_kernel_isas();

struct Options {
    bool quick = false;                             // small sizes, single runs: a smoke test
    std::function<void(const std::string&)> progress;  // one line per step (may be empty)
};

struct Result {
    Settings settings;
    std::string measurements_json;  // every timing behind every choice, for the profile
};

// Runs every search at `shapes` and returns the chosen settings; leaves the settings in force
// as they were on entry. Throws std::runtime_error when a kernel call fails.
Result tune(const Shapes& shapes, const Options& options);

}  // namespace kvfuse::tuner
