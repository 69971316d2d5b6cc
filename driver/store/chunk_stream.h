// A chunk read layer by layer: ChunkBackend::get_streamed hands one out at once, and its layers
// become readable as they arrive and are verified, so a request can use layer 0 while later
// layers are still on the wire. Guarantees: docs/STORE.md ("Streamed reads").
#pragma once

#include "store/chunk_store.h"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace kvfuse::store {

class ChunkStream {
public:
    ChunkStream() = default;
    ChunkStream(const ChunkStream&) = delete;
    ChunkStream& operator=(const ChunkStream&) = delete;
    // Asks the reader to stop and waits for it: no reader touches the chunk's memory afterwards.
    ~ChunkStream();

    // A stream that is over at once: every layer of `view` ready, or (nullopt) a miss. What
    // the default ChunkBackend::get_streamed returns.
    static std::shared_ptr<ChunkStream> complete(std::optional<ChunkView> view);

    // --- for the consumer ---
    // Waits for the chunk's header: its view (layout, tokens, section table), or nullopt when the
    // chunk is a miss. Layer l's section bytes may be read only once wait_layer(l) returned true.
    std::optional<ChunkView> header();
    // Waits until layer `layer` has arrived and been verified: true. False when the stream ended
    // first (the chunk turned out missing, damaged or unreachable): its bytes are never to be
    // used, and the chunk is a miss.
    bool wait_layer(uint32_t layer);
    // Waits for every layer: the whole chunk, or nullopt.
    std::optional<ChunkView> wait_all();
    // Why the stream ended early (a plain miss, the chunk absent, has code ok); ok with no
    // message while it has not.
    Status failure() const;
    // Layers verified so far (no wait).
    uint32_t layers_ready() const;

    // --- for the backend that fills it ---
    // The header is known: layers are to follow, in order.
    void publish_header(ChunkView view);
    // Layers [0, count) are verified. When count reaches the layer count the stream is complete
    // and the callbacks of on_complete run (on the calling thread).
    void publish_layers(uint32_t count);
    // The stream ends here; layers not yet published never will be.
    void fail(Status why);
    // Runs `read` on a thread of the stream's own; the destructor joins it. `read` should check
    // cancelled() between steps.
    void start_reader(std::function<void(ChunkStream&)> read);
    bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
    // `done` runs once with the whole chunk when (if ever) every layer is verified: on the
    // reader's thread, or at once on the caller's when that has happened already.
    void on_complete(std::function<void(const ChunkView&)> done);

private:
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    std::optional<ChunkView> view_;
    bool header_known_ = false;  // view_ set
    bool ended_ = false;         // complete or failed: nothing more will arrive
    uint32_t ready_ = 0;
    Status failure_;
    std::vector<std::function<void(const ChunkView&)>> on_complete_;
    std::atomic<bool> cancelled_{false};
    std::thread reader_;
};

}  // namespace kvfuse::store
