// The packed weights of a dense layer (the opaque kvfuse_packed_weights of the C API) and their
// layout. ISA-neutral: one layout for every ISA, so weights packed once at model load stay valid
// whatever ISA is forced later.
//
// W is `out` rows of `in` (a linear layer's [out x in] matrix, C = A W^T). Its rows are cut into
// panels of kGemmPanel = 32 consecutive rows (output columns of C), the last zero-padded. Within
// a panel the data is k-major, so a microkernel reads one 128-byte line per k (f32) or per pair
// of k (bf16) for all 32 columns:
//   f32:  panel p holds in x 32 floats: element (k, j) at [k * 32 + j] for W row p * 32 + j.
//   bf16: panel p holds ceil(in / 2) x 32 pairs of bf16: pair (kp, j) = (W[j][2kp], W[j][2kp+1])
//         as one uint32, the even k in the low half (what vdpbf16ps multiplies lane-wise, and what
//         a shift/mask widens to two f32 vectors); an odd `in` ends with a zero high half.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {

// Internal linkage, not `inline`: see kTopkMaxBuckets (topk_scratch.h) on AddressSanitizer.
constexpr std::size_t kGemmPanel = 32;

struct AlignedFree {
    void operator()(void* p) const noexcept { ::operator delete(p, std::align_val_t{64}); }
};

// A packed matrix: sizes, the packed type and the 64-byte aligned panels.
struct PackedWeightsData {
    std::size_t out = 0, in = 0, panels = 0;
    kvfuse_dtype dtype = KVFUSE_DTYPE_F32;
    std::unique_ptr<void, AlignedFree> data;

    // Elements of one packed panel: floats (f32) or uint32 pairs (bf16).
    std::size_t panel_elements() const { return (dtype == KVFUSE_DTYPE_F32 ? in : (in + 1) / 2) * kGemmPanel; }
    const float* f32_panel(std::size_t p) const { return static_cast<const float*>(data.get()) + p * panel_elements(); }
    const std::uint32_t* bf16_panel(std::size_t p) const {
        return static_cast<const std::uint32_t*>(data.get()) + p * panel_elements();
    }
};

// Allocates the packed copy of a [out x in] matrix of `src_dtype` (row stride in elements) as
// `packed_dtype`; f32 -> bf16 rounds to nearest even. Throws std::bad_alloc.
PackedWeightsData pack_weights(kvfuse_dtype src_dtype, const void* weights, std::size_t out, std::size_t in,
                               std::size_t row_stride, kvfuse_dtype packed_dtype);

// Row j of W back from the packed copy, widened to f32 (exact for both dtypes).
void unpack_weight_row(const PackedWeightsData& w, std::size_t j, float* row);

}  // namespace kvfuse::detail

struct kvfuse_packed_weights {
    kvfuse::detail::PackedWeightsData weights;
};
