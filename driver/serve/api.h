// The HTTP API's request bodies: JSON parsed and checked before a request is queued, so that a
// bad request costs no model time and gets a 4xx naming what is wrong. Nothing here needs the
// model (checks that do -- the prompt against the context, chunk ids -- run in the engine).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "fusion/pipeline.h"

namespace kvfuse::serve {

// An error answered to the client: its HTTP status and message.
struct ApiError : std::runtime_error {
    int status;
    ApiError(int http_status, const std::string& message) : std::runtime_error(message), status(http_status) {}
};

struct ApiLimits {
    std::size_t max_new_tokens = 256;  // max_tokens above this: 400
    std::size_t max_chunks = 64;       // chunks of one request
};

// A chunk given by its text, its token ids, or the id /v1/chunks returned.
struct ChunkRef {
    std::string text;
    std::vector<std::int32_t> tokens;
    std::string id;  // 64 hex digits
    enum class Kind { text, tokens, id } kind = Kind::text;
};

// POST /v1/completions, fused form: {"chunks": [...], "question": "...", "method": "a3",
// "ratio": 0.15, "max_tokens": 16, "store_only": false}; a chunk is a string (its text),
// {"text": ...}, {"tokens": [ids]} or {"id": hex}.
// Plain form (OpenAI-style): {"prompt": "...", "max_tokens": 16}: full prefill of the prompt.
struct CompletionRequest {
    bool plain = false;
    std::string prompt;                 // plain
    std::vector<ChunkRef> chunks;       // fused
    std::string question;               // fused, as text ...
    std::vector<std::int32_t> question_tokens;  // ... or as ids ("question_tokens")
    kvfuse::fusion::Method method = kvfuse::fusion::Method::a3;
    double ratio = 0.15;
    std::size_t max_tokens = 16;
    // true: a chunk the store lacks is an error (503), not computed; unset: the server's
    // default (`kvfuse serve --store-only`).
    std::optional<bool> store_only;
};

// POST /v1/chunks: {"chunks": [...]} (chunk forms as above, ids excluded) or {"texts": [...]}.
struct ChunksRequest {
    std::vector<ChunkRef> chunks;
};

// Throw ApiError(400, ...) naming the first problem (malformed JSON, a missing or mistyped
// field, an unknown method, a ratio outside (0, 1], an empty question, too many tokens asked).
CompletionRequest parse_completion_request(std::string_view body, const ApiLimits& limits);
ChunksRequest parse_chunks_request(std::string_view body, const ApiLimits& limits);

}  // namespace kvfuse::serve
