#include "dispatch/scalar_kernels.h"

#include "kernels/rope/rope_plan.h"
#include "reference/attention_reference.h"
#include "reference/rope_reference.h"
#include "reference/score_reference.h"
#include "reference/topk_reference.h"

namespace kvfuse::detail {

namespace {

void rope_rotate_scalar(const RopePlan& plan, kvfuse_dtype dtype, const void* src,
                        std::size_t src_stride, void* dst, std::size_t dst_stride,
                        std::size_t tokens, std::size_t heads, const std::int64_t* deltas,
                        std::int64_t delta) {
    reference::rope_rotate(plan.config, dtype, src, src_stride, dst, dst_stride, tokens, heads,
                           deltas, delta);
}

void sparse_attention_scalar(const kvfuse_attention_args& args) { reference::sparse_attention(args); }

}  // namespace

void register_scalar_kernels(KernelTable& table) {
    table.rope_rotate = &rope_rotate_scalar;
    table.sparse_attention = &sparse_attention_scalar;
    table.topk = &reference::topk;
    table.relevance = &reference::a3_relevance;
}

}  // namespace kvfuse::detail
