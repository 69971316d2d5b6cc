// Topology and thread placement. With hwloc (KVFUSE_WITH_HWLOC) the machine's packages,
// NUMA nodes, cores, PUs and caches come from it and OpenMP workers are pinned one per core;
// without it the counts come from the OS and placement is refused with a clear error.
#include <omp.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "dispatch/errors.h"
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

std::int64_t cache_size(const Topology& t, hwloc_obj_type_t type) {
    hwloc_obj_t obj = hwloc_get_obj_by_type(t.handle, type, 0);
    return obj && obj->attr ? static_cast<std::int64_t>(obj->attr->cache.size) : 0;
}
#endif

}  // namespace

extern "C" {

kvfuse_status kvfuse_get_topology(kvfuse_topology* out) {
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

kvfuse_status kvfuse_place_threads(const kvfuse_placement_options* options, char* description, size_t description_size) {
    if (options == nullptr) return fail(KVFUSE_ERROR_NULL_POINTER, "options are required");
    if (options->threads < 0) return fail(KVFUSE_ERROR_INVALID_ARGUMENT, "threads must be >= 0");
#if defined(KVFUSE_HAVE_HWLOC)
    const Topology t;
    if (t.handle == nullptr) return fail(KVFUSE_ERROR_INTERNAL, "hwloc could not load the topology");
    const int cores = t.count(HWLOC_OBJ_CORE), pus = t.count(HWLOC_OBJ_PU);
    const int slots = options->use_smt ? pus : (cores > 0 ? cores : pus);
    if (slots <= 0) return fail(KVFUSE_ERROR_INTERNAL, "hwloc reports no cores");
    const int threads = options->threads == 0 ? slots : options->threads;
    if (threads > slots)
        return fail(KVFUSE_ERROR_INVALID_ARGUMENT, std::to_string(threads) + " threads but only " + std::to_string(slots) +
                                                       (options->use_smt ? " PUs" : " cores (use_smt to add siblings)"));
    omp_set_num_threads(threads);
    std::string lines;
    int failures = 0;
#pragma omp parallel num_threads(threads)
    {
        const int id = omp_get_thread_num();
        hwloc_obj_t target = options->use_smt || cores <= 0 ? hwloc_get_obj_by_type(t.handle, HWLOC_OBJ_PU, static_cast<unsigned>(id))
                                                            : hwloc_get_obj_by_type(t.handle, HWLOC_OBJ_CORE, static_cast<unsigned>(id));
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
        }
    }
    if (description != nullptr && description_size > 0) {
        std::strncpy(description, lines.c_str(), description_size - 1);
        description[description_size - 1] = '\0';
    }
    if (failures > 0) return fail(KVFUSE_ERROR_INTERNAL, std::to_string(failures) + " threads could not be bound");
    return KVFUSE_OK;
#else
    (void)description;
    (void)description_size;
    return fail(KVFUSE_ERROR_INTERNAL, "thread placement needs hwloc, which this build does not use");
#endif
}

}  // extern "C"
