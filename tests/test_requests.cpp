// Evaluation request builders on a toy tokenizer (one id per character), so every cut can be
// checked by hand.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include <fstream>

#include "fusion/musique.h"
#include "fusion/requests.h"

namespace {

using namespace kvfuse::fusion;

TokenIds by_character(std::string_view text) {
    TokenIds out;
    for (char c : text) out.push_back(static_cast<unsigned char>(c));
    return out;
}

std::string text_of(const TokenIds& ids) {
    std::string s;
    for (auto id : ids) s.push_back(static_cast<char>(id));
    return s;
}

TEST(Requests, ParagraphsSplitOnBlankLines) {
    const auto p = split_paragraphs("one\ntwo\n\n\n  three  \n\nfour");
    ASSERT_EQ(p.size(), 3u);
    EXPECT_EQ(p[0], "one two");
    EXPECT_EQ(p[1], "three");
    EXPECT_EQ(p[2], "four");
    EXPECT_TRUE(split_paragraphs("\n\n").empty());
}

TEST(Requests, ContinuousRequestsAreOneContiguousPassage) {
    std::vector<std::string> paragraphs;
    for (int i = 0; i < 50; ++i) paragraphs.push_back("paragraph number " + std::to_string(i) + " has some words in it.");
    StoryRequestOptions o;
    o.count = 20;
    o.chunk_tokens = 30;
    o.question_tokens = 10;
    o.max_total_tokens = 200;
    const auto requests = continuous_requests(paragraphs, by_character, o);
    ASSERT_EQ(requests.size(), 20u);
    std::string all;
    for (const auto& p : paragraphs) all += (all.empty() ? "" : "\n\n") + p;
    for (const auto& r : requests) {
        EXPECT_EQ(r.kind, "continuous");
        EXPECT_GE(r.chunks.size(), 4u);
        EXPECT_LE(r.chunks.size(), 6u);
        EXPECT_EQ(r.prefix, TokenIds{1});
        for (const auto& c : r.chunks) EXPECT_EQ(c.size(), 30u);
        EXPECT_EQ(r.question.size(), 10u);
        EXPECT_LE(r.total_tokens(), 200u);
        // Chunks and question, concatenated, are a substring of the source text.
        const TokenIds prompt = r.full_prompt();
        const TokenIds body(prompt.begin() + 1, prompt.end());
        EXPECT_NE(all.find(text_of(body)), std::string::npos);
    }
}

TEST(Requests, MixedRequestsUseDistinctStoriesAndVaryTheTarget) {
    std::vector<std::string> paragraphs, stories;
    for (int s = 0; s < 12; ++s) {
        paragraphs.push_back("Once upon a time #" + std::to_string(s) + " there was a story.");
        paragraphs.push_back("It went on and on with more text for story " + std::to_string(s) + ".");
        stories.push_back(paragraphs[paragraphs.size() - 2] + "\n\n" + paragraphs.back());
    }
    StoryRequestOptions o;
    o.count = 40;
    o.chunk_tokens = 20;
    o.question_tokens = 15;
    o.max_total_tokens = 200;
    const auto requests = mixed_requests(paragraphs, by_character, o);
    ASSERT_EQ(requests.size(), 40u);
    std::set<int> targets;
    for (const auto& r : requests) {
        std::set<std::string> openings;
        for (const auto& c : r.chunks) {
            EXPECT_EQ(text_of(c).rfind("Once upon a time #", 0), 0u);
            openings.insert(text_of(c));
        }
        EXPECT_EQ(openings.size(), r.chunks.size()) << "chunks must come from distinct stories";
        ASSERT_GE(r.target_chunk, 0);
        ASSERT_LT(r.target_chunk, static_cast<int>(r.chunks.size()));
        targets.insert(r.target_chunk);
        // The question is what follows the target chunk in its own story.
        const std::string opening = text_of(r.chunks[static_cast<std::size_t>(r.target_chunk)]);
        const std::string expected = opening + text_of(r.question);
        int found = 0;
        for (const auto& story : stories) found += story.rfind(expected, 0) == 0;
        EXPECT_EQ(found, 1) << expected;
    }
    EXPECT_GT(targets.size(), 2u) << "the continued chunk must not always be the same one";
}

TEST(Requests, ImpossibleSizesAreRefused) {
    StoryRequestOptions o;
    o.max_total_tokens = 100;  // 6 * 64 + 32 + 1 does not fit
    EXPECT_THROW(continuous_requests({"text"}, by_character, o), std::invalid_argument);
    o = StoryRequestOptions{};
    o.min_chunks = 0;
    EXPECT_THROW(mixed_requests({"text"}, by_character, o), std::invalid_argument);
}

}  // namespace

namespace {

class QaFileTest : public ::testing::Test {
   protected:
    std::string write(const std::string& name, const std::string& content) {
        const std::string path = ::testing::TempDir() + name;
        std::ofstream(path) << content;
        return path;
    }
};

TEST_F(QaFileTest, CacheBlendFormatLoadsWithTheTemplate) {
    const std::string path = write("qa_ok.json", R"([{"ctxs": [{"title": "T1", "text": "alpha"}, {"title": "", "text": "beta"}],
        "question": "Who won", "answers": ["Ann", "Anna"]}])");
    const auto items = load_qa_file(path, PromptTemplate::cacheblend);
    ASSERT_EQ(items.size(), 1u);
    EXPECT_EQ(items[0].chunk_texts[0], "T1\n\nalpha\n\n");
    EXPECT_EQ(items[0].answers.size(), 2u);
    const auto requests = qa_requests(items, by_character, 1, PromptTemplate::cacheblend);
    ASSERT_EQ(requests.size(), 1u);
    EXPECT_EQ(requests[0].chunks.size(), 2u);
    const std::string question = text_of(requests[0].question);
    EXPECT_NE(question.find("Question:who won?\nAnswer:"), std::string::npos) << question;
    EXPECT_EQ(text_of(requests[0].prefix).substr(1, 24), "You will be asked a ques");

    const auto raw = qa_requests(load_qa_file(path, PromptTemplate::raw), by_character, 1, PromptTemplate::raw);
    EXPECT_EQ(text_of(raw[0].chunks[0]), "alpha");
    EXPECT_EQ(text_of(raw[0].question), "Who won");
    EXPECT_EQ(raw[0].prefix, TokenIds{1});
}

TEST_F(QaFileTest, BadFilesGiveClearErrors) {
    auto message = [&](const std::string& content) {
        try {
            load_qa_file(write("qa_bad.json", content), PromptTemplate::raw);
        } catch (const std::runtime_error& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    EXPECT_NE(message("{not json").find("not valid JSON"), std::string::npos);
    EXPECT_NE(message("{}").find("JSON list"), std::string::npos);
    EXPECT_NE(message(R"([{"question": "q"}])").find("item 0"), std::string::npos);
    EXPECT_NE(message(R"([{"ctxs": [], "question": "q"}])").find("no contexts"), std::string::npos);
    EXPECT_NE(message(R"([{"ctxs": [{"title": "x"}], "question": "q"}])").find("\"text\""), std::string::npos);
    EXPECT_THROW(load_qa_file("/nonexistent/qa.json", PromptTemplate::raw), std::runtime_error);
    EXPECT_THROW(parse_prompt_template("chatml"), std::invalid_argument);
}

}  // namespace
