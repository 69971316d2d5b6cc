// kvfuse.hpp as an engine built without exceptions uses it (ctest hpp_without_exceptions builds
// and runs this with -fno-exceptions), and, with -DKVFUSE_TEST_WRONG_ELEMENT, a tensor of an
// element type kvfuse has no kernel for, which must stop at a static_assert
// (ctest hpp_wrong_element_type_does_not_compile) instead of failing at link time; with
// -DKVFUSE_TEST_F16_WEIGHTS, f16 weights, which must stop at one too (hpp_f16_weights_do_not_compile).
#include <kvfuse/kvfuse.hpp>

#include <cstdio>
#include <vector>

int main() {
    kvfuse::RopeConfig rope;
    rope.head_dim = 4;
#ifdef KVFUSE_TEST_WRONG_ELEMENT
    std::vector<double> keys(8);
#else
    std::vector<float> keys = {1, 0, 0, 0, 0, 1, 0, 0};
#endif
    kvfuse::Status s = kvfuse::rope_rotate_span(rope, keys.data(), 2, 1, 4, 1);
#ifdef KVFUSE_TEST_F16_WEIGHTS
    std::vector<kvfuse::f16> weights(4);
    kvfuse::PackedWeights packed;
    s = kvfuse::PackedWeights::pack(weights.data(), 2, 2, 0, kvfuse::Dtype::f32, packed);
#endif
    if (!s.ok()) {
        std::fprintf(stderr, "%s\n", s.message().c_str());
        return 1;
    }
    rope.rotary_dims = 3;  // odd: refused, and the status says so without any exception
    s = kvfuse::rope_rotate_span(rope, keys.data(), 2, 1, 4, 1);
    if (s.ok() || s.code() != kvfuse::StatusCode::invalid_argument) return 1;
    std::vector<float, kvfuse::LocalAllocator<float>> local(1024, 1.0f);
    kvfuse::Tuning tuning = kvfuse::current_tuning();
    std::printf("without exceptions: %s; attention key tile %u\n", s.message().c_str(), tuning.attention_key_tile);
    return local[1023] == 1.0f ? 0 : 1;
}
