#include "store/chunk_stream.h"

#include <algorithm>

namespace kvfuse::store {

ChunkStream::~ChunkStream() {
    cancelled_ = true;
    if (reader_.joinable()) reader_.join();
}

std::shared_ptr<ChunkStream> ChunkStream::complete(std::optional<ChunkView> view) {
    auto stream = std::make_shared<ChunkStream>();
    if (view) {
        const uint32_t layers = view->layout().layers;
        stream->publish_header(std::move(*view));
        stream->publish_layers(layers);
    } else {
        stream->fail(Status(StatusCode::ok, "a miss"));
    }
    return stream;
}

std::optional<ChunkView> ChunkStream::header() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return header_known_ || ended_; });
    if (!header_known_) return std::nullopt;
    return view_;
}

bool ChunkStream::wait_layer(uint32_t layer) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return ready_ > layer || ended_; });
    return ready_ > layer;
}

std::optional<ChunkView> ChunkStream::wait_all() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return ended_; });
    if (!header_known_ || ready_ < view_->layout().layers) return std::nullopt;
    return view_;
}

Status ChunkStream::failure() const {
    std::lock_guard lock(mutex_);
    return failure_;
}

uint32_t ChunkStream::layers_ready() const {
    std::lock_guard lock(mutex_);
    return ready_;
}

void ChunkStream::publish_header(ChunkView view) {
    std::lock_guard lock(mutex_);
    view_ = std::move(view);
    header_known_ = true;
    changed_.notify_all();
}

void ChunkStream::publish_layers(uint32_t count) {
    std::vector<std::function<void(const ChunkView&)>> done;
    std::optional<ChunkView> whole;
    {
        std::lock_guard lock(mutex_);
        if (ended_ || !header_known_) return;
        ready_ = std::max(ready_, std::min(count, view_->layout().layers));
        if (ready_ == view_->layout().layers) {
            ended_ = true;
            done.swap(on_complete_);
            whole = view_;
        }
        changed_.notify_all();
    }
    for (auto& callback : done) callback(*whole);
}

void ChunkStream::fail(Status why) {
    std::lock_guard lock(mutex_);
    if (ended_) return;
    ended_ = true;
    failure_ = std::move(why);
    on_complete_.clear();
    changed_.notify_all();
}

void ChunkStream::start_reader(std::function<void(ChunkStream&)> read) {
    reader_ = std::thread([this, read = std::move(read)] { read(*this); });
}

void ChunkStream::on_complete(std::function<void(const ChunkView&)> done) {
    std::optional<ChunkView> whole;
    {
        std::lock_guard lock(mutex_);
        if (!ended_) {
            on_complete_.push_back(std::move(done));
            return;
        }
        if (header_known_ && ready_ == view_->layout().layers) whole = view_;
    }
    if (whole) done(*whole);
}

std::shared_ptr<ChunkStream> ChunkBackend::get_streamed(const ChunkKey& key) {
    return ChunkStream::complete(get(key));
}

}  // namespace kvfuse::store
