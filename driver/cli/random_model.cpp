#include "cli/random_model.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <vector>

#include "model/gguf_types.h"
#include "model/gguf_writer.h"
#include "cli/random_blocks.h"

namespace kvfuse::cli {

namespace {

constexpr std::uint64_t kAlignment = 32;  // GGUF's default; the loader checks every offset
using kvfuse::model::GgmlType;
using kvfuse::model::TypeTraits;
constexpr int kSpecialTokens = 3, kByteTokens = 256;

// Weights come from a counter-based generator (splitmix64, cli/random_blocks.h, at position i of
// a per-tensor stream, then Box-Muller) rather than <random>: std::normal_distribution differs
// between standard libraries, and a counter lets threads fill disjoint ranges with a result that
// does not depend on the thread count. The same seed therefore gives the same file everywhere.
std::uint64_t stream_seed(std::uint64_t seed, const std::string& tensor) {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a of the name: each tensor its own stream
    for (unsigned char ch : tensor) h = (h ^ ch) * 1099511628211ull;
    return mix64(seed ^ mix64(h));
}

// Values [first, first + count) of the stream (first even), normal with the given deviation.
void fill_normal(std::uint64_t stream, std::uint64_t first, std::size_t count, float stddev, float* out) {
    constexpr double kTwoPi = 6.283185307179586;
    const std::uint64_t first_pair = first / 2;
    const std::size_t pairs = (count + 1) / 2;
#pragma omp parallel for schedule(static)
    for (std::size_t p = 0; p < pairs; ++p) {
        const std::uint64_t pair = first_pair + p;
        // u1 in (0, 1] so the logarithm is finite.
        const double u1 = static_cast<double>((mix64(stream + 2 * pair) >> 11) + 1) * 0x1.0p-53;
        const double u2 = static_cast<double>(mix64(stream + 2 * pair + 1) >> 11) * 0x1.0p-53;
        const double r = std::sqrt(-2.0 * std::log(u1)) * stddev;
        out[2 * p] = static_cast<float>(r * std::cos(kTwoPi * u2));
        if (2 * p + 1 < count) out[2 * p + 1] = static_cast<float>(r * std::sin(kTwoPi * u2));
    }
}

// The synthetic vocabulary, laid out like llama's SentencePiece one: <unk>, <s>, </s>, the 256
// byte-fallback tokens, then lowercase strings in length order, each with and without the
// word-start marker U+2581, scored so shorter (earlier) pieces rank higher. Any text therefore
// tokenizes: letters merge into short pieces and everything else falls back to bytes.
struct Vocabulary {
    std::vector<std::string> pieces;
    std::vector<float> scores;
    std::vector<std::int32_t> types;
};

Vocabulary make_vocabulary(int size) {
    Vocabulary v;
    auto add = [&](std::string piece, std::int32_t type) {
        v.scores.push_back(-static_cast<float>(v.pieces.size()));
        v.pieces.push_back(std::move(piece));
        v.types.push_back(type);
    };
    add("<unk>", 2);
    add("<s>", 3);
    add("</s>", 3);
    for (int b = 0; b < kByteTokens; ++b) {
        char text[8];
        std::snprintf(text, sizeof text, "<0x%02X>", b);
        add(text, 6);
    }
    const std::string marker = "\xE2\x96\x81";
    if (static_cast<int>(v.pieces.size()) < size) add(marker, 1);
    for (std::size_t length = 1; static_cast<int>(v.pieces.size()) < size; ++length) {
        std::vector<int> digits(length, 0);  // base-26 odometer over the strings of this length
        while (static_cast<int>(v.pieces.size()) < size) {
            std::string word;
            for (int d : digits) word.push_back(static_cast<char>('a' + d));
            add(marker + word, 1);
            if (static_cast<int>(v.pieces.size()) < size) add(word, 1);
            std::size_t i = length;
            while (i > 0 && ++digits[i - 1] == 26) digits[--i] = 0;
            if (i == 0) break;
        }
    }
    return v;
}

using kvfuse::model::QuantizeRow;

// llama.cpp's general.file_type for a file whose matrices are all of one type (its LLAMA_FTYPE_*;
// the K types as their _S variants, which are the closest "pure" ones).
std::uint32_t llama_file_type(GgmlType type) {
    switch (type) {
        case GgmlType::f32: return 0;
        case GgmlType::f16: return 1;
        case GgmlType::q4_0: return 2;
        case GgmlType::q4_1: return 3;
        case GgmlType::q8_0: return 7;
        case GgmlType::q5_0: return 8;
        case GgmlType::q5_1: return 9;
        case GgmlType::q2_k: return 10;
        case GgmlType::q3_k: return 11;
        case GgmlType::q4_k: return 14;
        case GgmlType::q5_k: return 16;
        case GgmlType::q6_k: return 18;
        case GgmlType::iq4_nl: return 25;
        case GgmlType::iq4_xs: return 30;
        case GgmlType::bf16: return 32;
        default: return 0;
    }
}

// --dtype q4_k_m: llama.cpp's Q4_K_M mix (llama_tensor_get_type): Q4_K everywhere but Q6_K for
// output.weight and for attn_v / ffn_down of the layers use_more_bits picks (the first and last
// eighth, and every third between).
constexpr const char* kQ4KMixName = "q4_k_m";
constexpr std::uint32_t kQ4KMixFileType = 15;  // LLAMA_FTYPE_MOSTLY_Q4_K_M
bool use_more_bits(int layer, int layers) {
    return layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;
}

struct TensorPlan {
    std::string name;
    std::vector<std::uint64_t> dims;  // ggml order: dims[0] is the input (contiguous) side
    const TypeTraits* type;
    float stddev;       // 0: every value is `mean` (norm weights)
    float mean = 0.0f;  // added to every value
    std::vector<float> values = {};  // when set, the tensor's values (rope_freqs)
    std::uint64_t offset = 0, bytes = 0;
};

// A template of each family: enough Jinja to be read as that family by model/chat_template.cpp
// (and by llama.cpp's detection, which looks for the same markers), and its control tokens.
struct ChatFamily {
    const char* name;
    const char* jinja;
    std::vector<std::string> markers;
};

const std::vector<ChatFamily>& chat_families() {
    static const std::vector<ChatFamily> families = {
        {"llama3",
         "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
         "{{ message['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
         "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
         {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}},
        {"chatml",
         "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
         {"<|im_start|>", "<|im_end|>"}},
        {"mistral",
         "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST] {{ message['content'] }} "
         "[/INST]{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}",
         {"[INST]", "[/INST]"}},
        {"phi3",
         "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
         {"<|user|>", "<|assistant|>", "<|end|>"}},
        {"gemma",
         "{{ bos_token }}{% for message in messages %}<start_of_turn>{{ message['role'] }}\n{{ message['content'] }}"
         "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
         {"<start_of_turn>", "<end_of_turn>"}},
    };
    return families;
}

const ChatFamily* find_chat_family(const std::string& name) {
    for (const ChatFamily& f : chat_families())
        if (name == f.name) return &f;
    return nullptr;
}

// The temporary file is removed if the process is interrupted, so an aborted run leaves nothing
// behind. The handler only calls unlink (async-signal-safe) and then dies of the same signal.
char g_temp_path[4096] = {};
extern "C" void remove_temp_and_reraise(int sig) {
    if (g_temp_path[0] != '\0') ::unlink(g_temp_path);
    std::signal(sig, SIG_DFL);
    std::raise(sig);
}

class TempFile {
   public:
    explicit TempFile(const std::string& final_path) : final_(final_path) {
        path_ = final_path + ".tmp.XXXXXX";
        if (path_.size() >= sizeof g_temp_path) throw std::runtime_error(final_path + ": path is too long");
        fd_ = ::mkstemp(path_.data());
        if (fd_ < 0) throw std::runtime_error(final_path + ": cannot create a temporary file next to it: " + std::strerror(errno));
        ::fchmod(fd_, 0644);  // mkstemp creates 0600; a model file is not secret
        std::memcpy(g_temp_path, path_.c_str(), path_.size() + 1);
        for (int sig : {SIGINT, SIGTERM, SIGHUP}) previous_[sig] = std::signal(sig, remove_temp_and_reraise);
    }
    ~TempFile() {
        if (fd_ >= 0) ::close(fd_);
        if (!committed_) ::unlink(path_.c_str());
        g_temp_path[0] = '\0';
        for (int sig : {SIGINT, SIGTERM, SIGHUP}) std::signal(sig, previous_[sig]);
    }
    void write(const void* data, std::size_t bytes) {
        const auto* p = static_cast<const std::uint8_t*>(data);
        while (bytes > 0) {
            const ssize_t n = ::write(fd_, p, bytes);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) fail("write failed");
            p += n;
            bytes -= static_cast<std::size_t>(n);
        }
    }
    // Flushes to disk before the rename: after a crash the name then holds the old file or the
    // complete new one, never a prefix.
    void commit() {
        if (::fsync(fd_) != 0) fail("fsync failed");
        if (::close(fd_) != 0) {
            fd_ = -1;
            fail("close failed");
        }
        fd_ = -1;
        if (::rename(path_.c_str(), final_.c_str()) != 0) fail("cannot rename the temporary file into place");
        committed_ = true;
        const std::string dir = std::filesystem::path(final_).parent_path().string();
        const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {  // makes the rename itself durable; best effort (some file systems refuse)
            ::fsync(dfd);
            ::close(dfd);
        }
    }

