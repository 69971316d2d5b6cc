// Plain softmax attention in double with the exact causal mask: ground truth of the attention
// tests and the `scalar` ISA.
#pragma once

#include "kvfuse/kvfuse.h"

namespace kvfuse::reference {

// Same contract as kvfuse_sparse_attention (V2 fields at 0 / NULL read as their defaults); args
// must be valid. lse, like out, is computed in double and rounded to float.
void sparse_attention(const kvfuse_attention_args& args);

}  // namespace kvfuse::reference
