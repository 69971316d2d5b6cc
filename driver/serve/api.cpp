#include "serve/api.h"

#include <cmath>

#include <nlohmann/json.hpp>

#include "store/chunk_store.h"

namespace kvfuse::serve {

namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& message) { throw ApiError(400, message); }

json parse_object(std::string_view body) {
    json parsed;
    try {
        parsed = json::parse(body);
    } catch (const json::parse_error& e) {
        bad(std::string("malformed JSON: ") + e.what());
    }
    if (!parsed.is_object()) bad("the body must be a JSON object");
    return parsed;
}

std::vector<std::int32_t> token_ids(const json& value, const std::string& where) {
    if (!value.is_array()) bad(where + " must be an array of token ids");
    std::vector<std::int32_t> ids;
    for (const json& id : value) {
        if (!id.is_number_integer() || id.get<std::int64_t>() < 0 || id.get<std::int64_t>() > INT32_MAX)
            bad(where + " holds " + id.dump() + ", not a token id (an integer >= 0)");
        ids.push_back(static_cast<std::int32_t>(id.get<std::int64_t>()));
    }
    if (ids.empty()) bad(where + " is empty");
    return ids;
}

ChunkRef chunk_ref(const json& value, std::size_t index, bool ids_allowed) {
    const std::string where = "chunks[" + std::to_string(index) + "]";
    ChunkRef ref;
    if (value.is_string()) {
        ref.text = value.get<std::string>();
    } else if (value.is_object() && value.size() == 1 && value.contains("text") && value["text"].is_string()) {
        ref.text = value["text"].get<std::string>();
    } else if (value.is_object() && value.size() == 1 && value.contains("tokens")) {
        ref.kind = ChunkRef::Kind::tokens;
        ref.tokens = token_ids(value["tokens"], where + ".tokens");
        return ref;
    } else if (ids_allowed && value.is_object() && value.size() == 1 && value.contains("id") && value["id"].is_string()) {
        ref.kind = ChunkRef::Kind::id;
        ref.id = value["id"].get<std::string>();
        if (!kvfuse::store::parse_digest_hex(ref.id)) bad(where + ".id is not a chunk id (64 hex digits)");
        return ref;
    } else {
        bad(where + " must be a string, {\"text\": ...}, {\"tokens\": [...]}" + (ids_allowed ? " or {\"id\": ...}" : ""));
    }
    if (ref.text.empty()) bad(where + " is an empty text");
    return ref;
}

std::vector<ChunkRef> chunk_refs(const json& value, const ApiLimits& limits, bool ids_allowed) {
    if (!value.is_array()) bad("\"chunks\" must be an array");
    if (value.empty()) bad("\"chunks\" is empty");
    if (value.size() > limits.max_chunks)
        bad(std::to_string(value.size()) + " chunks; at most " + std::to_string(limits.max_chunks) + " per request");
    std::vector<ChunkRef> refs;
    for (std::size_t i = 0; i < value.size(); ++i) refs.push_back(chunk_ref(value[i], i, ids_allowed));
    return refs;
}

std::size_t max_tokens(const json& body, const ApiLimits& limits) {
    if (!body.contains("max_tokens")) return 16;
    const json& value = body["max_tokens"];
    if (!value.is_number_integer() || value.get<std::int64_t>() < 1 ||
        value.get<std::int64_t>() > static_cast<std::int64_t>(limits.max_new_tokens))
        bad("\"max_tokens\" must be an integer in 1.." + std::to_string(limits.max_new_tokens));
    return static_cast<std::size_t>(value.get<std::int64_t>());
}

}  // namespace

CompletionRequest parse_completion_request(std::string_view body_text, const ApiLimits& limits) {
    const json body = parse_object(body_text);
    CompletionRequest request;
    request.max_tokens = max_tokens(body, limits);
    // Greedy decoding only: a sampling request would silently get something else.
    for (const char* sampling : {"temperature", "top_p"}) {
        if (!body.contains(sampling)) continue;
        const json& value = body[sampling];
        const bool greedy = value.is_number() && (std::string(sampling) == "temperature" ? value.get<double>() == 0.0
                                                                                         : value.get<double>() == 1.0);
        if (!greedy) bad(std::string("\"") + sampling + "\": this server decodes greedily only (temperature 0, top_p 1)");
    }
    if (body.contains("n") && !(body["n"].is_number_integer() && body["n"].get<std::int64_t>() == 1))
        bad("\"n\": one completion per request");
    if (body.contains("prompt")) {
        if (body.contains("chunks") || body.contains("question"))
            bad("give either \"prompt\" (full prefill) or \"chunks\" + \"question\" (fusion), not both");
        if (!body["prompt"].is_string()) bad("\"prompt\" must be a string");
        request.plain = true;
        request.prompt = body["prompt"].get<std::string>();
        if (request.prompt.empty()) bad("\"prompt\" is empty");
        request.method = kvfuse::fusion::Method::full;
        return request;
    }
    if (!body.contains("chunks")) bad("give \"chunks\" and \"question\" (fusion) or \"prompt\" (full prefill)");
    request.chunks = chunk_refs(body["chunks"], limits, /*ids_allowed=*/true);
    if (body.contains("question_tokens")) {
        if (body.contains("question")) bad("give \"question\" or \"question_tokens\", not both");
        request.question_tokens = token_ids(body["question_tokens"], "\"question_tokens\"");
    } else {
        if (!body.contains("question") || !body["question"].is_string()) bad("\"question\" must be a string");
        request.question = body["question"].get<std::string>();
        if (request.question.empty()) bad("\"question\" is empty");
    }
    if (body.contains("method")) {
        if (!body["method"].is_string()) bad("\"method\" must be a string");
        try {
            request.method = kvfuse::fusion::parse_method(body["method"].get<std::string>());
        } catch (const std::invalid_argument& e) {
            bad(std::string("\"method\": ") + e.what());
        }
    }
    if (body.contains("ratio")) {
        const json& ratio = body["ratio"];
        if (!ratio.is_number() || !std::isfinite(ratio.get<double>()) || !(ratio.get<double>() > 0.0) ||
            ratio.get<double>() > 1.0)
            bad("\"ratio\" must be a number in (0, 1], the fraction of document rows recomputed");
        request.ratio = ratio.get<double>();
    }
    if (body.contains("store_only")) {
        if (!body["store_only"].is_boolean()) bad("\"store_only\" must be true or false");
        request.store_only = body["store_only"].get<bool>();
    }
    return request;
}

ChunksRequest parse_chunks_request(std::string_view body_text, const ApiLimits& limits) {
    const json body = parse_object(body_text);
    ChunksRequest request;
    if (body.contains("texts")) {
        if (body.contains("chunks")) bad("give \"texts\" or \"chunks\", not both");
        const json& texts = body["texts"];
        if (!texts.is_array()) bad("\"texts\" must be an array of strings");
        for (const json& text : texts)
            if (!text.is_string()) bad("\"texts\" must be an array of strings");
        request.chunks = chunk_refs(texts, limits, /*ids_allowed=*/false);
    } else if (body.contains("chunks")) {
        request.chunks = chunk_refs(body["chunks"], limits, /*ids_allowed=*/false);
    } else {
        bad("give \"texts\": [...] or \"chunks\": [...]");
    }
    return request;
}

}  // namespace kvfuse::serve
