// `kvfuse tokenize --model M [--no-bos] [--no-parse-special] TEXT`: the ids of TEXT printed as
// `llama-tokenize --ids` prints them ("[1, 15043, 3186]"), so the two can be compared directly.
// Only the vocabulary is read: a vocabulary-only GGUF file works too.
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

namespace kvfuse::cli {

namespace {

struct TokenizeOptions {
    std::string model, text;
    bool no_bos = false;
    bool no_parse_special = false;
};

int run_tokenize(const TokenizeOptions& o) {
    auto file = kvfuse::model::GgufFile::open(o.model);
    const kvfuse::model::Tokenizer tokenizer(*file);
    std::vector<std::int32_t> ids;
    // As llama-tokenize: BOS when the model asks for it, special tokens parsed unless told not.
    if (tokenizer.add_bos() && !o.no_bos) ids.push_back(tokenizer.bos());
    for (std::int32_t id : tokenizer.encode(o.text, !o.no_parse_special)) ids.push_back(id);
    std::string line = "[";
    for (std::size_t i = 0; i < ids.size(); ++i) line += (i ? ", " : "") + std::to_string(ids[i]);
    std::printf("%s]\n", line.c_str());
    return 0;
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
    auto o = std::make_shared<TokenizeOptions>();
    CLI::App* cmd = app.add_subcommand("tokenize", "Print the token ids of a text (as llama-tokenize --ids)");
    cmd->add_option("--model", o->model, "GGUF model or vocabulary-only file")->required();
    cmd->add_flag("--no-bos", o->no_bos, "do not add BOS even if the model asks for it");
    cmd->add_flag("--no-parse-special", o->no_parse_special, "read special tokens written in the text as plain text");
    cmd->add_option("text", o->text, "the text")->required();
    cmd->callback([o] { g_exit_status = run_tokenize(*o); });
}

}  // namespace kvfuse::cli
