// Topology and thread placement. With hwloc (KVFUSE_WITH_HWLOC) the machine's packages,
// NUMA nodes, cores, PUs and caches come from it and OpenMP workers are pinned one per core;
// without it the counts come from the OS and placement is refused with a clear error, as it is
// in a build without OpenMP (KVFUSE_OPENMP=OFF: there are no OpenMP workers to pin).
#if defined(KVFUSE_HAVE_OPENMP)
#include <omp.h>
#endif
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "dispatch/api_checks.h"
#include "dispatch/errors.h"
#include "dispatch/struct_versions.h"
#include "kvfuse/kvfuse.h"

#if defined(KVFUSE_HAVE_HWLOC)
#include <hwloc.h>
#endif

using kvfuse::detail::fail;

namespace {

#if defined(KVFUSE_HAVE_HWLOC)
// One loaded topology per call: placement is rare and the topology can change (cgroups).
struct Topology {
    hwloc_topology_t handle = nullptr;
    Topology() {
        if (hwloc_topology_init(&handle) != 0) handle = nullptr;
        else if (hwloc_topology_load(handle) != 0) {
            hwloc_topology_destroy(handle);
            handle = nullptr;
        }
    }
    ~Topology() {
        if (handle) hwloc_topology_destroy(handle);
    }
    int count(hwloc_obj_type_t type) const { return hwloc_get_nbobjs_by_type(handle, type); }
};

// The topology that NUMA-local allocations are made and freed with: loaded once, kept.
const Topology& shared_topology() {
    static const Topology t;
    return t;
}

// PUs of the last placement (for NUMA-local allocation); empty until one succeeds.
std::mutex g_placement_mutex;
hwloc_bitmap_t g_placement = nullptr;

void remember_placement(hwloc_const_bitmap_t placed) {
    std::lock_guard<std::mutex> lock(g_placement_mutex);
    if (g_placement == nullptr) g_placement = hwloc_bitmap_alloc();
    hwloc_bitmap_copy(g_placement, placed);
}

std::int64_t cache_size(const Topology& t, hwloc_obj_type_t type) {
    hwloc_obj_t obj = hwloc_get_obj_by_type(t.handle, type, 0);
    return obj && obj->attr ? static_cast<std::int64_t>(obj->attr->cache.size) : 0;
}
#endif

}  // namespace

extern "C" {

// Unguarded body of kvfuse_get_topology (below).
static kvfuse_status get_topology_unguarded(kvfuse_topology* out) {
    if (out == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "topology is required");
    std::memset(out, 0, sizeof *out);
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    out->packages = out->numa_nodes = 1;
    out->cores = out->pus = online > 0 ? static_cast<int>(online) : 1;
    out->pus_per_core = 1;
#if defined(KVFUSE_HAVE_HWLOC)
    const Topology t;
    if (t.handle == nullptr) return KVFUSE_OK;
    out->from_hwloc = 1;
    out->packages = t.count(HWLOC_OBJ_PACKAGE) > 0 ? t.count(HWLOC_OBJ_PACKAGE) : 1;
    out->numa_nodes = t.count(HWLOC_OBJ_NUMANODE) > 0 ? t.count(HWLOC_OBJ_NUMANODE) : 1;
    out->cores = t.count(HWLOC_OBJ_CORE) > 0 ? t.count(HWLOC_OBJ_CORE) : out->cores;
    out->pus = t.count(HWLOC_OBJ_PU) > 0 ? t.count(HWLOC_OBJ_PU) : out->pus;
    out->pus_per_core = out->cores > 0 && out->pus >= out->cores ? out->pus / out->cores : 1;
    out->l1d_bytes = cache_size(t, HWLOC_OBJ_L1CACHE);
    out->l2_bytes = cache_size(t, HWLOC_OBJ_L2CACHE);
    out->l3_bytes = cache_size(t, HWLOC_OBJ_L3CACHE);
    // A VM may report the host's whole L3 (hundreds of MiB per core here): no tile size should
    // be seeded from that, so anything above 256 MiB counts as unknown.
    if (out->l3_bytes > (std::int64_t{256} << 20)) out->l3_bytes = 0;
    if (out->l2_bytes > (std::int64_t{64} << 20)) out->l2_bytes = 0;
#endif
    return KVFUSE_OK;
}

// Unguarded body of kvfuse_place_threads (below).
static kvfuse_status place_threads_unguarded(const kvfuse_placement_options* options, char* description,
                                             size_t description_size) {
    if (options == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "options are required");
    if (options->threads < 0) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "threads must be >= 0");
#if defined(KVFUSE_HAVE_HWLOC)
    const Topology t;
    if (t.handle == nullptr) return fail(KVFUSE_ERROR_INTERNAL, "hwloc could not load the topology");
    const int cores = t.count(HWLOC_OBJ_CORE), pus = t.count(HWLOC_OBJ_PU);
    const int slots = options->use_smt ? pus : (cores > 0 ? cores : pus);
    if (slots <= 0) return fail(KVFUSE_ERROR_INTERNAL, "hwloc reports no cores");
    const char* unit = options->use_smt || cores <= 0 ? "PU" : "core";
    std::vector<int> chosen;
    if (options->cores != nullptr || options->core_count != 0) {
        if (options->cores == nullptr || options->core_count <= 0)
            return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "cores and core_count go together");
        std::vector<bool> seen(static_cast<std::size_t>(slots), false);
        for (int i = 0; i < options->core_count; ++i) {
            const int c = options->cores[i];
            if (c < 0 || c >= slots)
                return fail(KVFUSE_ERROR_INVALID_ARGUMENT, std::string(unit) + " " + std::to_string(c) + " does not exist (there are " +
                                                               std::to_string(slots) + ", numbered from 0)");
            if (seen[static_cast<std::size_t>(c)])
                return fail(KVFUSE_ERROR_INVALID_ARGUMENT, std::string(unit) + " " + std::to_string(c) + " is listed twice");
            seen[static_cast<std::size_t>(c)] = true;
            chosen.push_back(c);
        }
    } else {
        for (int c = 0; c < slots; ++c) chosen.push_back(c);
    }
    const int available = static_cast<int>(chosen.size());
    const int threads = options->threads == 0 ? available : options->threads;
    if (threads > available)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT,
                    std::to_string(threads) + " threads but only " + std::to_string(available) + " " + unit + "s" +
                        (options->cores != nullptr ? " listed" : options->use_smt ? "" : " (use_smt to add siblings)"));
