// Full reuse: every stored row kept; only the prefix and question rows (which the pipeline
// always recomputes) go through the layers after the first.
#include "fusion/selector.h"

namespace kvfuse::fusion::selectors {

Selection reuse(const SelectionContext&) { return {}; }

}  // namespace kvfuse::fusion::selectors
