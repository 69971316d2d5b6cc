// Where a request's chunk caches come from: the chunk store when it has them, else computed
// (and then stored). Hides whether a cache lives in a mapped file or in memory.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "fusion/pipeline.h"

namespace kvfuse::store {
class ChunkBackend;
}

namespace kvfuse::fusion {

class ChunkSource {
   public:
    // `store` may be null: every chunk is then computed for each request. Any backend (the
    // filesystem ChunkStore, Redis, a tiered pair) is read and written the same way.
    ChunkSource(const FusionModel& model, kvfuse::store::ChunkBackend* store);

    // Streamed reads (on by default): a stored chunk is handed out once its header and layer 0
    // have arrived (ChunkBackend::get_streamed), its later layers arriving while the request
    // computes the earlier ones (ChunkKvView::arrival). Off: every chunk is read whole first.
    void set_streaming(bool on) { streaming_ = on; }
    bool streaming() const { return streaming_; }

    // Workers per kernel call when a chunk is computed (FusionOptions::threads, the driver's
    // --threads; 0: OpenMP's default). The chunks' kernel contexts are kept across chunks.
    void set_threads(int threads) { threads_ = threads; }

    struct Held {
        ChunkKvView view;
        std::shared_ptr<const void> owner;  // keeps the mapping or the computed cache alive
        bool from_store = false;
    };

    // The cache of one chunk. `load_ms` gets the time spent reading it from the store (0 when
    // computed); a computed chunk is put into the store for next time.
    Held get(std::span<const std::int32_t> tokens, double* load_ms = nullptr);

    // The stored cache of one chunk, or nullopt when the store has none this model can use
    // (absent, damaged, unreachable): never computed. For callers that must not compute
    // (a store-only request).
    std::optional<Held> find(std::span<const std::int32_t> tokens, double* load_ms = nullptr);

    // Every chunk of a request, in order, with the total time spent reading them from the store.
    struct Loaded {
        std::vector<Held> held;
        std::vector<ChunkKvView> views;
        double load_ms = 0.0;
    };
    Loaded get_all(const Request& request);

    // run_request on `loaded` (one entry per request chunk). When a streamed chunk's layer does
    // not arrive (missing, damaged, unreachable: ChunkLayerUnavailable), that chunk is computed
    // (and stored) and the request run again from the start, so the answer is always the one
    // whole chunks give; with `store_only` the exception is passed on instead. Returns the
    // number of restarts.
    std::size_t run(const Request& request, Loaded& loaded, const FusionOptions& options, FusionRun& run,
                    bool store_only = false);

    // As get(), but a stored chunk is read whole (never streamed), so from_store means every
    // layer was there and verified: for a caller reporting whether a chunk is stored.
    Held get_whole(std::span<const std::int32_t> tokens);

    // The cache of one chunk computed now (and put into the store).
    Held compute(std::span<const std::int32_t> tokens) { return compute_and_store(tokens); }

    // Computes and stores every chunk of the requests that the store does not hold yet (the
    // "precompute" step, kept out of TTFT). Returns how many were computed.
    std::size_t precompute(std::span<const Request> requests);

   private:
    // The stored chunk when the store has one this model can use; otherwise nullopt, and a
    // stored file this model cannot use (other layout, no start position, no quantized keys) is
    // reported and erased so that the recomputed chunk replaces it.
    std::optional<Held> from_store(std::span<const std::int32_t> tokens, bool streamed);
    Held compute_and_store(std::span<const std::int32_t> tokens);
    const FusionModel& model_;
    kvfuse::store::ChunkBackend* store_;
    bool streaming_ = true;
    int threads_ = 0;
    KernelContexts kernels_;  // compute_and_store's, kept warm across chunks
};

}  // namespace kvfuse::fusion
