// Tuning parameters and the per-machine profile that sets them (see kvfuse.h, "tuning").
//
// A profile is only trusted for the machine it was measured on: its "machine" object (CPU
// model string, ISA in use, core count, L1d and L2 sizes) and kvfuse's major.minor version must
// match this process exactly, and every parameter must validate; otherwise it is ignored and
// the reason kept for kvfuse_profile_status.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>

#include "dispatch/api_checks.h"
#include "dispatch/cpu_features.h"
#include "dispatch/dispatch.h"
#include "dispatch/errors.h"
#include "dispatch/struct_versions.h"
#include "kernels/tuning.h"
#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {

namespace {

constexpr const char* kFormat = "kvfuse-tuning-profile";
constexpr int kFormatVersion = 1;

struct Machine {
    std::string cpu, isa;
    long long cores = 0, l1d_bytes = 0, l2_bytes = 0;
};

// The facts a profile is keyed by, read once (hwloc's topology load is not free).
const kvfuse_topology& topology() {
    static const kvfuse_topology t = [] {
        kvfuse_topology topo;
        kvfuse_topology_init(&topo);
        if (kvfuse_get_topology(&topo) != KVFUSE_OK || topo.cores <= 0)
            topo.cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
        return topo;
    }();
    return t;
}

Machine this_machine() {
    Machine m;
    const kvfuse_cpu_features cpu = kvfuse::detail::cpu_features();
    m.cpu = cpu.brand[0] != '\0' ? cpu.brand : "unknown";
    const KernelTable* table = nullptr;
    // The ISA-wide choice: per-kernel ISAs are what a profile sets, not what it is keyed by.
    m.isa = isa_wide_kernels(table) == KVFUSE_OK ? kvfuse_isa_name(table->isa) : "none";
    m.cores = topology().cores;
    m.l1d_bytes = topology().l1d_bytes;
    m.l2_bytes = topology().l2_bytes;
    return m;
}

kvfuse_tuning built_in_defaults() {
    kvfuse_tuning t{};
    t.attention_key_tile = 0;  // from the L1 size
    t.attention_row_block = 16;
    t.score_query_rows = 4;
    t.topk_sample = 1024;
    t.rope_parallel_work = std::uint64_t{1} << 17;
    t.attention_parallel_work = 200'000;
    t.score_parallel_work = 1'000'000;
    t.topk_parallel_work = 4096;
    // 64 K values (256 KiB of f32) take one core about 20 us through the key quantizers
    // (bench_quantize's one-thread rate on the Zen 5 VM, ~12 GB/s): above that a second worker pays off.
    t.quantize_parallel_work = std::uint64_t{1} << 16;
    return t;
}

// Empty when valid, else what is wrong.
std::string invalid(const kvfuse_tuning& t) {
    const std::uint32_t tile = t.attention_key_tile;
    if (tile != 0 && tile != 32 && tile != 64 && tile != 128) return "attention_key_tile must be 0, 32, 64 or 128";
    if (t.attention_row_block < 1 || t.attention_row_block > 64) return "attention_row_block must be in 1..64";
    if (t.score_query_rows != 2 && t.score_query_rows != 4 && t.score_query_rows != 6)
        return "score_query_rows must be 2, 4 or 6";
    const std::uint32_t sample = t.topk_sample;
    if (sample < 256 || sample > 16384 || (sample & (sample - 1)) != 0)
        return "topk_sample must be a power of two in 256..16384";
    return {};
}

struct State {
    std::mutex mutex;
    kvfuse_tuning tuning = built_in_defaults();
    std::string status = "built-in defaults";
    bool started = false;
    // Every kernel call reads the tuning: it reads the last published snapshot without a lock.
    // Snapshots are immutable and kept until exit (a few dozen bytes per kvfuse_set_tuning),
    // so a reader holding an old one never sees it freed.
    std::deque<kvfuse_tuning> snapshots;
    std::atomic<const kvfuse_tuning*> published{nullptr};

