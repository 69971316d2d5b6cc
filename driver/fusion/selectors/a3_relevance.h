// The A3 relevance the three A3 selectors (a3, a3-layers, a3-probe) share.
#pragma once

#include <vector>

#include "fusion/selector.h"

namespace kvfuse::fusion::selectors {

// At the check layer: every document row's relevance from the question's fresh queries and
// every row's fresh keys there (context.q, context.k), with the options' smoothing and key
// precision.
std::vector<float> a3_check_layer_relevance(const SelectionContext& context);

// At a later layer: the question's queries there (the last M of n fresh rows q, k) against
// that layer's stored keys in each chunk's own frame (options.a3_stored_keys), or against the
// fused cache's keys.
std::vector<float> a3_later_layer_relevance(const SelectionContext& context, int layer, const float* q, const float* k,
                                            std::size_t n);

}  // namespace kvfuse::fusion::selectors
