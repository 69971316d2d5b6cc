// State behind kernels/score/score_dot.h: the test hook forcing a scoring dot scheme, and what
// the last call ran (per thread, so parallel tests do not see each other's calls).
#include "kernels/score/score_dot.h"

#include <atomic>

namespace kvfuse::detail {

namespace {

std::atomic<ScoreDot> g_forced{ScoreDot::automatic};
thread_local ScoreDotUsed t_last;

}  // namespace

const char* score_dot_name(ScoreDot dot) {
    switch (dot) {
        case ScoreDot::automatic:
            return "automatic";
        case ScoreDot::pairs_s16:
            return "pairs_s16";
        case ScoreDot::quads_u8s8_s16:
            return "quads_u8s8_s16";
        case ScoreDot::quads_u8s8:
            return "quads_u8s8";
        case ScoreDot::quads_s8s8:
            return "quads_s8s8";
    }
    return "unknown";
}

void force_score_dot(ScoreDot dot) { g_forced.store(dot, std::memory_order_release); }

ScoreDot forced_score_dot() { return g_forced.load(std::memory_order_acquire); }

ScoreDotUsed last_score_dot() { return t_last; }

void record_score_dot(ScoreDotUsed used) { t_last = used; }

}  // namespace kvfuse::detail