    void publish_locked() {
        snapshots.push_back(tuning);
        published.store(&snapshots.back(), std::memory_order_release);
    }
};

State& state() {
    static State s;
    return s;
}

std::string slug(const std::string& text) {
    std::string out;
    for (char c : text) {
        const unsigned char u = static_cast<unsigned char>(c);
        if (std::isalnum(u))
            out += static_cast<char>(std::tolower(u));
        else if (!out.empty() && out.back() != '-')
            out += '-';
    }
    while (!out.empty() && out.back() == '-') out.pop_back();
    return out.empty() ? "unknown" : out;
}

std::string default_path() {
    const Machine m = this_machine();
    std::string base;
    if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && xdg[0] == '/')
        base = xdg;
    else if (const char* home = std::getenv("HOME"); home != nullptr && home[0] != '\0')
        base = std::string(home) + "/.cache";
    else
        return {};
    return base + "/kvfuse/tuning/" + slug(m.cpu) + "_" + m.isa + "_" + std::to_string(m.cores) + "c_l1d" +
           std::to_string(m.l1d_bytes / 1024) + "k_l2" + std::to_string(m.l2_bytes / 1024) + "k.json";
}

nlohmann::json machine_json(const Machine& m) {
    return {{"cpu", m.cpu}, {"isa", m.isa}, {"cores", m.cores}, {"l1d_bytes", m.l1d_bytes}, {"l2_bytes", m.l2_bytes}};
}

nlohmann::json tuning_json(const kvfuse_tuning& t) {
    return {{"attention_key_tile", t.attention_key_tile},
            {"attention_row_block", t.attention_row_block},
            {"score_query_rows", t.score_query_rows},
            {"topk_sample", t.topk_sample},
            {"rope_parallel_work", t.rope_parallel_work},
            {"attention_parallel_work", t.attention_parallel_work},
            {"score_parallel_work", t.score_parallel_work},
            {"topk_parallel_work", t.topk_parallel_work},
            {"quantize_parallel_work", t.quantize_parallel_work}};
}

std::string version_major_minor(const std::string& version) {
    const auto first = version.find('.');
    if (first == std::string::npos) return version;
    const auto second = version.find('.', first + 1);
    return version.substr(0, second);
}

// A profile is a few hundred bytes; anything far larger is not one (and must not be read whole).
constexpr off_t kMaxProfileBytes = 1 << 20;

// Reads a whole regular file into `text`; otherwise returns why not, starting "cannot open"
// (kvfuse_load_profile maps that to KVFUSE_ERROR_IO). Opened with O_NONBLOCK: a FIFO at the
// path would otherwise block open() until a writer came, hanging the process at start-up; the
// fstat then refuses anything that is not a regular file (FIFO, directory, device).
std::string read_regular_file(const std::string& path, std::string& text) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return "cannot open " + path + ": " + std::strerror(errno);
    struct stat st {};
    std::string why;
    if (::fstat(fd, &st) != 0) {
        why = "cannot open " + path + ": " + std::strerror(errno);
    } else if (!S_ISREG(st.st_mode)) {
        why = "cannot open " + path + ": not a regular file";
    } else if (st.st_size > kMaxProfileBytes) {
        why = path + " is " + std::to_string(st.st_size) + " bytes, too large for a tuning profile";
    } else {
        text.clear();
        char buffer[4096];
        for (;;) {
            const ssize_t got = ::read(fd, buffer, sizeof buffer);
            if (got > 0) {
                text.append(buffer, static_cast<std::size_t>(got));
                if (text.size() > static_cast<std::size_t>(kMaxProfileBytes)) {
                    why = path + " grew past " + std::to_string(kMaxProfileBytes) + " bytes while being read";
                    break;
                }
            } else if (got == 0) {
                break;
            } else if (errno != EINTR) {
                why = "cannot open " + path + ": read failed: " + std::strerror(errno);
                break;
            }
        }
    }
    ::close(fd);
    return why;
}

// Per-kernel ISA choices as a profile holds them: {"rope": "auto" | ISA name, ...}.
using KernelIsas = int[KVFUSE_KERNEL_COUNT];  // -1: the active ISA

// Empty when every name is known and this build and CPU run every chosen ISA, else why not.
std::string read_kernel_isas(const nlohmann::json& j, KernelIsas& out) {
    if (!j.is_object()) return "kernel_isa must be an object";
    for (int& isa : out) isa = -1;
    for (const auto& [name, value] : j.items()) {
        kvfuse_kernel kernel;
        if (kvfuse_kernel_from_name(name.c_str(), &kernel) != KVFUSE_OK) return "kernel_isa: '" + name + "' is not a kernel";
        if (!value.is_string()) return "kernel_isa." + name + " must be an ISA name or \"auto\"";
        const std::string isa_name = value.get<std::string>();
        if (isa_name == "auto") continue;
        kvfuse_isa isa;
        if (kvfuse_isa_from_name(isa_name.c_str(), &isa) != KVFUSE_OK)
            return "kernel_isa." + name + ": '" + isa_name + "' is not an ISA";
        if (kernels_for(isa) == nullptr)
            return "kernel_isa." + name + " is " + isa_name + ", which " +
                   (isa_compiled(isa) ? "this CPU cannot run" : "this build does not include");
        out[kernel] = static_cast<int>(isa);
    }
    return {};
}

