// Topology discovery and thread placement (hwloc where the build has it).
#include <gtest/gtest.h>
#include <omp.h>
#include <sched.h>

#include <string>

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

TEST(Topology, BadPlacementRequestsAreRefused) {
    kvfuse::Topology t{};
    ASSERT_TRUE(kvfuse::topology(t).ok());
    EXPECT_EQ(kvfuse_place_threads(nullptr, nullptr, 0), KVFUSE_ERROR_NULL_POINTER);
    kvfuse_placement_options negative{-1, 0};
    EXPECT_EQ(kvfuse_place_threads(&negative, nullptr, 0), KVFUSE_ERROR_INVALID_ARGUMENT);
    if (t.from_hwloc) {
        kvfuse_placement_options too_many{t.pus + 1, 1};
        EXPECT_EQ(kvfuse_place_threads(&too_many, nullptr, 0), KVFUSE_ERROR_INVALID_ARGUMENT);
    }
}

}  // namespace
