// Topology discovery and thread placement (hwloc where the build has it).
#include <gtest/gtest.h>
#include <omp.h>
#include <sched.h>

#include <string>
#include <vector>

#include "kvfuse/kvfuse.hpp"

namespace {

TEST(Topology, ReportsAPlausibleMachine) {
    kvfuse::Topology t{};
    ASSERT_TRUE(kvfuse::topology(t).ok());
    EXPECT_GE(t.packages, 1);
    EXPECT_GE(t.numa_nodes, 1);
    EXPECT_GE(t.cores, 1);
    EXPECT_GE(t.pus, t.cores);
    EXPECT_GE(t.pus_per_core, 1);
    EXPECT_LE(t.l3_bytes, std::int64_t{256} << 20);  // implausible sizes read as unknown
    EXPECT_EQ(kvfuse_get_topology(nullptr), KVFUSE_ERROR_NULL_POINTER);
}

TEST(Topology, PlacementPinsOneThreadPerCore) {
    kvfuse::Topology t{};
    ASSERT_TRUE(kvfuse::topology(t).ok());
    std::string description;
    const kvfuse::Status status = kvfuse::place_threads(0, false, &description);
    if (!t.from_hwloc) {
        EXPECT_FALSE(status.ok());
        EXPECT_NE(status.message().find("hwloc"), std::string::npos);
        return;
    }
    if (!KVFUSE_TEST_LIBRARY_OPENMP) {
        EXPECT_FALSE(status.ok());
        EXPECT_NE(status.message().find("OpenMP"), std::string::npos) << status.message();
        return;
    }
    ASSERT_TRUE(status.ok()) << status.message();
    EXPECT_NE(description.find("thread 0 -> PU"), std::string::npos) << description;
    EXPECT_EQ(omp_get_max_threads(), t.cores);
    // Every worker of the next parallel region runs on exactly one CPU, each on its own.
    int single = 0;
    unsigned long long seen = 0;
#pragma omp parallel
    {
        cpu_set_t set;
        CPU_ZERO(&set);
        if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) == 1) {
            int cpu = 0;
            while (!CPU_ISSET(cpu, &set)) ++cpu;
#pragma omp critical
            {
                ++single;
                seen |= 1ull << (cpu % 64);
            }
        }
    }
    EXPECT_EQ(single, t.cores);
    EXPECT_EQ(__builtin_popcountll(seen), t.cores);
}

// Placement options (struct_size set) from their four fields.
kvfuse_placement_options options(int threads, int use_smt, const int* cores, int core_count) {
    kvfuse_placement_options o;
    kvfuse_placement_options_init(&o);
    o.threads = threads;
    o.use_smt = use_smt;
    o.cores = cores;
    o.core_count = core_count;
    return o;
}

TEST(Topology, BadPlacementRequestsAreRefused) {
    kvfuse::Topology t{};
    ASSERT_TRUE(kvfuse::topology(t).ok());
    EXPECT_EQ(kvfuse_place_threads(nullptr, nullptr, 0), KVFUSE_ERROR_NULL_POINTER);
    const kvfuse_placement_options negative = options(-1, 0, nullptr, 0);
    EXPECT_EQ(kvfuse_place_threads(&negative, nullptr, 0), KVFUSE_ERROR_INVALID_ARGUMENT);
    if (t.from_hwloc) {
        const kvfuse_placement_options too_many = options(t.pus + 1, 1, nullptr, 0);
        EXPECT_EQ(kvfuse_place_threads(&too_many, nullptr, 0), KVFUSE_ERROR_INVALID_ARGUMENT);
        const int out_of_range[] = {t.cores};
        const kvfuse_placement_options missing = options(0, 0, out_of_range, 1);
        EXPECT_EQ(kvfuse_place_threads(&missing, nullptr, 0), KVFUSE_ERROR_INVALID_ARGUMENT);
        EXPECT_NE(std::string(kvfuse_last_error()).find("does not exist"), std::string::npos);
        const int twice[] = {0, 0};
        const kvfuse_placement_options repeated = options(0, 0, twice, 2);
        EXPECT_EQ(kvfuse_place_threads(&repeated, nullptr, 0), KVFUSE_ERROR_INVALID_ARGUMENT);
        const int one[] = {0};
        const kvfuse_placement_options more_threads = options(2, 0, one, 1);
        EXPECT_EQ(kvfuse_place_threads(&more_threads, nullptr, 0), KVFUSE_ERROR_INVALID_ARGUMENT);
        const kvfuse_placement_options count_only = options(0, 0, nullptr, 3);
        EXPECT_EQ(kvfuse_place_threads(&count_only, nullptr, 0), KVFUSE_ERROR_INVALID_ARGUMENT);
    }
}