#if !defined(KVFUSE_HAVE_OPENMP)
    return fail(KVFUSE_ERROR_INTERNAL,
                "thread placement pins OpenMP's workers, and this build has no OpenMP (KVFUSE_OPENMP=OFF): pin "
                "the threads of the pool your contexts' parallel_for runs on");
#else
    omp_set_num_threads(threads);
    hwloc_bitmap_t placed = hwloc_bitmap_alloc();
    std::string lines;
    int failures = 0;
#pragma omp parallel num_threads(threads)
    {
        const int id = omp_get_thread_num();
        const unsigned slot = static_cast<unsigned>(chosen[static_cast<std::size_t>(id)]);
        hwloc_obj_t target = options->use_smt || cores <= 0 ? hwloc_get_obj_by_type(t.handle, HWLOC_OBJ_PU, slot)
                                                            : hwloc_get_obj_by_type(t.handle, HWLOC_OBJ_CORE, slot);
        hwloc_bitmap_t set = hwloc_bitmap_dup(target->cpuset);
        hwloc_bitmap_singlify(set);  // one PU of the core: the thread never migrates between siblings
        const int pu = hwloc_bitmap_first(set);
        const bool ok = hwloc_set_cpubind(t.handle, set, HWLOC_CPUBIND_THREAD) == 0;
        hwloc_bitmap_free(set);
        hwloc_obj_t core = hwloc_get_ancestor_obj_by_type(t.handle, HWLOC_OBJ_CORE, hwloc_get_pu_obj_by_os_index(t.handle, static_cast<unsigned>(pu)));
        char line[96];
        std::snprintf(line, sizeof line, "thread %d -> PU %d (core %d)%s\n", id, pu, core ? static_cast<int>(core->logical_index) : -1,
                      ok ? "" : " [binding refused]");
#pragma omp critical
        {
            lines += line;
            failures += ok ? 0 : 1;
            if (ok) hwloc_bitmap_set(placed, static_cast<unsigned>(pu));
        }
    }
    remember_placement(placed);
    hwloc_bitmap_free(placed);
    if (description != nullptr && description_size > 0) {
        std::strncpy(description, lines.c_str(), description_size - 1);
        description[description_size - 1] = '\0';
    }
    if (failures > 0) return fail(KVFUSE_ERROR_INTERNAL, std::to_string(failures) + " threads could not be bound");
    return KVFUSE_OK;
