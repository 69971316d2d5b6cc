/* libkvfuse.so can be loaded, used and unloaded again: dlclose() must really unmap it (an engine
 * that loads kvfuse as a plug-in, or reloads it, must not leak a copy per load). A GNU-unique
 * symbol, or a thread-local destructor still registered for a live thread, would keep it
 * mapped; afterwards dlopen(RTLD_NOLOAD) says whether it is still there.
 * Usage: test_unload path/to/libkvfuse.so */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kvfuse/kvfuse.h"

typedef kvfuse_status (*rotate_span_fn)(const kvfuse_rope_config*, kvfuse_dtype, void*, size_t, size_t, size_t,
                                        int64_t);
typedef const char* (*last_error_fn)(void);
typedef const char* (*version_fn)(void);

static void* library;
static int worker_failed;

/* A kernel call and a refused call (which records a per-thread error message) on a thread that
 * then exits, as an engine's worker would. */
static void* use_library(void* unused) {
    (void)unused;
    rotate_span_fn rotate_span = (rotate_span_fn)dlsym(library, "kvfuse_rope_rotate_span");
    last_error_fn last_error = (last_error_fn)dlsym(library, "kvfuse_last_error");
    if (rotate_span == NULL || last_error == NULL) {
        worker_failed = 1;
        return NULL;
    }
    kvfuse_rope_config config;
    kvfuse_rope_config_init(&config, 4);
    float keys[8] = {1, 0, 0, 1, 0.5f, 0.5f, -1, 2};
    if (rotate_span(&config, KVFUSE_DTYPE_F32, keys, 2, 1, 4, 3) != KVFUSE_OK) worker_failed = 1;
    config.rotary_dims = 3; /* odd: refused */
    if (rotate_span(&config, KVFUSE_DTYPE_F32, keys, 2, 1, 4, 3) != KVFUSE_ERROR_INVALID_ARGUMENT ||
        strstr(last_error(), "rotary_dims") == NULL)
        worker_failed = 1;
    return NULL;
}

int main(int argc, char** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s libkvfuse.so\n", argv[0]);
        return 2;
    }
    for (int round = 0; round < 2; ++round) {
        library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        if (library == NULL) {
            fprintf(stderr, "dlopen: %s\n", dlerror());
            return 1;
        }
        version_fn version = (version_fn)dlsym(library, "kvfuse_version_string");
        if (version == NULL || strcmp(version(), KVFUSE_VERSION_STRING) != 0) {
            fprintf(stderr, "kvfuse_version_string missing or not %s\n", KVFUSE_VERSION_STRING);
            return 1;
        }
        pthread_t worker;
        if (pthread_create(&worker, NULL, use_library, NULL) != 0 || pthread_join(worker, NULL) != 0) return 1;
        if (worker_failed) {
            fprintf(stderr, "the calls through dlsym failed\n");
            return 1;
        }
        if (dlclose(library) != 0) {
            fprintf(stderr, "dlclose: %s\n", dlerror());
            return 1;
        }
        if (dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD) != NULL) {
            fprintf(stderr, "round %d: %s is still loaded after dlclose()\n", round, argv[1]);
            return 1;
        }
    }
    printf("loaded, used and unloaded twice\n");
    return 0;
}
