/* C consumer of the installed library (built by CMake and, separately, with pkg-config). */
#include <kvfuse/kvfuse.h>
#include <math.h>
#include <stdio.h>

int main(void) {
    kvfuse_rope_config config;
    kvfuse_rope_config_init(&config, 2);
    float key[2] = {1.0f, 0.0f};
    if (kvfuse_rope_rotate_span(&config, KVFUSE_DTYPE_F32, key, 1, 1, 2, 1) != KVFUSE_OK) {
        fprintf(stderr, "kvfuse: %s\n", kvfuse_last_error());
        return 1;
    }
    if (fabsf(key[0] - cosf(1.0f)) > 1e-6f) return 1;
    printf("kvfuse %s from C\n", kvfuse_version_string());
    return 0;
}