nlohmann::json kernel_isas_json() {
    int isa[KVFUSE_KERNEL_COUNT];
    KernelIsaSource source[KVFUSE_KERNEL_COUNT];
    chosen_kernel_isas(isa, source);
    nlohmann::json j = nlohmann::json::object();
    for (int k = 0; k < KVFUSE_KERNEL_COUNT; ++k)
        j[kvfuse_kernel_name(static_cast<kvfuse_kernel>(k))] = isa[k] < 0 ? "auto" : kvfuse_isa_name(static_cast<kvfuse_isa>(isa[k]));
    return j;
}

// Parses and checks a profile; on success fills `out` and `kernel_isas`. Otherwise returns why not.
std::string read_profile(const std::string& path, kvfuse_tuning& out, KernelIsas& kernel_isas) {
    std::string text;
    if (std::string why = read_regular_file(path, text); !why.empty()) return why;
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        return path + " is not valid JSON (" + e.what() + ")";
    }
    try {
        if (!j.is_object() || j.value("format", "") != kFormat) return path + " is not a kvfuse tuning profile";
        if (!j.at("format_version").is_number_integer() || j.at("format_version") != kFormatVersion)
            return path + " has profile format " + j.at("format_version").dump() + ", this kvfuse reads " +
                   std::to_string(kFormatVersion);
        const std::string version = j.at("kvfuse_version").get<std::string>();
        if (version_major_minor(version) != version_major_minor(KVFUSE_VERSION_STRING))
            return path + " was made by kvfuse " + version + ", this is " + KVFUSE_VERSION_STRING;
        const nlohmann::json want = machine_json(this_machine());
        const nlohmann::json& have = j.at("machine");
        for (const auto& [key, value] : want.items())
            if (!have.contains(key) || have.at(key) != value)
                return path + " was made for another machine (" + key + ": " +
                       (have.contains(key) ? have.at(key).dump() : std::string("missing")) + ", here " + value.dump() + ")";
        const nlohmann::json& p = j.at("tuning");
        // Integers only, range-checked before narrowing: nlohmann's get<uint32_t>() casts a
        // float (1e30: undefined behaviour) and truncates a 64-bit value (2^32 + 64 -> 64).
        std::string bad_field;
        auto field = [&](const char* name, std::uint64_t max) -> std::uint64_t {
            const nlohmann::json& v = p.at(name);
            if (v.is_number_unsigned() && v.get<std::uint64_t>() <= max) return v.get<std::uint64_t>();
            if (bad_field.empty())
                bad_field = std::string(name) + " has a wrong type or is out of range (an integer in 0.." +
                            std::to_string(max) + " is needed)";
            return 0;
        };
        constexpr std::uint64_t u32_max = 0xffffffffu, u64_max = ~std::uint64_t{0};
        kvfuse_tuning t{};
        t.attention_key_tile = static_cast<std::uint32_t>(field("attention_key_tile", u32_max));
        t.attention_row_block = static_cast<std::uint32_t>(field("attention_row_block", u32_max));
        t.score_query_rows = static_cast<std::uint32_t>(field("score_query_rows", u32_max));
        t.topk_sample = static_cast<std::uint32_t>(field("topk_sample", u32_max));
        t.rope_parallel_work = field("rope_parallel_work", u64_max);
        t.attention_parallel_work = field("attention_parallel_work", u64_max);
        t.score_parallel_work = field("score_parallel_work", u64_max);
        // Added after the first profiles: absent means the built-in default.
        t.topk_parallel_work =
            p.contains("topk_parallel_work") ? field("topk_parallel_work", u64_max) : built_in_defaults().topk_parallel_work;
        t.quantize_parallel_work = p.contains("quantize_parallel_work") ? field("quantize_parallel_work", u64_max)
                                                                         : built_in_defaults().quantize_parallel_work;
        if (!bad_field.empty()) return path + ": " + bad_field;
        if (std::string why = invalid(t); !why.empty()) return path + ": " + why;
        KernelIsas isas = {-1, -1, -1, -1};  // profiles from before per-kernel ISAs: all auto
        if (j.contains("kernel_isa"))
            if (std::string why = read_kernel_isas(j.at("kernel_isa"), isas); !why.empty()) return path + ": " + why;
        out = t;
        std::copy(std::begin(isas), std::end(isas), std::begin(kernel_isas));
    } catch (const nlohmann::json::exception& e) {
        return path + " is missing a field or has a wrong type (" + e.what() + ")";
    }
    return {};
}