// A chosen core list: one thread per listed core, in list order (the last core first here).
TEST(Topology, PlacementOnChosenCores) {
    kvfuse::Topology t{};
    ASSERT_TRUE(kvfuse::topology(t).ok());
    if (!t.from_hwloc) GTEST_SKIP() << "no hwloc in this build";
    if (!KVFUSE_TEST_LIBRARY_OPENMP) GTEST_SKIP() << "no OpenMP workers to place in this build";
    const int last = t.cores - 1;
    std::string description;
    const kvfuse::Status status = kvfuse::place_threads(0, false, &description, {last});
    ASSERT_TRUE(status.ok()) << status.message();
    EXPECT_EQ(omp_get_max_threads(), 1);
    EXPECT_NE(description.find("(core " + std::to_string(last) + ")"), std::string::npos) << description;
    int cpus = 0;
#pragma omp parallel
    {
        cpu_set_t set;
        CPU_ZERO(&set);
        if (sched_getaffinity(0, sizeof set, &set) == 0) cpus = CPU_COUNT(&set);
    }
    EXPECT_EQ(cpus, 1);
    ASSERT_TRUE(kvfuse::place_threads(0, false).ok());  // back to every core for later tests
}

// NUMA-local buffers: usable memory, a node reported when there is one, freed cleanly; the C++
// allocator puts only large vectors there.
TEST(Topology, LocalAllocation) {
    void* memory = nullptr;
    int node = -2;
    const std::size_t bytes = 3u << 20;
    ASSERT_EQ(kvfuse_alloc_local(bytes, &memory, &node), KVFUSE_OK) << kvfuse_last_error();
    ASSERT_NE(memory, nullptr);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(memory) % 4096, 0u);
    kvfuse::Topology t{};
    ASSERT_TRUE(kvfuse::topology(t).ok());
    if (t.from_hwloc && t.numa_nodes == 1) {
        EXPECT_EQ(node, 0);
    }
    auto* bytes_ptr = static_cast<unsigned char*>(memory);
    for (std::size_t i = 0; i < bytes; i += 4096) bytes_ptr[i] = static_cast<unsigned char>(i >> 12);
    for (std::size_t i = 0; i < bytes; i += 4096) ASSERT_EQ(bytes_ptr[i], static_cast<unsigned char>(i >> 12));
    kvfuse_free_local(memory, bytes);
    EXPECT_EQ(kvfuse_alloc_local(0, &memory, nullptr), KVFUSE_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(kvfuse_alloc_local(16, nullptr, nullptr), KVFUSE_ERROR_NULL_POINTER);
    kvfuse_free_local(nullptr, 0);  // a no-op, like free(NULL)
    std::vector<float, kvfuse::LocalAllocator<float>> big(1u << 20, 1.5f), small(10, 2.0f);
    big.resize(3u << 20, 0.5f);
    EXPECT_EQ(big[0], 1.5f);
    EXPECT_EQ(big.back(), 0.5f);
    EXPECT_EQ(small[9], 2.0f);
}

}  // namespace
