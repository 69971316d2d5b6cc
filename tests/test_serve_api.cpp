// The request bodies of kvfuse serve (driver/serve/api.h): each form accepted with its defaults,
// each bad body refused with status 400 and a message naming the problem, before any model time.
#include <gtest/gtest.h>

#include "serve/api.h"

namespace {

using namespace kvfuse::serve;
using kvfuse::fusion::Method;

ApiError refusal(const std::string& body) {
    try {
        (void)parse_completion_request(body, ApiLimits{});
    } catch (const ApiError& e) {
        return e;
    }
    ADD_FAILURE() << "accepted: " << body;
    return ApiError(0, "");
}

TEST(ServeApi, FusedRequestWithDefaults) {
    const CompletionRequest r = parse_completion_request(R"({"chunks": ["a", {"text": "b"}], "question": "q"})", {});
    EXPECT_FALSE(r.plain);
    ASSERT_EQ(r.chunks.size(), 2u);
    EXPECT_EQ(r.chunks[0].text, "a");
    EXPECT_EQ(r.chunks[1].text, "b");
    EXPECT_EQ(r.question, "q");
    EXPECT_EQ(r.method, Method::a3);
    EXPECT_DOUBLE_EQ(r.ratio, 0.15);
    EXPECT_EQ(r.max_tokens, 16u);
    EXPECT_FALSE(r.store_only.has_value()) << "unset: the server's default";
}

TEST(ServeApi, FusedRequestWithEveryField) {
    const std::string id(64, 'a');
    const CompletionRequest r = parse_completion_request(
        R"({"chunks": [{"tokens": [3, 4]}, {"id": ")" + id + R"("}], "question_tokens": [5],
            "method": "cacheblend", "ratio": 1, "max_tokens": 3, "store_only": true})",
        {});
    ASSERT_EQ(r.chunks.size(), 2u);
    EXPECT_EQ(r.chunks[0].kind, ChunkRef::Kind::tokens);
    EXPECT_EQ(r.chunks[0].tokens, (std::vector<std::int32_t>{3, 4}));
    EXPECT_EQ(r.chunks[1].kind, ChunkRef::Kind::id);
    EXPECT_EQ(r.chunks[1].id, id);
    EXPECT_EQ(r.question_tokens, (std::vector<std::int32_t>{5}));
    EXPECT_EQ(r.method, kvfuse::fusion::parse_method("cacheblend"));
    EXPECT_DOUBLE_EQ(r.ratio, 1.0);
    EXPECT_EQ(r.max_tokens, 3u);
    EXPECT_EQ(r.store_only, std::optional<bool>(true));
}

TEST(ServeApi, PlainPromptIsFullPrefill) {
    const CompletionRequest r =
        parse_completion_request(R"({"model": "x", "prompt": "Once", "max_tokens": 4, "temperature": 0})", {});
    EXPECT_TRUE(r.plain);
    EXPECT_EQ(r.prompt, "Once");
    EXPECT_EQ(r.method, Method::full);
    EXPECT_EQ(r.max_tokens, 4u);
}

TEST(ServeApi, BadBodiesAre400WithTheReason) {
    const std::pair<std::string, std::string> cases[] = {
        {"{", "malformed JSON"},
        {"", "malformed JSON"},
        {"[]", "JSON object"},
        {R"({"question": "q"})", "\"chunks\""},
        {R"({"chunks": "a", "question": "q"})", "array"},
        {R"({"chunks": [], "question": "q"})", "empty"},
        {R"({"chunks": [""], "question": "q"})", "empty text"},
        {R"({"chunks": [{"text": "a", "extra": 1}], "question": "q"})", "chunks[0]"},
        {R"({"chunks": [{"tokens": []}], "question": "q"})", "empty"},
        {R"({"chunks": [{"tokens": [-1]}], "question": "q"})", "token id"},
        {R"({"chunks": [{"tokens": [1.5]}], "question": "q"})", "token id"},
        {R"({"chunks": [{"id": "xyz"}], "question": "q"})", "64 hex"},
        {R"({"chunks": ["a"]})", "question"},
        {R"({"chunks": ["a"], "question": ""})", "empty"},
        {R"({"chunks": ["a"], "question": 5})", "question"},
        {R"({"chunks": ["a"], "question": "q", "question_tokens": [1]})", "not both"},
        {R"({"chunks": ["a"], "question": "q", "method": "best"})", "unknown method"},
        {R"({"chunks": ["a"], "question": "q", "method": 3})", "method"},
        {R"({"chunks": ["a"], "question": "q", "ratio": 0})", "ratio"},
        {R"({"chunks": ["a"], "question": "q", "ratio": -0.5})", "ratio"},
        {R"({"chunks": ["a"], "question": "q", "ratio": 1.01})", "ratio"},
        {R"({"chunks": ["a"], "question": "q", "ratio": "0.2"})", "ratio"},
        {R"({"chunks": ["a"], "question": "q", "max_tokens": 0})", "max_tokens"},
        {R"({"chunks": ["a"], "question": "q", "max_tokens": 100000})", "max_tokens"},
        {R"({"chunks": ["a"], "question": "q", "store_only": 1})", "store_only"},
        {R"({"prompt": ""})", "empty"},
        {R"({"prompt": 7})", "string"},
        {R"({"prompt": "a", "question": "q"})", "not both"},
        {R"({"prompt": "a", "temperature": 0.7})", "greedily"},
        {R"({"prompt": "a", "n": 2})", "one completion"},
    };
    for (const auto& [body, words] : cases) {
        const ApiError e = refusal(body);
        EXPECT_EQ(e.status, 400) << body;
        EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << body << " -> " << e.what();
    }
}

TEST(ServeApi, TooManyChunksIsRefused) {
    ApiLimits limits;
    limits.max_chunks = 2;
    EXPECT_THROW((void)parse_completion_request(R"({"chunks": ["a", "b", "c"], "question": "q"})", limits), ApiError);
    EXPECT_NO_THROW((void)parse_completion_request(R"({"chunks": ["a", "b"], "question": "q"})", limits));
}

TEST(ServeApi, ChunksRequestForms) {
    EXPECT_EQ(parse_chunks_request(R"({"texts": ["a", "b"]})", {}).chunks.size(), 2u);
    const ChunksRequest r = parse_chunks_request(R"({"chunks": [{"tokens": [1, 2]}, "c"]})", {});
    ASSERT_EQ(r.chunks.size(), 2u);
    EXPECT_EQ(r.chunks[0].kind, ChunkRef::Kind::tokens);
    for (const char* bad : {R"({})", R"({"texts": [1]})", R"({"texts": []})", R"({"texts": ["a"], "chunks": ["b"]})",
                            R"({"chunks": [{"id": "aaaa"}]})"}) {
        EXPECT_THROW((void)parse_chunks_request(bad, {}), ApiError) << bad;
    }
}

}  // namespace
