// The fusion pipeline: stored chunk caches fused into a request by one of the methods of the
// method table (method_table(); the built-in ones in method_table.cpp, each method's selector in
// a file of its own under selectors/), and greedy decoding on the result. Methods and notation:
// docs/FUSION.md and docs/ALGORITHMS.md.
#pragma once

#include <cstdint>
#include <deque>
#include <stdexcept>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fusion/fusion_model.h"
#include "kvfuse/kvfuse.hpp"
#include "fusion/requests.h"

namespace kvfuse::fusion {

// A fusion method: a row of the method table (method_table.cpp), named as there. Full
// prefill (the reference) and A3 (the default) are named here; any other is reached through
// the table or parse_method. What each method does: docs/FUSION.md, docs/ALGORITHMS.md.
class Method {
   public:
    static const Method full, a3;
    constexpr Method() = default;  // full prefill
    constexpr std::string_view name() const { return name_; }
    friend constexpr bool operator==(const Method&, const Method&) = default;

   private:
    friend struct MethodInfo;
    constexpr explicit Method(std::string_view name) : name_(name) {}
    std::string_view name_ = "full";  // the table's (or a literal's) storage
};
inline constexpr Method Method::full{"full"};
inline constexpr Method Method::a3{"a3"};

// Where a method chooses its recomputed rows.
enum class SelectAt {
    nowhere,           // full prefill: every row through every layer
    request,           // from the request alone (static), before the first layer that keeps stored rows
    check_layer,       // from the fresh Q/K/V of every row at the check layer
    every_later_layer  // at the check layer, and rows join at each later layer
};

// The selector interface (selector.h).
struct SelectionContext;
struct Selection;
using SelectRows = Selection (*)(const SelectionContext& context);
using JoinRows = std::vector<std::int64_t> (*)(const SelectionContext& context, int layer, const float* q,
                                               const float* k, std::size_t n);

// One row per method: the table that parsing, --help, `run`, `eval` and the pipeline read (so
// a method is listed in one place), in the order the commands show them.
struct MethodInfo {
    const char* name;     // on the command line and in results
    const char* summary;  // --help
    bool takes_ratio;     // the selection size follows --ratio / --ratios
    SelectAt where;
    SelectRows select;         // null only for full prefill (SelectAt::nowhere)
    JoinRows join = nullptr;   // SelectAt::every_later_layer only
    Method method() const { return Method(name); }
};
// The built-in methods (method_table.cpp: eight, full prefill and seven that fuse; the test
// MethodTableNamesEveryMethodOnce checks the count), then those registered, in table order.
// References into it stay valid when a method is registered.
const std::deque<MethodInfo>& method_table();
// Adds a method (an engine's own, a test's) at the end of the table. Call it before requests
// run, from one thread; name and summary must outlive the program (string literals). Throws
// std::invalid_argument when the name is taken or the row does not fit its SelectAt (a
// selector for every method but full prefill's, a join exactly for every_later_layer).
void register_method(const MethodInfo& info);
// Throws std::invalid_argument when the table lacks the method.
const MethodInfo& method_info(Method method);
// Every method but full prefill, in table order (`--method all`, eval's default).
std::vector<Method> fused_methods();
// "full, reuse, ..." (with `separator` between the names), for help and error texts.
std::string method_names(const char* separator = ", ", bool with_full = true);

// A name from the table; throws std::invalid_argument naming the methods otherwise.
Method parse_method(std::string_view name);
const char* method_name(Method method);

// Precision of the keys the A3 scoring kernel reads.
enum class ScoreKeys { f32, int8, int4 };

struct FusionOptions {
    Method method = Method::a3;
    double ratio = 0.15;            // selected rows = floor(ratio * (T - M)) document rows
    int check_layer = 1;            // methods selecting at the check layer do so here; layers before it run in full
    std::size_t epic_tokens = 16;   // epic: first tokens of every chunk
    bool a3_smoothing = true;       // a3: width-5 moving average of the relevance
    ScoreKeys a3_scoring = ScoreKeys::f32;  // a3: f32, or int8 / int4 keys with int8 queries (quantized on the fly)
    // a3-layers and a3-probe, at the layers after the check layer: score the chunks' stored keys (their
    // quantized form for int8 / int4) in each chunk's own frame, as ALGORITHMS.md defines it;
    // false: score the fused cache's keys (recomputed rows fresh), quantized per request.
    bool a3_stored_keys = true;
    // Load (copy V, re-rotate K) layer l+1's stored rows on a thread of its own while layer l
    // is computed, instead of every layer before the first; that thread's kernels run on a
    // context of their own with one worker (KernelContexts::loader). Always so when a chunk
    // is still arriving (ChunkKvView::arrival), so that its load overlaps the earlier layers.
    bool pipelined_loading = false;
    bool recompute_layer0 = true;   // false: layer 0 too uses the stored rows (reuse identity)
    std::uint32_t seed = 1;         // random
    // Workers per kernel call (the driver's --threads): 0 = OpenMP's default at the time of the
    // call, as the calls without a context run. See KernelContexts.
    int threads = 0;
    // false: no logits (FusionRun::logits left empty), for callers that want the cache alone:
    // compute_chunk_kv runs a chunk as the question of a full prefill, and its logits would be
    // chunk tokens x vocab floats (1 GiB for 2K tokens of a 128K vocabulary), all discarded.
    bool logits = true;
};

// The kvfuse execution contexts (kvfuse.h) the pipeline's kernel calls run on, held as an engine
// holds them: created by a stream's first request and reused by every later one, so that the
// kernels' scratch and RoPE tables stay warm. Two, since a context serves one call at a time:
// one for the request's own thread, one (threads 1) for the pipelined loading thread, whose
// calls overlap the request's. Both follow the process-wide tuning (the start-up profile `kvfuse
// tune` writes), as the calls without a context do, so results do not depend on which is used.
class KernelContexts {
   public:
    KernelContexts() = default;
    // Moved from, a KernelContexts holds none (the next prepare() makes them).
    KernelContexts(KernelContexts&& other) noexcept { *this = std::move(other); }
    KernelContexts& operator=(KernelContexts&& other) noexcept {
        threads_ = std::exchange(other.threads_, -1);
        request_ = std::move(other.request_);
        loader_ = std::move(other.loader_);
        return *this;
    }
    // (Re)creates the contexts when there are none yet or `threads` (FusionOptions::threads)
    // differs from theirs. Throws std::runtime_error when a context cannot be created.
    void prepare(int threads);
    // Before prepare(): empty, which the kvfuse_ctx_* calls take as the calling thread's default
    // context.
    kvfuse::Context& request() { return request_; }
    kvfuse::Context& loader() { return loader_; }
    // The `threads` of the last prepare(); -1 before the first.
    int threads() const { return threads_; }

