// The integer dot-product schemes of the A3 relevance kernel, and the internal test hook that
// forces one. ISA-neutral: every ISA's copy of score-inl.h reads these; dispatch/score_dot.cpp
// keeps the state.
//
// Each ISA copy runs its own best scheme unless a test forces another; a forced scheme the ISA
// has no instruction for runs an exact emulation, so that the key layout and offset correction
// of every scheme are checked against the reference on every machine, including the ones whose
// instruction this machine lacks (VNNI, sdot).
#pragma once

#include <cstdint>

// Exported from the shared library although not in the public header: for in-tree tests only.
#define KVFUSE_TEST_HOOK __attribute__((visibility("default")))

namespace kvfuse::detail {

enum class ScoreDot : std::int32_t {
    automatic = 0,   // (forcing only) each ISA's own best scheme
    pairs_s16,       // two s16 per 32-bit lane, `pmaddwd`: exact for any int8, every ISA
    quads_u8s8_s16,  // int4 only: k + 8 as four u8 per lane, `pmaddubsw`, up to 8 steps summed in s16
    quads_u8s8,      // k + 128 (int8) or k + 8 (int4) as four u8 per lane, `vpdpbusd`
    quads_s8s8,      // four s8 per lane, NEON `sdot`
};

// What one integer relevance call ran: the scheme, and whether through the instruction the
// scheme is named after (false: the exact emulation).
struct ScoreDotUsed {
    ScoreDot dot = ScoreDot::automatic;
    bool hardware = false;
};

// "pairs_s16", "quads_u8s8_s16", ...
KVFUSE_TEST_HOOK const char* score_dot_name(ScoreDot dot);

// Makes every later integer relevance call use `dot` where it applies to the keys
// (quads_u8s8_s16 only to int4 keys; other calls keep their own best); automatic undoes it.
KVFUSE_TEST_HOOK void force_score_dot(ScoreDot dot);
ScoreDot forced_score_dot();

// The scheme of the last integer relevance call on this thread (tests clear it by recording
// an empty one, so that a call that ran no integer scheme is visible).
KVFUSE_TEST_HOOK ScoreDotUsed last_score_dot();
KVFUSE_TEST_HOOK void record_score_dot(ScoreDotUsed used);

}  // namespace kvfuse::detail
