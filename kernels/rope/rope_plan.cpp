#include "kernels/rope/rope_plan.h"

#include <atomic>
#include <algorithm>
#include <cmath>
#include <numbers>

namespace kvfuse::detail {

bool validate_rope_config(const kvfuse_rope_config& c, std::string& why) {
    const int rotary = c.rotary_dims == 0 ? c.head_dim : c.rotary_dims;
    if (c.head_dim <= 0) {
        why = "head_dim (" + std::to_string(c.head_dim) + ") must be positive";
    } else if (c.rotary_dims < 0 || rotary > c.head_dim) {
        why = "rotary_dims (" + std::to_string(c.rotary_dims) + ") must be in [0, head_dim=" +
              std::to_string(c.head_dim) + "]";
    } else if (rotary % 2 != 0) {
        why = "rotary_dims (" + std::to_string(rotary) + ") must be even";
    } else if (!(c.base > 1.0) || !std::isfinite(c.base)) {
        why = "base (" + std::to_string(c.base) + ") must be a finite number > 1";
    } else if (c.pairing != KVFUSE_ROPE_NEOX && c.pairing != KVFUSE_ROPE_INTERLEAVED) {
        why = "unknown pairing " + std::to_string(static_cast<int>(c.pairing));
    } else if (c.scaling != KVFUSE_ROPE_SCALING_NONE && c.scaling != KVFUSE_ROPE_SCALING_LINEAR &&
               c.scaling != KVFUSE_ROPE_SCALING_LLAMA3) {
        why = "unknown scaling " + std::to_string(static_cast<int>(c.scaling));
    } else if (c.scaling != KVFUSE_ROPE_SCALING_NONE &&
               (!(c.scaling_factor > 0.0) || !std::isfinite(c.scaling_factor))) {
        why = "scaling_factor (" + std::to_string(c.scaling_factor) + ") must be finite and > 0";
    } else if (c.scaling == KVFUSE_ROPE_SCALING_LLAMA3 &&
               (!(c.llama3_low_freq_factor > 0.0) ||
                !(c.llama3_high_freq_factor > c.llama3_low_freq_factor) ||
                !std::isfinite(c.llama3_high_freq_factor) || c.llama3_original_context <= 0)) {
        why = "llama3 scaling needs 0 < low_freq_factor < high_freq_factor and "
              "original_context > 0";
    } else {
        if (c.freq_factors != nullptr)
            for (int i = 0; i < rotary / 2; ++i)
                if (!(c.freq_factors[i] > 0.0f) || !std::isfinite(c.freq_factors[i])) {
                    why = "freq_factors[" + std::to_string(i) + "] (" + std::to_string(c.freq_factors[i]) +
                          ") must be finite and > 0";
                    return false;
                }
        return true;
    }
    return false;
}

namespace {
double scaled_inv_freq(const kvfuse_rope_config& c, int rotary_dims, int pair) {
    const double freq = std::pow(c.base, -2.0 * pair / rotary_dims);
    switch (c.scaling) {
        case KVFUSE_ROPE_SCALING_LINEAR:
            return freq / c.scaling_factor;
        case KVFUSE_ROPE_SCALING_LLAMA3: {
            // Llama 3.1: short wavelengths keep their frequency, long ones are divided by the
            // factor, and the band between is blended linearly in 1/wavelength.
            const double wavelength = 2.0 * std::numbers::pi / freq;
            const double low_wavelength = c.llama3_original_context / c.llama3_low_freq_factor;
            const double high_wavelength = c.llama3_original_context / c.llama3_high_freq_factor;
            if (wavelength < high_wavelength) return freq;
            if (wavelength > low_wavelength) return freq / c.scaling_factor;
            const double smooth = (c.llama3_original_context / wavelength - c.llama3_low_freq_factor) /
                                  (c.llama3_high_freq_factor - c.llama3_low_freq_factor);
            return (1.0 - smooth) * freq / c.scaling_factor + smooth * freq;
        }
        default:
            return freq;
    }
}
}  // namespace

double rope_inv_freq(const kvfuse_rope_config& c, int rotary_dims, int pair) {
    const double freq = scaled_inv_freq(c, rotary_dims, pair);
    return c.freq_factors == nullptr ? freq : freq / static_cast<double>(c.freq_factors[pair]);
}

bool same_rope_config(const kvfuse_rope_config& a, const kvfuse_rope_config& b) {
    // Field by field: the struct has padding whose bytes a memcmp would read.
    if (!(a.head_dim == b.head_dim && a.rotary_dims == b.rotary_dims && a.base == b.base && a.pairing == b.pairing &&
          a.scaling == b.scaling && a.scaling_factor == b.scaling_factor &&
          a.llama3_low_freq_factor == b.llama3_low_freq_factor && a.llama3_high_freq_factor == b.llama3_high_freq_factor &&
          a.llama3_original_context == b.llama3_original_context))
        return false;
    if ((a.freq_factors == nullptr) != (b.freq_factors == nullptr)) return false;
    if (a.freq_factors == nullptr || a.freq_factors == b.freq_factors) return true;
    const int pairs = (a.rotary_dims == 0 ? a.head_dim : a.rotary_dims) / 2;
    return std::equal(a.freq_factors, a.freq_factors + pairs, b.freq_factors);
}

namespace {

// A copy of config's factors in `store`, and config pointed at it.
void own_factors(kvfuse_rope_config& config, std::vector<float>& store, int rotary_dims) {
    if (config.freq_factors == nullptr) {
        store.clear();
        return;
    }
    if (config.freq_factors != store.data()) store.assign(config.freq_factors, config.freq_factors + rotary_dims / 2);
    config.freq_factors = store.data();
}

RopePlan make_rope_plan(const kvfuse_rope_config& config) {
    static std::atomic<std::uint64_t> next_id{1};
    RopePlan plan;
    plan.id = next_id.fetch_add(1, std::memory_order_relaxed);
    plan.config = config;
    plan.rotary_dims = config.rotary_dims == 0 ? config.head_dim : config.rotary_dims;
    own_factors(plan.config, plan.freq_factors, plan.rotary_dims);
    plan.inv_freq.resize(static_cast<std::size_t>(plan.rotary_dims / 2));
    for (int i = 0; i < plan.rotary_dims / 2; ++i)
        plan.inv_freq[static_cast<std::size_t>(i)] = rope_inv_freq(config, plan.rotary_dims, i);
    return plan;
}

}  // namespace

const RopePlan& rope_plan_for(const kvfuse_rope_config& config) {
    // A few plans, so that an engine alternating configurations (a model with local and global
    // RoPE layers, or queries and keys of two models) neither rebuilds nor allocates per call.
    constexpr std::size_t kPlans = 4;
    thread_local RopePlan cached[kPlans];
    thread_local std::uint64_t last_use[kPlans] = {};
    thread_local std::uint64_t clock = 0;
    ++clock;
    std::size_t oldest = 0;
    for (std::size_t i = 0; i < kPlans; ++i) {
        if (cached[i].id != 0 && same_rope_config(cached[i].config, config)) {
            last_use[i] = clock;
            return cached[i];
        }
        if (last_use[i] < last_use[oldest]) oldest = i;
    }
    cached[oldest] = make_rope_plan(config);
    // The move kept the factors' buffer, but say so where it matters.
    own_factors(cached[oldest].config, cached[oldest].freq_factors, cached[oldest].rotary_dims);
    last_use[oldest] = clock;
    return cached[oldest];
}

RopeTable::RopeTable() = default;
RopeTable::~RopeTable() = default;

void RopeTable::build(const RopePlan& plan, kvfuse_dtype dtype, std::size_t heads,
                      std::int64_t delta) {
    const std::size_t pairs = plan.inv_freq.size();
    const std::size_t repeats = plan.row_flattened(heads) ? heads : 1;
    cos.resize(pairs * repeats);
    sin.resize(pairs * repeats);
    for (std::size_t i = 0; i < pairs; ++i) {
        // The angle is formed in double so that large deltas keep all their precision; only
        // the final cos/sin are rounded to f32.
        const double angle = static_cast<double>(delta) * plan.inv_freq[i];
        cos[i] = static_cast<float>(std::cos(angle));
        sin[i] = static_cast<float>(std::sin(angle));
    }
    for (std::size_t r = 1; r < repeats; ++r)
        for (std::size_t i = 0; i < pairs; ++i) {
            cos[r * pairs + i] = cos[i];
            sin[r * pairs + i] = sin[i];
        }
    if (plan.config.pairing == KVFUSE_ROPE_INTERLEAVED && dtype != KVFUSE_DTYPE_BF16) {
        cos2.resize(2 * cos.size());
        sin2.resize(2 * cos.size());
        for (std::size_t i = 0; i < cos.size(); ++i) {
            cos2[2 * i] = cos2[2 * i + 1] = cos[i];
            sin2[2 * i] = -sin[i];
            sin2[2 * i + 1] = sin[i];
        }
    }
    if (plan.config.pairing == KVFUSE_ROPE_NEOX && dtype == KVFUSE_DTYPE_BF16) {
        const std::size_t lanes = pairs / 2;
        cos_even.resize(lanes);
        sin_even.resize(lanes);
        cos_odd.resize(lanes);
        sin_odd.resize(lanes);
        for (std::size_t j = 0; j < lanes; ++j) {
            cos_even[j] = cos[2 * j];
            sin_even[j] = sin[2 * j];
            cos_odd[j] = cos[2 * j + 1];
            sin_odd[j] = sin[2 * j + 1];
        }
    }
    if (plan.neox_small_heads()) {
        const std::size_t head_dim = static_cast<std::size_t>(plan.config.head_dim), half = head_dim / 2;
        for (std::size_t e = 0; e < kSmallHeadRun; ++e) {
            const std::size_t k = e % head_dim;
            small_first[e] = k < half ? cos[k] : sin[k - half];
            small_second[e] = k < half ? -sin[k] : cos[k - half];
        }
        for (std::size_t l = 0; l < kSmallHeadRun / 2; ++l) {
            small_first_even[l] = small_first[2 * l];
            small_second_even[l] = small_second[2 * l];
            small_first_odd[l] = small_first[2 * l + 1];
            small_second_odd[l] = small_second[2 * l + 1];
        }
    }
    built_ = true;
    plan_id_ = plan.id;
    dtype_ = dtype;
    heads_ = heads;
    delta_ = delta;
}

void RopeTable::reserve(const RopePlan& plan, kvfuse_dtype dtype, std::size_t heads) {
    const std::size_t pairs = plan.inv_freq.size();
    const std::size_t entries = pairs * (plan.row_flattened(heads) ? heads : 1);
    cos.reserve(entries);
    sin.reserve(entries);
    if (plan.config.pairing == KVFUSE_ROPE_INTERLEAVED && dtype != KVFUSE_DTYPE_BF16) {
        cos2.reserve(2 * entries);
        sin2.reserve(2 * entries);
    }
    if (plan.config.pairing == KVFUSE_ROPE_NEOX && dtype == KVFUSE_DTYPE_BF16)
        for (std::vector<float>* half : {&cos_even, &sin_even, &cos_odd, &sin_odd}) half->reserve(pairs / 2);
}

void RopeTableCache::reserve(const RopePlan& plan, kvfuse_dtype dtype, std::size_t heads) {
    for (RopeTable& table : tables_) table.reserve(plan, dtype, heads);
}

RopeTableCache::RopeTableCache() = default;
RopeTableCache::~RopeTableCache() = default;

const RopeTable& RopeTableCache::get(const RopePlan& plan, kvfuse_dtype dtype, std::size_t heads,
                                     std::int64_t delta) {
    ++clock_;
    std::size_t oldest = 0;
    for (std::size_t e = 0; e < kEntries; ++e) {
        if (tables_[e].holds(plan, dtype, heads, delta)) {
            last_use_[e] = clock_;
            return tables_[e];
        }
        if (last_use_[e] < last_use_[oldest]) oldest = e;
    }
    tables_[oldest].build(plan, dtype, heads, delta);
    last_use_[oldest] = clock_;
    return tables_[oldest];
}

RopePositionTables::RopePositionTables() = default;
RopePositionTables::~RopePositionTables() = default;

const RopePositionSlot* RopePositionTables::prepare(const RopePlan& plan, kvfuse_dtype dtype, std::size_t heads,
                                                     const std::int64_t* deltas, std::size_t tokens, std::int64_t delta) {
    const auto in_range = [](std::int64_t d) { return d >= 0 && d < kPositions; };
    bool any = false;
    std::int64_t highest = -1;
    for (std::size_t t = 0; t < (deltas ? tokens : std::size_t{1}); ++t) {
        const std::int64_t d = deltas ? deltas[t] : delta;
        if (in_range(d)) any = true, highest = std::max(highest, d);
    }
    if (!any || tokens == 0) return nullptr;
    const bool bf16 = dtype == KVFUSE_DTYPE_BF16;
    const std::size_t heads_key = plan.row_flattened(heads) ? heads : 0;
    // f32 and f16 tables are the same: build them as f32's.
    const kvfuse_dtype build_dtype = bf16 ? KVFUSE_DTYPE_BF16 : KVFUSE_DTYPE_F32;
    RopePositionSlot* slot = nullptr;
    for (RopePositionSlot& s : slots_)
        if (!s.tables.empty() && same_rope_config(s.config, plan.config) && s.bf16 == bf16 && s.heads == heads_key) slot = &s;
    if (slot == nullptr) {
        slot = &slots_[0];
        for (RopePositionSlot& s : slots_)
            if (s.last_use < slot->last_use) slot = &s;
        slot->tables.clear();
        slot->config = plan.config, slot->bf16 = bf16, slot->heads = heads_key;
        slot->freq_factors.clear();
        own_factors(slot->config, slot->freq_factors, plan.rotary_dims);
    }
    slot->last_use = ++clock_;
    if (slot->tables.size() <= static_cast<std::size_t>(highest)) slot->tables.resize(static_cast<std::size_t>(highest) + 1);
    for (std::size_t t = 0; t < (deltas ? tokens : std::size_t{1}); ++t) {
        const std::int64_t d = deltas ? deltas[t] : delta;
        if (!in_range(d)) continue;
        std::unique_ptr<RopeTable>& table = slot->tables[static_cast<std::size_t>(d)];
        if (!table) {
            table = std::make_unique<RopeTable>();
            table->build(plan, build_dtype, heads, d);
        }
    }
    return slot;
}

}  // namespace kvfuse::detail
