# -DKVFUSE_FUZZ=ON: every object is built with libFuzzer's coverage instrumentation, ASan and
# clang's UBSan (plus float-cast-overflow, which -fsanitize=undefined leaves out), every finding
# fatal. The fuzz targets (tests/fuzz) then link with -fsanitize=fuzzer. Clang only: GCC has no
# libFuzzer.
if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang" OR NOT CMAKE_C_COMPILER_ID STREQUAL "Clang")
  message(FATAL_ERROR "KVFUSE_FUZZ needs clang (Debian 12: apt-get install clang; configure with "
                      "-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++)")
endif()
if(KVFUSE_SANITIZE)
  message(FATAL_ERROR "KVFUSE_FUZZ chooses its own sanitizers; leave KVFUSE_SANITIZE empty")
endif()
set(KVFUSE_FUZZ_SANITIZERS "address,undefined,float-cast-overflow")
add_compile_options(-fsanitize=fuzzer-no-link,${KVFUSE_FUZZ_SANITIZERS} -fno-sanitize-recover=all
                    -fno-omit-frame-pointer)
add_link_options(-fsanitize=${KVFUSE_FUZZ_SANITIZERS})
