/* The C API from C: compiles as C11, links, rotates a key, reports errors.
 * With --expect-dispatch-error (run under KVFUSE_ISA=<bad name>) it checks that the library
 * refuses to run kernels with a clear error instead of falling back silently. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kvfuse/kvfuse.h"

static int failures = 0;
#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            ++failures;                                                    \
        }                                                                  \
    } while (0)

int main(int argc, char** argv) {
    kvfuse_rope_config config;
    kvfuse_rope_config_init(&config, 4);
    float key[4] = {1.0f, 0.0f, 0.5f, 0.25f};

    if (argc > 1 && strcmp(argv[1], "--expect-dispatch-error") == 0) {
        kvfuse_isa isa;
        kvfuse_status status = kvfuse_active_isa(&isa);
        CHECK(status == KVFUSE_ERROR_UNKNOWN_ISA || status == KVFUSE_ERROR_UNSUPPORTED_ISA);
        CHECK(strstr(kvfuse_last_error(), "KVFUSE_ISA") != NULL);
        status = kvfuse_rope_rotate_span(&config, KVFUSE_DTYPE_F32, key, 1, 1, 4, 1);
        CHECK(status != KVFUSE_OK);
        CHECK(key[0] == 1.0f); /* untouched */
        printf("dispatch error as expected: %s\n", kvfuse_last_error());
        return failures == 0 ? 0 : 1;
    }

    CHECK(strcmp(kvfuse_version_string(), KVFUSE_VERSION_STRING) == 0);
    CHECK(kvfuse_isa_supported(KVFUSE_ISA_SCALAR) == 1);

    /* NeoX pairs (0,2) and (1,3); pair 0 has frequency 1, so delta 1 turns it by one radian. */
    CHECK(kvfuse_rope_rotate_span(&config, KVFUSE_DTYPE_F32, key, 1, 1, 4, 1) == KVFUSE_OK);
    CHECK(fabsf(key[0] - (cosf(1.0f) - 0.5f * sinf(1.0f))) < 1e-6f);
    CHECK(fabsf(key[2] - (sinf(1.0f) + 0.5f * cosf(1.0f))) < 1e-6f);

    config.rotary_dims = 3;
    CHECK(kvfuse_rope_rotate_span(&config, KVFUSE_DTYPE_F32, key, 1, 1, 4, 1) == KVFUSE_ERROR_INVALID_ARGUMENT);
    CHECK(strstr(kvfuse_last_error(), "rotary_dims") != NULL);
    CHECK(kvfuse_rope_rotate_span(NULL, KVFUSE_DTYPE_F32, key, 1, 1, 4, 1) == KVFUSE_ERROR_NULL_POINTER);

    {
        const char* int8_keys = NULL;
        const char* int4_keys = NULL;
        CHECK(kvfuse_relevance_dot_schemes(&int8_keys, &int4_keys) == KVFUSE_OK);
        CHECK(int8_keys != NULL && int4_keys != NULL && int8_keys[0] != '\0' && int4_keys[0] != '\0');
        CHECK(kvfuse_relevance_dot_schemes(NULL, NULL) == KVFUSE_OK);
    }

    {
        /* Per-kernel ISA from C: scalar for top-k, read back, then back to the active ISA. */
        const kvfuse_isa scalar = KVFUSE_ISA_SCALAR;
        kvfuse_isa active = KVFUSE_ISA_SCALAR, isa = KVFUSE_ISA_AVX2;
        const char* source = NULL;
        kvfuse_kernel kernel = KVFUSE_KERNEL_ROPE;
        CHECK(kvfuse_active_isa(&active) == KVFUSE_OK);
        CHECK(kvfuse_kernel_from_name("topk", &kernel) == KVFUSE_OK && kernel == KVFUSE_KERNEL_TOPK);
        CHECK(kvfuse_set_kernel_isa(KVFUSE_KERNEL_TOPK, &scalar) == KVFUSE_OK);
        CHECK(kvfuse_kernel_isa(KVFUSE_KERNEL_TOPK, &isa, &source) == KVFUSE_OK);
        CHECK(isa == KVFUSE_ISA_SCALAR && source != NULL && strcmp(source, "program") == 0);
        CHECK(kvfuse_set_kernel_isa(KVFUSE_KERNEL_TOPK, NULL) == KVFUSE_OK);
        CHECK(kvfuse_kernel_isa(KVFUSE_KERNEL_TOPK, &isa, NULL) == KVFUSE_OK && isa == active);
        CHECK(strcmp(kvfuse_kernel_name(KVFUSE_KERNEL_RELEVANCE), "relevance") == 0);
    }

    if (failures == 0) printf("C API checks passed\n");
    return failures == 0 ? 0 : 1;
}
