// C++17 consumer: rotates a key through the installed C++ API and prints the active ISA.
#include <cmath>
#include <cstdio>
#include <kvfuse/kvfuse.hpp>

int main() {
    kvfuse::RopeConfig config;
    config.head_dim = 2;
    float key[2] = {1.0f, 0.0f};
    const kvfuse::Status status = kvfuse::rope_rotate_span(config, key, 1, 1, 2, 1);
    kvfuse::Isa isa = kvfuse::Isa::scalar;
    if (!status.ok() || !kvfuse::active_isa(isa).ok()) {
        std::fprintf(stderr, "kvfuse call failed: %s\n", status.message().c_str());
        return 1;
    }
    if (std::fabs(key[0] - std::cos(1.0f)) > 1e-6f || std::fabs(key[1] - std::sin(1.0f)) > 1e-6f) return 1;
    std::printf("kvfuse %s, active ISA %s\n", kvfuse::version().c_str(), kvfuse::isa_name(isa));
    return 0;
}
