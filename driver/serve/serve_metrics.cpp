#include "serve/serve_metrics.h"

#include <cstdio>

namespace kvfuse::serve {

void ServeMetrics::count_request(const std::string& endpoint, int status) {
    std::lock_guard lock(mutex_);
    ++requests_[{endpoint, status}];
}

void ServeMetrics::observe_ttft(double seconds) {
    std::lock_guard lock(mutex_);
    std::size_t bucket = 0;
    while (bucket < kTtftBuckets.size() && seconds > kTtftBuckets[bucket]) ++bucket;
    ++ttft_counts_[bucket];
    ttft_sum_ += seconds;
    ++ttft_count_;
}

void ServeMetrics::count_chunks(std::uint64_t hits, std::uint64_t computed) {
    std::lock_guard lock(mutex_);
    chunk_hits_ += hits;
    chunks_computed_ += computed;
}

void ServeMetrics::count_tokens(std::uint64_t prompt, std::uint64_t generated) {
    std::lock_guard lock(mutex_);
    prompt_tokens_ += prompt;
    generated_tokens_ += generated;
}

namespace {

void line(std::string& out, const char* format, auto... args) {
    char buffer[512];
    std::snprintf(buffer, sizeof buffer, format, args...);
    out += buffer;
}

void header(std::string& out, const char* name, const char* type, const char* help) {
    line(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

}  // namespace

std::string ServeMetrics::render(std::size_t queue_depth, std::size_t queue_capacity,
                                 const std::vector<kvfuse::store::BackendStats>& store) const {
    std::lock_guard lock(mutex_);
    std::string out;
    header(out, "kvfuse_requests_total", "counter", "HTTP requests answered, by endpoint and status code.");
    for (const auto& [key, count] : requests_)
        line(out, "kvfuse_requests_total{endpoint=\"%s\",code=\"%d\"} %llu\n", key.first.c_str(), key.second,
             static_cast<unsigned long long>(count));
    header(out, "kvfuse_ttft_seconds", "histogram",
           "Time to first token of answered completions: store reads, prefill or fusion, first logits.");
    std::uint64_t cumulative = 0;
    for (std::size_t b = 0; b < kTtftBuckets.size(); ++b) {
        cumulative += ttft_counts_[b];
        line(out, "kvfuse_ttft_seconds_bucket{le=\"%g\"} %llu\n", kTtftBuckets[b],
             static_cast<unsigned long long>(cumulative));
    }
    cumulative += ttft_counts_.back();
    line(out, "kvfuse_ttft_seconds_bucket{le=\"+Inf\"} %llu\n", static_cast<unsigned long long>(cumulative));
    line(out, "kvfuse_ttft_seconds_sum %.9g\nkvfuse_ttft_seconds_count %llu\n", ttft_sum_,
         static_cast<unsigned long long>(ttft_count_));
    header(out, "kvfuse_chunk_hits_total", "counter", "Chunk caches a request found in the store.");
    line(out, "kvfuse_chunk_hits_total %llu\n", static_cast<unsigned long long>(chunk_hits_));
    header(out, "kvfuse_chunks_computed_total", "counter", "Chunk caches computed (and stored) because the store lacked them.");
    line(out, "kvfuse_chunks_computed_total %llu\n", static_cast<unsigned long long>(chunks_computed_));
    header(out, "kvfuse_prompt_tokens_total", "counter", "Prompt tokens of answered completions.");
    line(out, "kvfuse_prompt_tokens_total %llu\n", static_cast<unsigned long long>(prompt_tokens_));
    header(out, "kvfuse_generated_tokens_total", "counter", "Tokens generated.");
    line(out, "kvfuse_generated_tokens_total %llu\n", static_cast<unsigned long long>(generated_tokens_));
    header(out, "kvfuse_queue_depth", "gauge", "Requests waiting for or holding the model.");
    line(out, "kvfuse_queue_depth %zu\n", queue_depth);
    header(out, "kvfuse_queue_capacity", "gauge", "Requests the queue holds before answering 503.");
    line(out, "kvfuse_queue_capacity %zu\n", queue_capacity);
    struct Counter {
        const char* name;
        const char* help;
        std::uint64_t kvfuse::store::BackendStats::*field;
    };
    static constexpr Counter kCounters[] = {
        {"kvfuse_store_hits_total", "Chunks read from a store tier, verified.", &kvfuse::store::BackendStats::hits},
        {"kvfuse_store_misses_total", "Store lookups that found nothing usable.", &kvfuse::store::BackendStats::misses},
        {"kvfuse_store_corrupt_total", "Stored values found damaged or foreign (read as misses).",
         &kvfuse::store::BackendStats::corrupt},
        {"kvfuse_store_unavailable_total", "Store operations that could not reach the tier.",
         &kvfuse::store::BackendStats::unavailable},
        {"kvfuse_store_puts_total", "Chunks written to a store tier.", &kvfuse::store::BackendStats::puts},
        {"kvfuse_store_read_bytes_total", "Chunk bytes read from a store tier.", &kvfuse::store::BackendStats::bytes_read},
        {"kvfuse_store_written_bytes_total", "Chunk bytes written to a store tier.",
         &kvfuse::store::BackendStats::bytes_written},
        {"kvfuse_store_redirects_total", "Redis Cluster MOVED/ASK redirects followed.",
         &kvfuse::store::BackendStats::redirects},
    };
    for (const Counter& counter : kCounters) {
        header(out, counter.name, "counter", counter.help);
        for (const auto& tier : store)
            line(out, "%s{tier=\"%s\"} %llu\n", counter.name, tier.tier.c_str(),
                 static_cast<unsigned long long>(tier.*counter.field));
    }
    return out;
}

}  // namespace kvfuse::serve
