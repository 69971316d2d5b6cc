// Options and helpers shared by `kvfuse run` and `kvfuse eval`.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "fusion/chunk_source.h"
#include "fusion/loaded_model.h"
#include "fusion/pipeline.h"

namespace kvfuse::store {
class ChunkBackend;
}

namespace kvfuse::cli {

// Thread placement (hwloc): --place pins one OpenMP thread per core; --smt adds SMT siblings;
// --cores 0,2,... chooses the cores (implies --place); --threads N uses the first N, and is the
// pipeline's kernel threads per call (FusionOptions::threads; 0: OpenMP's default).
struct PlacementCliOptions {
    bool place = false;
    bool smt = false;
    std::vector<int> cores;
    int threads = 0;
};
struct FusionCliOptions {
    std::string model;
    double ratio = 0.15;
    int check_layer = 1;
    std::size_t epic_tokens = 16;
    bool no_smoothing = false;
    std::string a3_scoring = "f32";
    std::string a3_layer_keys = "stored";
    bool pipelined_loading = false;
    std::string store_dir;  // empty: the XDG default
    std::uint64_t store_limit = 0;  // bytes of chunk files the directory keeps; 0: no limit
    bool no_store = false;
    bool no_stream = false;  // read stored chunks whole (ChunkSource::set_streaming(false))
    std::uint32_t seed = 1;
    PlacementCliOptions placement;
};

// Adds --model, --check-layer, --epic-tokens, --no-smoothing, --store, --no-store, --seed and the
// placement options.
void add_fusion_options(CLI::App& cmd, FusionCliOptions& options);

kvfuse::fusion::FusionOptions to_fusion_options(const FusionCliOptions& options, kvfuse::fusion::Method method);

// Token ids written as integers separated by commas and/or white space (pre-tokenized input for
// models whose tokenizer kvfuse does not implement); throws std::invalid_argument naming the bad
// item or an id outside [0, vocab).
std::vector<std::int32_t> parse_token_ids(const std::string& text, int vocab, const std::string& where);

void add_placement_options(CLI::App& cmd, PlacementCliOptions& options);
// Applies the options if any asks for placement; writes the placement to `description`.
// Returns false (after printing the error) when placement fails.
bool apply_placement(const PlacementCliOptions& options, std::string* description);
// apply_placement for the commands that print results on stdout (run, eval, serve): the
// placement, if any, goes to stderr as "placement:\n...".
bool apply_placement_reporting_on_stderr(const PlacementCliOptions& options);

// Opens the chunk store the options name (a directory or redis://host:port/db; null with
// --no-store); throws with a clear message.
std::unique_ptr<kvfuse::store::ChunkBackend> open_store(const FusionCliOptions& options);

// TinyStories-style requests (kind "continuous" or "mixed") from the text file at `path`, within
// the model's context, BOS from the model. Throws naming the file when it cannot be read, the kind
// is unknown or no request fits; warns on stderr when it gives fewer than `count`.
std::vector<kvfuse::fusion::Request> story_requests(const std::string& path, const std::string& kind,
                                                    const kvfuse::fusion::LoadedModel& loaded,
                                                    kvfuse::fusion::StoryRequestOptions options);

}  // namespace kvfuse::cli