   private:
    [[noreturn]] void fail(const std::string& what) const {
        throw std::runtime_error(final_ + ": " + what + ": " + std::strerror(errno));
    }
    std::string final_, path_;
    int fd_ = -1;
    bool committed_ = false;
    void (*previous_[NSIG])(int) = {};
};

}  // namespace

void validate(const RandomModelSpec& s) {
    auto need = [](bool ok, const std::string& what) {
        if (!ok) throw std::invalid_argument(what);
    };
    // Upper bounds are the loader's own limits (driver/model), so every file written loads.
    need(s.dim >= 2 && s.dim <= 65536, "--dim must be in [2, 65536]");
    need(s.layers >= 2 && s.layers <= 1000, "--layers must be in [2, 1000] (fusion needs a check layer after layer 0)");
    need(s.heads >= 1 && s.heads <= s.dim, "--heads must be in [1, dim]");
    need(s.kv_heads >= 1 && s.kv_heads <= s.heads, "--kv-heads must be in [1, heads]");
    need(s.heads % s.kv_heads == 0, "--heads (" + std::to_string(s.heads) + ") must be a multiple of --kv-heads (" +
                                        std::to_string(s.kv_heads) + ")");
    need(s.arch == "llama" || s.arch == "qwen2" || s.arch == "qwen3", "--arch must be llama, qwen2 or qwen3, not '" + s.arch + "'");
    need(s.head_dim >= 0 && s.head_dim <= 4096, "--head-dim must be in [1, 4096] (0: dim / heads)");
    need(s.head_dim != 0 || s.dim % s.heads == 0,
         "--dim (" + std::to_string(s.dim) + ") must be a multiple of --heads (" + std::to_string(s.heads) +
             ") unless --head-dim gives the head size");
    const int head_dim = head_size(s);
    need(head_dim % 2 == 0, "the head size " + std::to_string(head_dim) + " must be even (RoPE rotates pairs)");
    need(s.chat_template.empty() || find_chat_family(s.chat_template) != nullptr,
         "--chat-template must be llama3, chatml, mistral, phi3 or gemma, not '" + s.chat_template + "'");
    need(s.hidden >= 1 && s.hidden <= (1 << 20), "--hidden must be in [1, 1048576]");
    need(s.vocab >= kSpecialTokens + kByteTokens && s.vocab <= (1 << 24),
         "--vocab must be in [259, 16777216] (3 special and 256 byte tokens come first)");
    need(s.context >= 16 && s.context <= (1 << 24), "--context must be in [16, 16777216]");
    need(std::isfinite(s.rope_base) && s.rope_base > 1.0, "--rope-base must be a finite number above 1");
    const TypeTraits* type =
        s.dtype == kQ4KMixName ? &kvfuse::model::type_traits(GgmlType::q4_k) : kvfuse::model::find_type_traits(s.dtype);
    need(type != nullptr && type->supported(), "--dtype must be one of " + kvfuse::model::supported_type_names() + " or " +
                                                   kQ4KMixName + ", not '" + s.dtype + "'");
    need(!s.random_codes || can_draw_blocks(type->type),  // q4_k_m: its q4_k and q6_k both drawn
         "--random-codes draws q4_k and q6_k blocks (and so q4_k_m), not " + s.dtype);
    // Every matrix row (dim or hidden values) must be whole blocks of the type.
    const int block = static_cast<int>(type->block_elements);
    need(s.dim % block == 0 && s.hidden % block == 0 && s.heads * head_dim % block == 0,
         std::string("--dtype ") + type->name + " stores rows in blocks of " + std::to_string(type->block_elements) +
             " values: --dim (" + std::to_string(s.dim) + "), --hidden (" + std::to_string(s.hidden) +
             ") and heads x head size (" + std::to_string(s.heads * head_dim) + ") must be multiples of it");
}

