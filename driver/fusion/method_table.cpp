// The method table: every built-in method once, in the order the commands show them. Parsing,
// --help, `run`, `eval`, the server and the pipeline read it; nothing else lists the methods.
// Each method's selector lives in a file of its own under selectors/ (driver/README.md: adding
// a method).
#include <stdexcept>
#include <string>

#include "fusion/pipeline.h"
#include "fusion/selector.h"

namespace kvfuse::fusion {

namespace selectors {
Selection reuse(const SelectionContext&);
Selection epic(const SelectionContext&);
Selection cacheblend(const SelectionContext&);
Selection a3(const SelectionContext&);
Selection a3_layers(const SelectionContext&);
std::vector<std::int64_t> a3_layers_join(const SelectionContext&, int layer, const float* q, const float* k, std::size_t n);
Selection a3_probe(const SelectionContext&);
Selection random(const SelectionContext&);
}  // namespace selectors

namespace {

// name, --help summary, takes a ratio, where it selects, selector (and join, per layer).
std::deque<MethodInfo> built_in_methods() {
    return {
        {"full", "full prefill: the reference", false, SelectAt::nowhere, nullptr},
        {"reuse", "full reuse: only the prefix and question rows recomputed", false, SelectAt::request, selectors::reuse},
        {"epic", "EPIC: the first --epic-tokens of every chunk recomputed", false, SelectAt::request, selectors::epic},
        {"cacheblend", "CacheBlend: the rows of largest V deviation at the check layer", true, SelectAt::check_layer,
         selectors::cacheblend},
        {"a3", "A3: the rows the question attends to most at the check layer", true, SelectAt::check_layer, selectors::a3},
        {"a3-layers", "A3 at the check layer, then rows joining at every later layer", true, SelectAt::every_later_layer,
         selectors::a3_layers, selectors::a3_layers_join},
        {"a3-probe", "per-layer A3 decided up front by a probe of the prefix and question rows", true,
         SelectAt::check_layer, selectors::a3_probe},
        {"random", "random rows: the control", true, SelectAt::request, selectors::random},
    };
}

std::deque<MethodInfo>& table() {
    static std::deque<MethodInfo> methods = built_in_methods();
    return methods;
}

}  // namespace

const std::deque<MethodInfo>& method_table() { return table(); }

void register_method(const MethodInfo& info) {
    const std::string name = info.name == nullptr ? "" : info.name;
    if (name.empty() || info.summary == nullptr) throw std::invalid_argument("a method needs a name and a summary");
    for (const MethodInfo& known : table())
        if (name == known.name) throw std::invalid_argument("the method '" + name + "' is in the table already");
    if (info.where == SelectAt::nowhere)
        throw std::invalid_argument("method '" + name + "': full prefill is the only method that selects nowhere");
    if (info.select == nullptr) throw std::invalid_argument("method '" + name + "' has no selector");
    if ((info.join != nullptr) != (info.where == SelectAt::every_later_layer))
        throw std::invalid_argument("method '" + name + "': a join function goes with SelectAt::every_later_layer, and only there");
    table().push_back(info);
}

const MethodInfo& method_info(Method method) {
    for (const MethodInfo& info : table())
        if (method.name() == info.name) return info;
    throw std::invalid_argument("the method '" + std::string(method.name()) + "' is not in the method table");
}

std::vector<Method> fused_methods() {
    std::vector<Method> out;
    for (const MethodInfo& info : table())
        if (info.where != SelectAt::nowhere) out.push_back(info.method());
    return out;
}

std::string method_names(const char* separator, bool with_full) {
    std::string out;
    for (const MethodInfo& info : table()) {
        if (!with_full && info.where == SelectAt::nowhere) continue;
        out += (out.empty() ? "" : separator) + std::string(info.name);
    }
    return out;
}

Method parse_method(std::string_view name) {
    for (const MethodInfo& info : table())
        if (name == info.name) return info.method();
    throw std::invalid_argument("unknown method '" + std::string(name) + "' (use " + method_names() + ")");
}

const char* method_name(Method method) { return method_info(method).name; }

}  // namespace kvfuse::fusion