#endif  // KVFUSE_HAVE_OPENMP
#else
    (void)description;
    (void)description_size;
    return fail(KVFUSE_ERROR_INTERNAL, "thread placement needs hwloc, which this build does not use");
#endif
}

// Unguarded body of kvfuse_alloc_local (below).
static kvfuse_status alloc_local_unguarded(size_t bytes, void** memory, int* node) {
    if (memory == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "memory is required");
    *memory = nullptr;
    if (node != nullptr) *node = -1;
    if (bytes == 0) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "bytes must be > 0");
    // Rounded up to whole pages below: that sum must not wrap to a tiny allocation.
    if (auto s = kvfuse::detail::check_size("bytes", kvfuse::detail::CheckedSize(bytes) + 4095); s != KVFUSE_OK) return s;
#if defined(KVFUSE_HAVE_HWLOC)
    const Topology& t = shared_topology();
    if (t.handle != nullptr) {
        hwloc_bitmap_t cpus = hwloc_bitmap_alloc();
        {
            std::lock_guard<std::mutex> lock(g_placement_mutex);
            if (g_placement != nullptr && !hwloc_bitmap_iszero(g_placement))
                hwloc_bitmap_copy(cpus, g_placement);
            else if (hwloc_get_cpubind(t.handle, cpus, HWLOC_CPUBIND_THREAD) != 0)
                hwloc_bitmap_copy(cpus, hwloc_topology_get_allowed_cpuset(t.handle));
        }
        hwloc_bitmap_t nodes = hwloc_bitmap_alloc();
        hwloc_cpuset_to_nodeset(t.handle, cpus, nodes);
        void* p = hwloc_alloc_membind(t.handle, bytes, nodes, HWLOC_MEMBIND_BIND, HWLOC_MEMBIND_BYNODESET);
        if (p == nullptr)  // binding refused (no NUMA support in the kernel or a cgroup): plain pages
            p = hwloc_alloc(t.handle, bytes);
        if (p != nullptr && node != nullptr && hwloc_bitmap_weight(nodes) == 1) *node = hwloc_bitmap_first(nodes);
        hwloc_bitmap_free(nodes);
        hwloc_bitmap_free(cpus);
        if (p == nullptr) return fail(KVFUSE_ERROR_OUT_OF_MEMORY, std::to_string(bytes) + " bytes");
        *memory = p;
        return KVFUSE_OK;
    }
#endif
    const std::size_t page = 4096, rounded = (bytes + page - 1) / page * page;
    *memory = std::aligned_alloc(page, rounded);
    if (*memory == nullptr) return fail(KVFUSE_ERROR_OUT_OF_MEMORY, std::to_string(bytes) + " bytes");
    return KVFUSE_OK;
}

void kvfuse_free_local(void* memory, size_t bytes) {
    if (memory == nullptr) return;
#if defined(KVFUSE_HAVE_HWLOC)
    const Topology& t = shared_topology();
    if (t.handle != nullptr) {
        hwloc_free(t.handle, memory, bytes);
        return;
    }
#endif
    (void)bytes;
    std::free(memory);
}

kvfuse_status kvfuse_get_topology(kvfuse_topology* out) {
    return kvfuse::detail::guarded("kvfuse_get_topology", [&] {
        if (out == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "topology is required");
        if (auto s = kvfuse::detail::check_struct_size("topology", out); s != KVFUSE_OK) return s;
        kvfuse_topology full;
        kvfuse_topology_init(&full);
        if (auto s = get_topology_unguarded(&full); s != KVFUSE_OK) return s;
        return kvfuse::detail::write_struct("topology", full, out);
    });
}

kvfuse_status kvfuse_place_threads(const kvfuse_placement_options* caller_options, char* description,
                                   size_t description_size) {
    return kvfuse::detail::guarded("kvfuse_place_threads", [&] {
        kvfuse_placement_options options;  // the defaults, then as many fields as the caller's version has
        kvfuse_placement_options_init(&options);
        if (auto s = kvfuse::detail::read_struct("options", caller_options, options); s != KVFUSE_OK) return s;
        return place_threads_unguarded(&options, description, description_size);
    });
}

kvfuse_status kvfuse_alloc_local(size_t bytes, void** memory, int* node) {
    return kvfuse::detail::guarded("kvfuse_alloc_local", [&] { return alloc_local_unguarded(bytes, memory, node); });
}

}  // extern "C"