int head_size(const RandomModelSpec& s) { return s.head_dim != 0 ? s.head_dim : s.dim / s.heads; }

std::vector<float> llama31_rope_freqs(int rotary_dims, double base) {
    // Llama 3.1's published scaling: wavelengths shorter than original_context / high_freq_factor
    // keep their frequency, longer than original_context / low_freq_factor are divided by
    // `factor`, the band between is blended; the divisor is the frequency over the scaled one.
    constexpr double kFactor = 8.0, kLow = 1.0, kHigh = 4.0, kOriginal = 8192.0, kPi = 3.14159265358979323846;
    std::vector<float> out(static_cast<std::size_t>(rotary_dims / 2));
    for (int i = 0; i < rotary_dims / 2; ++i) {
        const double freq = std::pow(base, -2.0 * i / rotary_dims);
        const double wavelength = 2.0 * kPi / freq;
        double scaled = freq;
        if (wavelength > kOriginal / kLow) {
            scaled = freq / kFactor;
        } else if (wavelength >= kOriginal / kHigh) {
            const double smooth = (kOriginal / wavelength - kLow) / (kHigh - kLow);
            scaled = (1.0 - smooth) * freq / kFactor + smooth * freq;
        }
        out[static_cast<std::size_t>(i)] = static_cast<float>(freq / scaled);
    }
    return out;
}

