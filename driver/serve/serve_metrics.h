// What GET /metrics reports, in the Prometheus text format (version 0.0.4): requests by
// endpoint and status, a TTFT histogram, chunk hits and computations, tokens generated, the
// queue, and each store tier's counters. Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "store/chunk_store.h"

namespace kvfuse::serve {

class ServeMetrics {
public:
    // Upper bounds of the TTFT histogram's buckets, in seconds (then +Inf).
    static constexpr std::array<double, 12> kTtftBuckets = {0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
                                                            0.1,   0.2,   0.5,   1.0,  2.0,  5.0};

    void count_request(const std::string& endpoint, int status);
    void observe_ttft(double seconds);
    void count_chunks(std::uint64_t hits, std::uint64_t computed);
    void count_tokens(std::uint64_t prompt, std::uint64_t generated);

    // `queue_depth`, `queue_capacity` and the store's counters are read by the caller at the time
    // of the scrape.
    std::string render(std::size_t queue_depth, std::size_t queue_capacity,
                       const std::vector<kvfuse::store::BackendStats>& store) const;

private:
    mutable std::mutex mutex_;
    std::map<std::pair<std::string, int>, std::uint64_t> requests_;
    std::array<std::uint64_t, kTtftBuckets.size() + 1> ttft_counts_{};
    double ttft_sum_ = 0;
    std::uint64_t ttft_count_ = 0;
    std::uint64_t chunk_hits_ = 0, chunks_computed_ = 0, prompt_tokens_ = 0, generated_tokens_ = 0;
};

}  // namespace kvfuse::serve
