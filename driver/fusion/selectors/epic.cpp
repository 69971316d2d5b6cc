// EPIC (LegoLink): the first --epic-tokens rows of every chunk, its own attention sink, chosen
// from the request alone.
#include <algorithm>

#include "fusion/selector.h"

namespace kvfuse::fusion::selectors {

Selection epic(const SelectionContext& context) {
    Selection out;
    for (std::size_t c = 0; c < context.chunk_offsets.size(); ++c)
        for (std::size_t t = 0; t < std::min(context.options.epic_tokens, context.request.chunks[c].size()); ++t)
            out.rows.push_back(static_cast<std::int64_t>(context.chunk_offsets[c] + t));
    return out;
}

}  // namespace kvfuse::fusion::selectors