void load_startup_profile_locked(State& s) {
    s.started = true;
    const char* env = std::getenv("KVFUSE_PROFILE");
    std::string path;
    if (env != nullptr && std::strcmp(env, "none") == 0) {
        s.status = "built-in defaults (KVFUSE_PROFILE=none)";
        return;
    }
    // Only the file the environment names: a library linked into an engine reads no file of
    // its own accord (the program loads this machine's profile explicitly if it wants it).
    if (env == nullptr || env[0] == '\0') {
        s.status = "built-in defaults (KVFUSE_PROFILE not set; no profile loaded by the program)";
        return;
    }
    path = env;
    kvfuse_tuning t{};
    KernelIsas isas;
    // Called from inside kernels and from functions that return no status: nothing may escape.
    std::string why;
    try {
        why = read_profile(path, t, isas);
    } catch (const std::exception& e) {
        why = path + ": unexpected error (" + e.what() + ")";
    } catch (...) {
        why = path + ": unexpected error";
    }
    if (!why.empty()) {
        s.status = "built-in defaults; ignored profile: " + why;
        return;
    }
    if (set_kernel_isas(isas, KernelIsaSource::profile) != KVFUSE_OK) {
        s.status = std::string("built-in defaults; ignored profile: ") + path + ": " + last_error();
        return;
    }
    s.tuning = t;
    s.status = "profile " + path;
}

}  // namespace

std::string invalid_tuning(const kvfuse_tuning& tuning) { return invalid(tuning); }

kvfuse_tuning current_tuning() {
    State& s = state();
    if (const kvfuse_tuning* snapshot = s.published.load(std::memory_order_acquire)) return *snapshot;
    std::lock_guard<std::mutex> lock(s.mutex);
    if (!s.started) {
        load_startup_profile_locked(s);
        s.publish_locked();
    }
    return s.tuning;
}

std::size_t attention_key_tile(const kvfuse_tuning& tuning, std::size_t head_dim) {
    if (tuning.attention_key_tile != 0) return tuning.attention_key_tile;
    long long l1d = topology().l1d_bytes;
    if (l1d < 8 * 1024 || l1d > 1024 * 1024) l1d = 32 * 1024;  // unknown or implausible
    for (std::size_t tile : {128u, 64u})
        if (8 * head_dim * tile <= static_cast<std::size_t>(l1d) * 3 / 4) return tile;
    return 32;
}

}  // namespace kvfuse::detail

