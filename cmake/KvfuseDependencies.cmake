# Header-only xsimd: found by path so that a cross build (whose sysroot has no xsimd package)
# can still use the architecture-independent headers from the host's /usr/include.
find_path(KVFUSE_XSIMD_INCLUDE_DIR xsimd/xsimd.hpp PATHS /usr/include NO_CMAKE_FIND_ROOT_PATH)
if(NOT KVFUSE_XSIMD_INCLUDE_DIR)
  message(FATAL_ERROR "xsimd not found: install libxsimd-dev (tools/setup.sh does)")
endif()
add_library(kvfuse_xsimd INTERFACE)
target_include_directories(kvfuse_xsimd SYSTEM INTERFACE $<BUILD_INTERFACE:${KVFUSE_XSIMD_INCLUDE_DIR}>)

if(KVFUSE_WITH_HWLOC)
  find_package(PkgConfig)
  if(PkgConfig_FOUND)
    pkg_check_modules(HWLOC IMPORTED_TARGET hwloc)
  endif()
  if(NOT HWLOC_FOUND)
    message(STATUS "hwloc not found: thread placement falls back to OpenMP defaults")
    set(KVFUSE_WITH_HWLOC OFF)
  endif()
endif()

# Header-only nlohmann-json for the tuning profile (read and written by the library): found by
# path like xsimd, so the cross build uses the host's architecture-independent headers.
find_path(KVFUSE_JSON_INCLUDE_DIR nlohmann/json.hpp PATHS /usr/include NO_CMAKE_FIND_ROOT_PATH)
if(NOT KVFUSE_JSON_INCLUDE_DIR)
  message(FATAL_ERROR "nlohmann/json.hpp not found: install nlohmann-json3-dev (tools/setup.sh does)")
endif()
add_library(kvfuse_json INTERFACE)
target_include_directories(kvfuse_json SYSTEM INTERFACE $<BUILD_INTERFACE:${KVFUSE_JSON_INCLUDE_DIR}>)
