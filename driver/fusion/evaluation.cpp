#include "fusion/evaluation.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

namespace kvfuse::fusion {

namespace {

bool uses_ratio(Method m) { return method_info(m).takes_ratio; }

// ||KV_a - KV_b|| / ||KV_b|| of one layer, K and V together.
double kv_deviation(const KvCache& fused, const KvCache& full, std::size_t layer, std::size_t tokens) {
    double diff = 0.0, norm = 0.0;
    const std::size_t n = tokens * full.row;
    for (const auto* pair : {&fused.k, &fused.v}) {
        const auto& a = (*pair)[layer];
        const auto& b = pair == &fused.k ? full.k[layer] : full.v[layer];
        for (std::size_t i = 0; i < n; ++i) {
            const double d = static_cast<double>(a[i]) - b[i];
            diff += d * d;
            norm += static_cast<double>(b[i]) * b[i];
        }
    }
    return norm > 0.0 ? std::sqrt(diff / norm) : 0.0;
}

std::string first_line(const std::string& text) {
    std::size_t begin = text.find_first_not_of(" \n");
    if (begin == std::string::npos) return "";
    const std::size_t end = text.find('\n', begin);
    return text.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

std::string group_name(const std::string& method, double ratio) {
    if (ratio <= 0.0) return method;
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%s@%.2f", method.c_str(), ratio);
    return buffer;
}

}  // namespace

EvalResult evaluate(const LoadedModel& loaded, const std::vector<Request>& requests, ChunkSource& chunks,
                    const EvalOptions& options, const std::function<void(std::size_t, std::size_t)>& progress) {
    const FusionModel& model = *loaded.model;
    const ModelShape& s = model.shape();
    const std::size_t vocab = static_cast<std::size_t>(s.vocab);
    EvalResult result;
    std::vector<double> full_ttft;
    FusionRun full, run;  // their caches and buffers kept across requests, as a server would
    for (std::size_t index = 0; index < requests.size(); ++index) {
        const Request& request = requests[index];
        const std::size_t M = request.question.size();
        FusionOptions full_options = options.base;
        full_options.method = Method::full;
        run_request(model, request, {}, full_options, full);
        full_ttft.push_back(full.times.total());
        const auto full_first = argmax_row(full.logits, M - 1, vocab);
        const KvCache full_cache = full.cache;
        KvCache decode_cache = full.cache;
        const auto full_continuation = greedy_decode(model, decode_cache, full_first, options.decode_tokens, full.kernels.request());

        // Caches are precomputed: reading them back is part of TTFT, computing them is not.
        ChunkSource::Loaded loaded_chunks = chunks.get_all(request);
        for (Method method : options.methods) {
            if (method == Method::full) continue;
            const std::vector<double> ratios = uses_ratio(method) ? options.ratios : std::vector<double>{options.ratios.front()};
            for (double ratio : ratios) {
                FusionOptions o = options.base;
                o.method = method;
                o.ratio = ratio;
                chunks.run(request, loaded_chunks, o, run);  // a chunk whose stream breaks off is recomputed
                Measurement m;
                m.request_id = request.id;
                m.method = method_name(method);
                m.ratio = uses_ratio(method) ? ratio : 0.0;
                m.times = run.times;
                m.times.kv_load += loaded_chunks.load_ms;
                m.ttft_ms = m.times.total();
                m.recompute = run.recompute_fraction;
                const LogitAgreement agreement = compare_logit_rows(full.logits, run.logits, vocab);
                m.kl = agreement.mean_kl;
                m.top1 = agreement.top1;
                double deviation = 0.0;
                for (int l = 0; l < s.layers; ++l) {
                    m.kv_deviation_layers.push_back(kv_deviation(run.cache, full_cache, static_cast<std::size_t>(l), full_cache.tokens));
                    deviation += m.kv_deviation_layers.back();
                }
                m.kv_deviation = deviation / s.layers;
                const auto first = argmax_row(run.logits, M - 1, vocab);
                const auto continuation = greedy_decode(model, run.cache, first, options.decode_tokens, run.kernels.request());
                m.greedy = static_cast<double>(matching_prefix(continuation, full_continuation));
                if (!request.answers.empty()) {
                    const std::string answer = first_line(loaded.detokenize(continuation));
                    m.f1 = best_token_f1(answer, request.answers);
                    m.first_token_match = 0.0;
                    for (const auto& a : request.answers) {
                        const TokenIds ids = loaded.tokenize(a);
                        if (!ids.empty() && ids.front() == first) m.first_token_match = 1.0;
                    }
                }
                result.measurements.push_back(m);
            }
        }
        if (progress) progress(index + 1, requests.size());
    }
    result.full_ttft_ms = mean_with_error(full_ttft);

    // Aggregates per (method, ratio), in the order first seen.
    std::vector<std::string> order;
    std::map<std::string, std::vector<const Measurement*>> groups;
    for (const auto& m : result.measurements) {
        const std::string g = group_name(m.method, m.ratio);
        if (!groups.count(g)) order.push_back(g);
        groups[g].push_back(&m);
    }
    auto column = [](const std::vector<const Measurement*>& ms, double Measurement::*field) {
        std::vector<double> out;
        for (const auto* m : ms) out.push_back(m->*field);
        return out;
    };
    const std::pair<const char*, double Measurement::*> fields[] = {
        {"kl", &Measurement::kl},         {"top1", &Measurement::top1},       {"greedy", &Measurement::greedy},
        {"kv_dev", &Measurement::kv_deviation}, {"ttft_ms", &Measurement::ttft_ms}, {"recompute", &Measurement::recompute},
        {"f1", &Measurement::f1},         {"first_token", &Measurement::first_token_match}};
    for (const auto& g : order) {
        Summary summary;
        summary.method = groups[g].front()->method;
        summary.ratio = groups[g].front()->ratio;
        for (const auto& [name, field] : fields) summary.metrics[name] = mean_with_error(column(groups[g], field));
        const std::size_t layers = groups[g].front()->kv_deviation_layers.size();
        for (std::size_t l = 0; l < layers; ++l) {
            std::vector<double> values;
            for (const auto* m : groups[g]) values.push_back(m->kv_deviation_layers[l]);
            summary.kv_deviation_layers.push_back(mean_with_error(values));
        }
        result.summaries.push_back(summary);
    }
    // Paired differences on the same requests at equal ratio: the comparisons docs/RESULTS.md
    // reports (a pair whose methods were not run is skipped).
    const std::pair<const char*, const char*> pairs[] = {{"a3", "cacheblend"}, {"a3", "random"}, {"cacheblend", "random"},
                                                         {"a3-layers", "a3"}, {"a3-layers", "random"},
                                                         {"a3-probe", "a3"}, {"a3-probe", "a3-layers"},
                                                         {"a3", "reuse"}, {"cacheblend", "reuse"}, {"random", "reuse"},
                                                         {"epic", "reuse"}};
    for (double ratio : options.ratios)
        for (const auto& [a, b] : pairs) {
            const std::string ga = group_name(a, method_info(parse_method(a)).takes_ratio ? ratio : 0.0);
            const std::string gb = group_name(b, method_info(parse_method(b)).takes_ratio ? ratio : 0.0);
            if (!groups.count(ga) || !groups.count(gb) || groups[ga].size() != groups[gb].size()) continue;
            for (const auto& [name, field] : fields) {
                if (std::string(name) != "kl" && std::string(name) != "top1" && std::string(name) != "greedy") continue;
                result.paired[ga + " - " + gb + " " + name] = paired_difference(column(groups[ga], field), column(groups[gb], field));
            }
        }
    return result;
}

std::string format_table(const EvalResult& result, bool qa) {
    std::ostringstream out;
    char line[512];
    std::snprintf(line, sizeof line, "%-18s %9s %17s %15s %15s %13s %15s %8s%s\n", "method", "recompute", "KL(full||fused)",
                  "top-1 agree", "greedy tokens", "KV dev", "TTFT ms", "speedup", qa ? "          F1   first-token" : "");
    out << line;
    const double full_ms = result.full_ttft_ms.mean;
    std::snprintf(line, sizeof line, "%-18s %9.3f %17s %15s %15s %13s %8.2f±%-6.2f %8.2f\n", "full", 1.0, "0", "1", "-", "0",
                  full_ms, result.full_ttft_ms.standard_error, 1.0);
    out << line;
    for (const auto& s : result.summaries) {
        auto m = [&](const char* name) { return s.metrics.at(name); };
        const std::string name = group_name(s.method, s.ratio);
        std::snprintf(line, sizeof line, "%-18s %9.3f %9.4f±%-7.4f %7.3f±%-7.3f %7.2f±%-7.2f %6.4f±%-6.4f %8.2f±%-6.2f %8.2f",
                      name.c_str(), m("recompute").mean, m("kl").mean, m("kl").standard_error, m("top1").mean,
                      m("top1").standard_error, m("greedy").mean, m("greedy").standard_error, m("kv_dev").mean,
                      m("kv_dev").standard_error, m("ttft_ms").mean, m("ttft_ms").standard_error,
                      m("ttft_ms").mean > 0 ? full_ms / m("ttft_ms").mean : 0.0);
        out << line;
        if (qa) {
            std::snprintf(line, sizeof line, " %6.3f±%-6.3f %6.3f", m("f1").mean, m("f1").standard_error, m("first_token").mean);
            out << line;
        }
        out << "\n";
    }
    if (!result.summaries.empty() && !result.summaries.front().kv_deviation_layers.empty()) {
        out << "\nKV deviation per layer, ||KV_fused - KV_full|| / ||KV_full|| (mean over requests):\n";
        std::snprintf(line, sizeof line, "%-18s", "method");
        out << line;
        for (std::size_t l = 0; l < result.summaries.front().kv_deviation_layers.size(); ++l) {
            std::snprintf(line, sizeof line, " %8s", ("L" + std::to_string(l)).c_str());
            out << line;
        }
        out << "\n";
        for (const auto& s : result.summaries) {
            std::snprintf(line, sizeof line, "%-18s", group_name(s.method, s.ratio).c_str());
            out << line;
            for (const auto& d : s.kv_deviation_layers) {
                std::snprintf(line, sizeof line, " %8.4f", d.mean);
                out << line;
            }
            out << "\n";
        }
    }
    if (!result.paired.empty()) {
        out << "\npaired differences (same requests), mean ± standard error:\n";
        for (const auto& [name, d] : result.paired) {
            std::snprintf(line, sizeof line, "  %-40s %+9.4f ± %.4f  (n=%zu)\n", name.c_str(), d.mean, d.standard_error, d.count);
            out << line;
        }
    }
    return out.str();
}

void write_json(const EvalResult& result, const std::string& path, const std::string& command_line) {
    nlohmann::json doc;
    doc["command"] = command_line;
    doc["full_ttft_ms"] = {{"mean", result.full_ttft_ms.mean}, {"se", result.full_ttft_ms.standard_error}};
    for (const auto& s : result.summaries) {
        nlohmann::json j{{"method", s.method}, {"ratio", s.ratio}};
        for (const auto& [name, m] : s.metrics) j[name] = {{"mean", m.mean}, {"se", m.standard_error}, {"n", m.count}};
        for (const auto& d : s.kv_deviation_layers) j["kv_dev_layers"].push_back({{"mean", d.mean}, {"se", d.standard_error}});
        doc["summaries"].push_back(j);
    }
    for (const auto& [name, d] : result.paired) doc["paired"][name] = {{"mean", d.mean}, {"se", d.standard_error}, {"n", d.count}};
    for (const auto& m : result.measurements)
        doc["measurements"].push_back({{"request", m.request_id}, {"method", m.method}, {"ratio", m.ratio}, {"kl", m.kl},
                                       {"top1", m.top1}, {"greedy", m.greedy}, {"kv_dev", m.kv_deviation},
                                       {"kv_dev_layers", m.kv_deviation_layers},
                                       {"ttft_ms", m.ttft_ms}, {"recompute", m.recompute}, {"f1", m.f1},
                                       {"first_token", m.first_token_match},
                                       {"times_ms", {{"kv_load", m.times.kv_load}, {"rerotate", m.times.rerotate},
                                                     {"full_layers", m.times.full_layers}, {"selection", m.times.selection},
                                                     {"recompute", m.times.recompute}, {"logits", m.times.logits}}}});
    write_text_atomically(path, doc.dump(1) + "\n");
}

void write_text_atomically(const std::string& path, const std::string& text) {
    // Written beside the target and renamed over it: a reader never sees half a file.
    const std::string temp = path + ".tmp." + std::to_string(::getpid());
    {
        std::ofstream out(temp);
        if (!out) throw std::runtime_error(path + ": cannot write");
        out << text;
        out.flush();
        if (!out) {
            std::filesystem::remove(temp);
            throw std::runtime_error(path + ": write failed");
        }
    }
    std::error_code error;
    std::filesystem::rename(temp, path, error);
    if (error) {
        std::filesystem::remove(temp);
        throw std::runtime_error(path + ": " + error.message());
    }
}

}  // namespace kvfuse::fusion