   private:
    int threads_ = -1;  // none created yet
    kvfuse::Context request_, loader_;
};

// kvfuse::LocalAllocator (large blocks on the NUMA node(s) of the placed threads) whose
// vectors leave new elements uninitialized: a request's buffers are written in full before
// they are read, so zero-filling them (and, in a fresh block, faulting in every page for it)
// would be pure cost. Only for trivial element types.
template <class T>
struct UninitializedLocalAllocator : kvfuse::LocalAllocator<T> {
    UninitializedLocalAllocator() = default;
    template <class U>
    UninitializedLocalAllocator(const UninitializedLocalAllocator<U>&) noexcept {}
    template <class U>
    void construct(U* p) noexcept {
        ::new (static_cast<void*>(p)) U;  // default-initialization: no value written
    }
    template <class U, class... Args>
    void construct(U* p, Args&&... args) {
        ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
    }
};
// A request's working rows (hidden states, projections), kept across requests in a FusionRun.
using Floats = std::vector<float, UninitializedLocalAllocator<float>>;

// Per-layer K (after RoPE) and V of `tokens` rows, each row kv_heads x head_dim f32.
struct KvCache {
    std::size_t tokens = 0;
    std::size_t row = 0;  // kv_heads * head_dim
    using Rows = Floats;
    std::vector<Rows> k, v;