extern "C" {

kvfuse_status kvfuse_default_tuning(kvfuse_tuning* tuning) {
    return kvfuse::detail::guarded("kvfuse_default_tuning", [&] {
        return kvfuse::detail::write_struct("tuning", kvfuse::detail::built_in_defaults(), tuning);
    });
}

kvfuse_status kvfuse_get_tuning(kvfuse_tuning* tuning) {
    return kvfuse::detail::guarded("kvfuse_get_tuning", [&] {
        return kvfuse::detail::write_struct("tuning", kvfuse::detail::current_tuning(), tuning);
    });
}

kvfuse_status kvfuse_set_tuning(const kvfuse_tuning* tuning) {
    return kvfuse::detail::guarded("kvfuse_set_tuning", [&] {
        kvfuse_tuning t = kvfuse::detail::built_in_defaults();  // the fields an older caller's struct lacks
        if (tuning != nullptr)
            if (auto st = kvfuse::detail::read_struct("tuning", tuning, t); st != KVFUSE_OK) return st;
        if (std::string why = kvfuse::detail::invalid(t); !why.empty())
            return kvfuse::detail::fail(KVFUSE_ERROR_INVALID_ARGUMENT, why);
        auto& s = kvfuse::detail::state();
        std::lock_guard<std::mutex> lock(s.mutex);
        s.started = true;
        s.tuning = t;
        s.status = tuning != nullptr ? "set by the program (kvfuse_set_tuning)" : "built-in defaults (restored by the program)";
        s.publish_locked();
        return KVFUSE_OK;
    });
}

kvfuse_status kvfuse_load_profile(const char* path) {
    return kvfuse::detail::guarded("kvfuse_load_profile", [&] {
        if (path == nullptr) return kvfuse::detail::fail(KVFUSE_ERROR_NULL_POINTER, "path is required");
        kvfuse_tuning t{};
        kvfuse::detail::KernelIsas isas;
        if (std::string why = kvfuse::detail::read_profile(path, t, isas); !why.empty())
            return kvfuse::detail::fail(why.rfind("cannot open", 0) == 0 ? KVFUSE_ERROR_IO : KVFUSE_ERROR_BAD_PROFILE, why);
        if (const kvfuse_status st = kvfuse::detail::set_kernel_isas(isas, kvfuse::detail::KernelIsaSource::profile);
            st != KVFUSE_OK)
            return st;
        auto& s = kvfuse::detail::state();
        std::lock_guard<std::mutex> lock(s.mutex);
        s.started = true;
        s.tuning = t;
        s.status = std::string("profile ") + path;
        s.publish_locked();
        return KVFUSE_OK;
    });
}

kvfuse_status kvfuse_save_profile(const char* path, const kvfuse_tuning* tuning, const char* measurements_json) {
    return kvfuse::detail::guarded("kvfuse_save_profile", [&] {
        using kvfuse::detail::fail;
        if (path == nullptr || tuning == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "path and tuning are required");
        kvfuse_tuning given = kvfuse::detail::built_in_defaults();  // the fields an older caller's struct lacks
        if (auto st = kvfuse::detail::read_struct("tuning", tuning, given); st != KVFUSE_OK) return st;
        tuning = &given;
        if (std::string why = kvfuse::detail::invalid(*tuning); !why.empty()) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, why);
        nlohmann::json j;
        j["format"] = kvfuse::detail::kFormat;
        j["format_version"] = kvfuse::detail::kFormatVersion;
        j["kvfuse_version"] = KVFUSE_VERSION_STRING;
        j["machine"] = kvfuse::detail::machine_json(kvfuse::detail::this_machine());
        j["tuning"] = kvfuse::detail::tuning_json(*tuning);
        j["kernel_isa"] = kvfuse::detail::kernel_isas_json();
        if (measurements_json != nullptr) {
            try {
                j["measurements"] = nlohmann::json::parse(measurements_json);
            } catch (const nlohmann::json::exception& e) {
                return fail(KVFUSE_ERROR_INVALID_ARGUMENT, std::string("measurements_json is not JSON: ") + e.what());
            }
        }
        namespace fs = std::filesystem;
        std::error_code ec;
        const fs::path target(path);
        if (target.has_parent_path()) fs::create_directories(target.parent_path(), ec);
        if (ec) return fail(KVFUSE_ERROR_IO, "cannot create " + target.parent_path().string() + ": " + ec.message());
        // A temporary name in the same directory, then rename: readers see the old file or the
        // whole new one, never a part.
        const std::string temporary = std::string(path) + ".tmp." + std::to_string(::getpid());
        {
            std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
            out << j.dump(2) << '\n';
            out.flush();
            if (!out) {
                std::remove(temporary.c_str());
                return fail(KVFUSE_ERROR_IO, "cannot write " + temporary);
            }
        }
        if (std::rename(temporary.c_str(), path) != 0) {
            const std::string why = std::strerror(errno);
            std::remove(temporary.c_str());
            return fail(KVFUSE_ERROR_IO, std::string("cannot rename onto ") + path + ": " + why);
        }
        return KVFUSE_OK;
    });
}

kvfuse_status kvfuse_default_profile_path(char* path, size_t size) {
    return kvfuse::detail::guarded("kvfuse_default_profile_path", [&] {
        if (path == nullptr) return kvfuse::detail::fail(KVFUSE_ERROR_NULL_POINTER, "path is required");
        const std::string p = kvfuse::detail::default_path();
        if (p.empty()) return kvfuse::detail::fail(KVFUSE_ERROR_INVALID_ARGUMENT, "neither XDG_CACHE_HOME nor HOME is set");
        if (p.size() + 1 > size) return kvfuse::detail::fail(KVFUSE_ERROR_INVALID_ARGUMENT, "buffer too small for the path");
        std::memcpy(path, p.c_str(), p.size() + 1);
        return KVFUSE_OK;
    });
}

const char* kvfuse_profile_status(void) {
    thread_local std::string copy;
    try {
        (void)kvfuse::detail::current_tuning();  // loads the start-up profile if not yet done
        auto& s = kvfuse::detail::state();
        std::lock_guard<std::mutex> lock(s.mutex);
        copy = s.status;
        return copy.c_str();
    } catch (...) {
        return "unknown (out of memory while reading the profile status)";
    }
}

}  // extern "C"