RandomModelInfo write_random_model(const RandomModelSpec& spec, const std::string& path, bool replace) {
    validate(spec);
    if (path.empty()) throw std::invalid_argument("--out must name a file");
    std::error_code error;
    const auto status = std::filesystem::status(path, error);
    if (std::filesystem::is_directory(status)) throw std::invalid_argument(path + ": is a directory");
    if (std::filesystem::exists(status) && !replace)
        throw std::invalid_argument(path + ": exists (use --force to replace it)");

    const std::uint64_t head_dim = static_cast<std::uint64_t>(head_size(spec));
    const std::uint64_t dim = static_cast<std::uint64_t>(spec.dim), hidden = static_cast<std::uint64_t>(spec.hidden),
                        vocab = static_cast<std::uint64_t>(spec.vocab), q = head_dim * static_cast<std::uint64_t>(spec.heads),
                        kv = head_dim * static_cast<std::uint64_t>(spec.kv_heads);
    const bool q4_k_mix = spec.dtype == kQ4KMixName;
    const TypeTraits* matrix_type =
        q4_k_mix ? &kvfuse::model::type_traits(GgmlType::q4_k) : kvfuse::model::find_type_traits(spec.dtype);
    const TypeTraits* more_bits = q4_k_mix ? &kvfuse::model::type_traits(GgmlType::q6_k) : matrix_type;
    const TypeTraits* f32 = &kvfuse::model::type_traits(GgmlType::f32);
    // Matrices: normal with deviation 1/sqrt(fan_in), so a projection of an RMS-normalized row
    // keeps unit scale and activations stay finite through any depth. Embeddings: deviation 1,
    // the scale of the normalized states the layers add to the residual stream. Norms: 1.
    std::vector<TensorPlan> plan;
    auto matrix = [&](const std::string& name, std::uint64_t in, std::uint64_t out, const TypeTraits* type) {
        plan.push_back({name, {in, out}, type, static_cast<float>(1.0 / std::sqrt(static_cast<double>(in)))});
    };
    auto norm = [&](const std::string& name) { plan.push_back({name, {dim}, f32, 0.0f}); };
    plan.push_back({"token_embd.weight", {dim, vocab}, matrix_type, 1.0f});
    norm("output_norm.weight");
    if (spec.rope_freqs)
        plan.push_back({"rope_freqs.weight", {head_dim / 2}, f32, 0.0f, 0.0f, llama31_rope_freqs(static_cast<int>(head_dim), spec.rope_base)});
    matrix("output.weight", dim, vocab, more_bits);  // untied: tied unit-deviation embeddings would give sharp logits
    for (int l = 0; l < spec.layers; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        const TypeTraits* mixed = use_more_bits(l, spec.layers) ? more_bits : matrix_type;
        norm(p + "attn_norm.weight");
        matrix(p + "attn_q.weight", dim, q, matrix_type);
        matrix(p + "attn_k.weight", dim, kv, matrix_type);
        matrix(p + "attn_v.weight", dim, kv, mixed);
        // Biases and per-head norms drawn around their neutral values (0 and 1), so that a
        // loader that skipped them would compute something else.
        if (spec.arch == "qwen2") {
            plan.push_back({p + "attn_q.bias", {q}, f32, 0.5f});
            plan.push_back({p + "attn_k.bias", {kv}, f32, 0.5f});
            plan.push_back({p + "attn_v.bias", {kv}, f32, 0.5f});
        }
        if (spec.arch == "qwen3") {
            plan.push_back({p + "attn_q_norm.weight", {head_dim}, f32, 0.3f, 1.0f});
            plan.push_back({p + "attn_k_norm.weight", {head_dim}, f32, 0.3f, 1.0f});
        }
        matrix(p + "attn_output.weight", q, dim, matrix_type);
        norm(p + "ffn_norm.weight");
        matrix(p + "ffn_gate.weight", dim, hidden, matrix_type);
        matrix(p + "ffn_up.weight", dim, hidden, matrix_type);
        matrix(p + "ffn_down.weight", hidden, dim, mixed);
    }

    kvfuse::model::GgufHeaderWriter header;
    Vocabulary vocabulary = make_vocabulary(spec.vocab);
    const ChatFamily* chat = spec.chat_template.empty() ? nullptr : find_chat_family(spec.chat_template);
    if (chat != nullptr) {
        // The markers take the last ids, as control tokens (type 3).
        if (vocabulary.pieces.size() < kSpecialTokens + kByteTokens + chat->markers.size())
            throw std::invalid_argument("--vocab is too small for the chat template's tokens");
        std::size_t id = vocabulary.pieces.size() - chat->markers.size();
        for (const std::string& marker : chat->markers) {
            vocabulary.pieces[id] = marker;
            vocabulary.types[id] = 3;
            ++id;
        }
    }
    char name[160];
    std::snprintf(name, sizeof name, "kvfuse random %s %dx%d (seed %llu)", spec.arch.c_str(), spec.layers, spec.dim,
                  static_cast<unsigned long long>(spec.seed));
    const std::string a = spec.arch + ".";
    header.add_string("general.architecture", spec.arch);
    header.add_string("general.name", name);
    header.add_string("general.description", "random weights for benchmarks and tests; it generates noise, not text");
    header.add_u32("general.alignment", static_cast<std::uint32_t>(kAlignment));
    header.add_u32("general.file_type", q4_k_mix ? kQ4KMixFileType : llama_file_type(matrix_type->type));
    header.add_u32(a + "context_length", static_cast<std::uint32_t>(spec.context));
    header.add_u32(a + "embedding_length", static_cast<std::uint32_t>(spec.dim));
    header.add_u32(a + "block_count", static_cast<std::uint32_t>(spec.layers));
    header.add_u32(a + "feed_forward_length", static_cast<std::uint32_t>(spec.hidden));
    header.add_u32(a + "attention.head_count", static_cast<std::uint32_t>(spec.heads));
    header.add_u32(a + "attention.head_count_kv", static_cast<std::uint32_t>(spec.kv_heads));
    header.add_u32(a + "attention.key_length", static_cast<std::uint32_t>(head_dim));
    header.add_u32(a + "attention.value_length", static_cast<std::uint32_t>(head_dim));
    header.add_f32(a + "attention.layer_norm_rms_epsilon", 1e-5f);
    header.add_u32(a + "rope.dimension_count", static_cast<std::uint32_t>(head_dim));
    header.add_f32(a + "rope.freq_base", static_cast<float>(spec.rope_base));
    header.add_u32(a + "vocab_size", static_cast<std::uint32_t>(spec.vocab));
    header.add_string("tokenizer.ggml.model", "llama");
    header.add_strings("tokenizer.ggml.tokens", vocabulary.pieces);
    header.add_f32s("tokenizer.ggml.scores", vocabulary.scores);
    header.add_i32s("tokenizer.ggml.token_type", vocabulary.types);
    header.add_u32("tokenizer.ggml.unknown_token_id", 0);
    header.add_u32("tokenizer.ggml.bos_token_id", 1);
    header.add_u32("tokenizer.ggml.eos_token_id", 2);
    if (chat != nullptr) header.add_string("tokenizer.chat_template", chat->jinja);

    RandomModelInfo info;
    std::uint64_t offset = 0;
    for (auto& t : plan) {
        std::uint64_t elements = 1;
        for (auto d : t.dims) elements *= d;
        t.offset = offset;
        t.bytes = *t.type->row_bytes(t.dims[0]) * (elements / t.dims[0]);
        offset = (offset + t.bytes + kAlignment - 1) / kAlignment * kAlignment;
        info.parameters += elements;
        header.add_tensor_info(t.name, t.dims, t.type->type, t.offset);
    }
    const std::vector<std::uint8_t> head = header.bytes(kAlignment);
    info.bytes = head.size() + offset;

    TempFile file(path);
    file.write(head.data(), head.size());
    // Streamed in blocks: a realistic model is gigabytes and never needs to be in memory whole.
    // Values in chunks of 2^22 (even, and whole blocks of every type), stored in the tensor's type
    // through the type table's quantizer, in parallel pieces of 64 blocks.
    constexpr std::size_t kBlock = std::size_t{1} << 22;
    std::vector<float> values(kBlock);
    std::vector<std::uint8_t> stored;
    const std::uint8_t zeros[kAlignment] = {};
    std::uint64_t written = 0;
    for (const auto& t : plan) {
        const std::uint64_t elements = t.bytes / t.type->block_bytes * t.type->block_elements;
        const std::uint64_t stream = stream_seed(spec.seed, t.name);
        const std::size_t piece = 64 * t.type->block_elements, piece_bytes = 64 * t.type->block_bytes;
        for (std::uint64_t first = 0; first < elements; first += kBlock) {
            const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kBlock, elements - first));
            stored.resize(n / t.type->block_elements * t.type->block_bytes);
            if (spec.random_codes && t.values.empty() && t.stddev != 0.0f && can_draw_blocks(t.type->type)) {
                const std::uint64_t first_block = first / t.type->block_elements;
                const std::size_t blocks = n / t.type->block_elements;
#pragma omp parallel for schedule(static)
                for (std::size_t p = 0; p < (blocks + 63) / 64; ++p)
                    draw_blocks(t.type->type, stream, first_block + 64 * p, std::min<std::size_t>(64, blocks - 64 * p), t.stddev,
                                stored.data() + p * piece_bytes);
                file.write(stored.data(), stored.size());
                continue;
            }
            if (!t.values.empty()) {
                std::copy(t.values.begin(), t.values.end(), values.begin());
            } else if (t.stddev == 0.0f) {
                std::fill(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(n), 1.0f);
            } else {
                fill_normal(stream, first, n, t.stddev, values.data());
                for (std::size_t i = 0; i < n; ++i) values[i] += t.mean;
            }
            const QuantizeRow quantize = t.type->quantize_row;
#pragma omp parallel for schedule(dynamic)
            for (std::size_t p = 0; p < (n + piece - 1) / piece; ++p)
                quantize(values.data() + p * piece, stored.data() + p * piece_bytes, std::min(piece, n - p * piece));
            file.write(stored.data(), stored.size());
        }
        written = t.offset + t.bytes;
        const std::uint64_t padded = (written + kAlignment - 1) / kAlignment * kAlignment;
        file.write(zeros, static_cast<std::size_t>(padded - written));
    }
    file.commit();
    return info;
}

}  // namespace kvfuse::cli