    // Shapes the cache for `tokens` rows per layer, keeping the buffers it has: their contents
    // are left as they are (stale or uninitialized), so the caller writes every row before
    // reading it. A buffer too small is replaced without copying its old rows.
    void reset(int layers, std::size_t tokens, std::size_t row);
    float* k_row(int layer, std::size_t t) { return k[static_cast<std::size_t>(layer)].data() + t * row; }
    float* v_row(int layer, std::size_t t) { return v[static_cast<std::size_t>(layer)].data() + t * row; }
};

// One layer's keys of a chunk quantized for the scoring kernel, in the chunk's own frame (RoPE
// at its stored positions, the chunk's per-head mean removed): int8 and int4 (two per byte),
// one scale per (token, KV head), the means per (KV head, dim). Computed once, when the chunk
// is, and stored with it, so scoring a stored chunk reads 1 or 1/2 byte per key element.
struct QuantizedKeysView {
    const std::int8_t* i8 = nullptr;
    const float* i8_scales = nullptr;
    const float* i8_means = nullptr;
    const std::uint8_t* i4 = nullptr;
    const float* i4_scales = nullptr;
    const float* i4_means = nullptr;
};

struct QuantizedKeys {
    std::vector<std::int8_t> i8;
    std::vector<float> i8_scales, i8_means;
    std::vector<std::uint8_t> i4;
    std::vector<float> i4_scales, i4_means;
    QuantizedKeysView view() const;
};

// Quantizes `tokens` key rows (kv_row floats each) of one layer.
QuantizedKeys quantize_chunk_keys(kvfuse::Context& context, const ModelShape& shape, const float* keys,
                                  std::size_t tokens);

// A stored chunk whose layers are still arriving (streamed from a remote store): wait(l) blocks
// until layer l's rows are readable and returns true, or returns false when they never will be
// (the chunk turned out missing or damaged mid-stream).
class LayerArrival {
   public:
    virtual ~LayerArrival() = default;
    virtual bool wait(int layer) const = 0;
};

// Thrown by run_request when a streamed chunk's layer never arrived. Nothing of that layer was
// read; the caller treats the chunk as a miss (recomputes it, or refuses a store-only request)
// and runs the request again.
class ChunkLayerUnavailable : public std::runtime_error {
   public:
    ChunkLayerUnavailable(std::size_t chunk, int layer)
        : std::runtime_error("stored chunk " + std::to_string(chunk) + ": layer " + std::to_string(layer) +
                             " did not arrive (missing, damaged or unreachable)"),
          chunk(chunk),
          layer(layer) {}
    std::size_t chunk;
    int layer;
};

// A stored chunk's cache, read-only: rows for the chunk's tokens at positions start_position..,
// per layer K (after RoPE at those positions) and V with row stride kv_row, and the quantized
// keys. Points into memory owned elsewhere (a ChunkKv below, or a store's mapping).
struct ChunkKvView {
    std::int64_t start_position = 0;
    std::size_t tokens = 0;
    std::vector<const float*> k, v;
    std::vector<QuantizedKeysView> quantized;  // per layer
    // Null: every layer readable now. Otherwise layer l's rows (k, v, quantized) may be read
    // only after arrival->wait(l) returned true; run_request waits layer by layer (loading on
    // its pipelined thread, so later layers arrive while earlier ones are computed).
    const LayerArrival* arrival = nullptr;
};

// Owning form, as computed by compute_chunk_kv.
struct ChunkKv {
    std::int64_t start_position = 0;
    KvCache cache;
    std::vector<QuantizedKeys> quantized;  // per layer
    ChunkKvView view() const;
};

// The chunk computed alone, after its own BOS (position 0), then the BOS row dropped: the
// stored rows sit at positions 1..n. Its kernel calls run on `kernels` (prepared for `threads`
// workers a call, FusionOptions::threads), which a caller computing many chunks keeps, as a
// request's FusionRun keeps its own, so the contexts' scratch and tables stay warm.
ChunkKv compute_chunk_kv(const FusionModel& model, std::span<const std::int32_t> chunk_tokens, KernelContexts& kernels,
                         int threads);
// The same on contexts of its own with OpenMP's default thread count (tests, one-off callers).
ChunkKv compute_chunk_kv(const FusionModel& model, std::span<const std::int32_t> chunk_tokens);

// Wall time of each stage of a request, in milliseconds. With pipelined loading, kv_load is
// the time the layers waited for their stored rows and rerotate 0; the loading thread's own
// busy time is `background_load`, outside the total (it overlaps the other stages).
struct StageTimes {
    double kv_load = 0, rerotate = 0, full_layers = 0, selection = 0, recompute = 0, logits = 0;
    double background_load = 0;
    double total() const { return kv_load + rerotate + full_layers + selection + recompute + logits; }
};

struct FusionRun {
    std::vector<float> logits;             // M x vocab: next-token logits at every question row
    KvCache cache;                         // the fused cache, T rows, every layer
    std::vector<std::int64_t> selected;    // document rows recomputed past the first layers
    std::vector<std::size_t> rows_per_layer;
    double recompute_fraction = 0;         // rows pushed through layers / (L * T)
    StageTimes times;
    // Working memory of the run (hidden states, Q/K/V and attention of the rows flowing), kept
    // so that a FusionRun given to run_request again reuses it.
    struct Buffers {
        Floats hidden, q, k, v, attention;
    } buffers;
    // The kernel calls' contexts, kept with the buffers (prepared by run_request); decoding on
    // this run's cache uses kernels.request() too.
    KernelContexts kernels;
};

// Runs one request. `chunks` holds one cache per request chunk (same order and token count);
// Method::full ignores it and is the reference full prefill.
FusionRun run_request(const FusionModel& model, const Request& request, std::span<const ChunkKvView> chunks,
                      const FusionOptions& options);
// The same into `run`, reusing its cache and buffers as a serving process keeps them across
// requests: no allocation, zero-fill or page fault when they are large enough (whatever they
// hold is overwritten before it is read; tests/test_fusion.cpp fills them with NaN to check).
void run_request(const FusionModel& model, const Request& request, std::span<const ChunkKvView> chunks,
                 const FusionOptions& options, FusionRun& run);

// Greedy decoding on a cache holding `cache.tokens` rows: `first` is appended at the next
// position, then n-1 more tokens are generated. Returns the n tokens (first included).
// Throws std::runtime_error naming the first non-finite logit: NaN weights or a broken norm
// would otherwise make greedy decoding pick token 0 and answer nothing, successfully.
void require_finite_logits(const float* logits, std::size_t rows, std::size_t vocab);

std::vector<std::int32_t> greedy_decode(const FusionModel& model, KvCache& cache, std::int32_t first,
                                        std::size_t n, kvfuse::Context& context);

// Attention of the query rows at `positions` (q: one row per position, H x D) against the first
// kv_tokens keys and values (f32, Hkv x D per row, row stride kv_stride), exact causal mask
// (row r sees keys j <= positions[r]), through kvfuse's sparse attention: what every method runs.
void attend_rows(kvfuse::Context& context, const ModelShape& shape, const float* q, std::span<const std::int64_t> positions,
                 const float* keys, const float* values, std::size_t kv_tokens, std::size_t kv_stride, float* out);

// A3 relevance of document rows [P, T - M) from the question rows' queries and the keys of rows
// [P, T) (both after RoPE), as ALGORITHMS.md defines it, through kvfuse's scoring kernel: f32,
// or int8 / int4 keys (per-head mean removed) with int8 queries.
std::vector<float> a3_relevance(kvfuse::Context& context, const ModelShape& shape, const float* q_question, std::size_t question_rows,
                                const float* keys, std::size_t prefix_rows, std::size_t total_rows,
                                bool smoothing, ScoreKeys key_precision = ScoreKeys::f32);

// The same relevance with the document keys read from the stored chunks as they are (f32, or
// their stored int8 / int4 form), each chunk in its own frame: the question's queries (RoPE at
// their absolute positions) are rotated back by each chunk's shift, and the chunk's mean comes
// back as a bias. The question's own keys (question_keys, M rows, fresh) close the candidates.
// Equals a3_relevance over the re-rotated stored keys (up to rounding; exactly so in f32).
std::vector<float> a3_relevance_stored(kvfuse::Context& context, const ModelShape& shape, const float* q_question, std::size_t question_rows,
                                       const float* question_keys, std::span<const ChunkKvView> chunks,
                                       std::span<const std::size_t> chunk_offsets, int layer, bool smoothing,
                                       ScoreKeys key_precision);

}  // namespace kvfuse::fusion
