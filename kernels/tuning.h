// The tuning parameters in force, as the kernels read them (dispatch/tuning.cpp owns them and
// the profile they come from). ISA-neutral: kernels of every ISA call these.
#pragma once

#include <cstddef>

#include "kvfuse/kvfuse.h"

namespace kvfuse::detail {

// A snapshot of the parameters in force (validated; taken once per kernel call).
kvfuse_tuning current_tuning();

// The attention key tile for `head_dim`: the tuned value, or when that is 0 (auto) the largest
// of 128, 64, 32 whose transposed keys and values (8 * head_dim * tile bytes) fit in 3/4 of L1d.
std::size_t attention_key_tile(const kvfuse_tuning& tuning, std::size_t head_dim);

}  // namespace kvfuse::detail
