# Every SIMD kernel is one template file, kernels/<name>/<name>-inl.h, compiled once per ISA in
# a generated translation unit that sets the ISA namespace, the xsimd architecture and the
# compiler flags. dispatch/ then calls <isa>::register_<name>() through a generated registry.

set(KVFUSE_KERNELS rope attention topk score quantize gemm qgemm)

if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  set(_default_isas avx2 avx512)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64)$")
  set(_default_isas neon)
else()
  set(_default_isas "")
endif()
set(KVFUSE_SIMD_ISAS "${_default_isas}" CACHE STRING "SIMD ISAs to compile kernels for")

set(KVFUSE_ISA_ENUM_avx2 KVFUSE_ISA_AVX2)
set(KVFUSE_ISA_ARCH_avx2 "xsimd::fma3<xsimd::avx2>")
set(KVFUSE_ISA_FLAGS_avx2 -mavx2 -mfma -mf16c)
set(KVFUSE_ISA_ENUM_avx512 KVFUSE_ISA_AVX512)
set(KVFUSE_ISA_ARCH_avx512 "xsimd::avx512bw")
set(KVFUSE_ISA_FLAGS_avx512 -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma -mf16c)
set(KVFUSE_ISA_ENUM_neon KVFUSE_ISA_NEON)
set(KVFUSE_ISA_ARCH_neon "xsimd::neon64")
set(KVFUSE_ISA_FLAGS_neon "")

# Variants: kernels compiled once more for an ISA plus one CPU feature the ISA level does not
# imply (NEON dotprod, x86 VNNI). dispatch/ registers a variant over the ISA's own kernel only when
# cpu_features() reports the feature, so only the dispatch knows the CPU; the kernel source
# picks the instruction from the compiler's feature macro (__ARM_FEATURE_DOTPROD, __AVXVNNI__,
# __AVX512VNNI__).
#   KVFUSE_VARIANT_BASE_<v>: the ISA it replaces kernels of; _FEATURE_: the kvfuse_cpu_features
#   field that must be set; _KERNELS_: which kernels; _FLAGS_: compile flags; _ARCH_: xsimd arch.
set(KVFUSE_VARIANT_BASE_neon_dotprod neon)
set(KVFUSE_VARIANT_FEATURE_neon_dotprod arm_dotprod)
set(KVFUSE_VARIANT_KERNELS_neon_dotprod score qgemm)
# GCC's vdotq_s32 needs armv8.2-a (every dotprod CPU is one). Inline template code shared with
# the plain neon objects (xsimd, std::vector) is emitted in both; the variants' objects come
# after the ISAs' in the link, and the linker keeps the first copy, the plain armv8-a one.
set(KVFUSE_VARIANT_FLAGS_neon_dotprod -march=armv8.2-a+dotprod)
set(KVFUSE_VARIANT_ARCH_neon_dotprod "xsimd::neon64")
# VNNI: vpdpbusd, four u8 x s8 products summed into each 32-bit lane in one instruction, on
# ymm (AVX-VNNI, e.g. Alder Lake, Zen 5) or zmm (AVX512-VNNI, Cascade Lake, Zen 4).
set(KVFUSE_VARIANT_BASE_avx2_vnni avx2)
set(KVFUSE_VARIANT_FEATURE_avx2_vnni avx_vnni)
set(KVFUSE_VARIANT_KERNELS_avx2_vnni score qgemm)
set(KVFUSE_VARIANT_FLAGS_avx2_vnni -mavx2 -mfma -mf16c -mavxvnni)
set(KVFUSE_VARIANT_ARCH_avx2_vnni "xsimd::fma3<xsimd::avx2>")
set(KVFUSE_VARIANT_BASE_avx512_vnni avx512)
set(KVFUSE_VARIANT_FEATURE_avx512_vnni avx512_vnni)
set(KVFUSE_VARIANT_KERNELS_avx512_vnni score qgemm)
set(KVFUSE_VARIANT_FLAGS_avx512_vnni -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512vnni -mavx2 -mfma -mf16c)
set(KVFUSE_VARIANT_ARCH_avx512_vnni "xsimd::avx512bw")
# AVX512-BF16: vdpbf16ps, a pair of bf16 products summed into each f32 lane (Cooper Lake,
# Sapphire Rapids, Zen 4/5), for the dense layers' bf16 weights; vcvtne2ps2bf16, two f32
# vectors rounded to bf16 at once, for RoPE's bf16 output.
set(KVFUSE_VARIANT_BASE_avx512_bf16 avx512)
set(KVFUSE_VARIANT_FEATURE_avx512_bf16 avx512_bf16)
set(KVFUSE_VARIANT_KERNELS_avx512_bf16 gemm rope)
set(KVFUSE_VARIANT_FLAGS_avx512_bf16 -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512bf16 -mavx2 -mfma -mf16c)
set(KVFUSE_VARIANT_ARCH_avx512_bf16 "xsimd::avx512bw")
# AVX512-VBMI2: vpcompressb, the top-k filter's positions of 64 scores compressed at once
# (Ice Lake, Zen 4/5).
set(KVFUSE_VARIANT_BASE_avx512_vbmi2 avx512)
set(KVFUSE_VARIANT_FEATURE_avx512_vbmi2 avx512_vbmi2)
set(KVFUSE_VARIANT_KERNELS_avx512_vbmi2 topk)
set(KVFUSE_VARIANT_FLAGS_avx512_vbmi2 -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512vbmi2 -mavx2 -mfma -mf16c)
set(KVFUSE_VARIANT_ARCH_avx512_vbmi2 "xsimd::avx512bw")
set(_all_variants neon_dotprod avx2_vnni avx512_vnni avx512_bf16 avx512_vbmi2)

include(CheckCXXCompilerFlag)
set(_default_variants "")
foreach(variant IN LISTS _all_variants)
  if(KVFUSE_VARIANT_BASE_${variant} IN_LIST KVFUSE_SIMD_ISAS)
    string(MAKE_C_IDENTIFIER "KVFUSE_CXX_HAS_${variant}" _flag_ok)
    check_cxx_compiler_flag("${KVFUSE_VARIANT_FLAGS_${variant}}" ${_flag_ok})
    if(${_flag_ok})
      list(APPEND _default_variants ${variant})
    endif()
  endif()
endforeach()
# "auto" (not the list itself) as the cached default, so that an existing build directory picks
# up variants added later.
set(KVFUSE_SIMD_VARIANTS "auto" CACHE STRING "ISA variants to compile kernels for (auto: all the compiler supports)")
if(KVFUSE_SIMD_VARIANTS STREQUAL "auto")
  set(KVFUSE_SIMD_VARIANTS "${_default_variants}")
endif()

# Writes one translation unit: `kernel` compiled into namespace kvfuse::<name> for the xsimd
# architecture `arch` with `flags`; appends its path to the caller's `sources`.
function(_kvfuse_kernel_unit gen_dir kernel name arch flags)
  set(file ${gen_dir}/kernels/${kernel}_${name}.cpp)
  file(CONFIGURE OUTPUT ${file} CONTENT
"// Generated by cmake/KvfuseKernels.cmake: the ${kernel} kernel compiled for ${name}.
#define KVFUSE_ISA_NAMESPACE ${name}
#define KVFUSE_XSIMD_ARCH ${arch}
#include \"kernels/${kernel}/${kernel}-inl.h\"
")
  # GCC 12 warns about its own AVX-512 intrinsics (the `_mm512_undefined_*` operands inside
  # _mm512_max_ps, _mm512_extractf64x4_pd, ... once inlined): false positives, both kinds.
  # The score kernel's inner loops are a hundred-odd bytes: where one happened to start decided
  # whether it spanned two or three 64-byte fetch windows, and an unrelated change elsewhere in
  # the file moved it (int8 D = 64/128 3-6 % slower on Zen 3 with no change to their code).
  if(kernel STREQUAL "score")
    list(APPEND flags -falign-loops=64)
  endif()
  set_source_files_properties(${file} PROPERTIES COMPILE_OPTIONS "${flags};-Wno-maybe-uninitialized;-Wno-uninitialized")
  set(sources ${sources} ${file} PARENT_SCOPE)
endfunction()

# Writes the per-ISA sources into KVFUSE_KERNEL_SOURCES and the registry header.
function(kvfuse_generate_kernel_sources)
  set(gen_dir ${PROJECT_BINARY_DIR}/generated)
  set(sources "")
  set(declarations "")
  set(cases "")
  foreach(isa IN LISTS KVFUSE_SIMD_ISAS)
    set(calls "")
    set(decls "")
    foreach(kernel IN LISTS KVFUSE_KERNELS)
      _kvfuse_kernel_unit(${gen_dir} ${kernel} ${isa} "${KVFUSE_ISA_ARCH_${isa}}" "${KVFUSE_ISA_FLAGS_${isa}}")
      string(APPEND decls "void register_${kernel}(detail::KernelTable&);\n")
      string(APPEND calls "            ${isa}::register_${kernel}(table);\n")
    endforeach()
    string(APPEND declarations "namespace kvfuse::${isa} {\n${decls}}\n")
    string(APPEND cases "        case ${KVFUSE_ISA_ENUM_${isa}}:\n${calls}            return true;\n")
  endforeach()
  # One case per base ISA (several variants may extend one ISA), each variant's registration
  # under its own feature test.
  set(variant_bases "")
  foreach(variant IN LISTS KVFUSE_SIMD_VARIANTS)
    set(base ${KVFUSE_VARIANT_BASE_${variant}})
    set(calls "")
    set(decls "")
    foreach(kernel IN LISTS KVFUSE_VARIANT_KERNELS_${variant})
      _kvfuse_kernel_unit(${gen_dir} ${kernel} ${variant} "${KVFUSE_VARIANT_ARCH_${variant}}" "${KVFUSE_VARIANT_FLAGS_${variant}}")
      string(APPEND decls "void register_${kernel}(detail::KernelTable&);\n")
      string(APPEND calls "                ${variant}::register_${kernel}(table);\n")
    endforeach()
    string(APPEND declarations "namespace kvfuse::${variant} {\n${decls}}\n")
    if(NOT base IN_LIST variant_bases)
      list(APPEND variant_bases ${base})
      set(base_calls_${base} "")
    endif()
    # A base ISA may have several variants (avx512: VNNI for scoring, BF16 for the GEMM): the
    # build name records every one registered, joined by '+' ("avx512_vnni+avx512_bf16").
    string(APPEND calls "                applied += applied.empty() ? \"${variant}\" : \"+${variant}\";\n")
    string(APPEND base_calls_${base} "            if (features.${KVFUSE_VARIANT_FEATURE_${variant}}) {\n${calls}            }\n")
  endforeach()
  set(variant_cases "")
  foreach(base IN LISTS variant_bases)
    string(APPEND variant_cases "        case ${KVFUSE_ISA_ENUM_${base}}: {\n            std::string applied;\n${base_calls_${base}}            // Set once: tables built later keep pointing at the same characters.\n            static const std::string name_${base} = applied;\n            if (!applied.empty()) table.build = name_${base}.c_str();\n            break;\n        }\n")
  endforeach()
  file(CONFIGURE OUTPUT ${gen_dir}/kernel_registry.inc CONTENT
"// Generated by cmake/KvfuseKernels.cmake: the SIMD kernels compiled into this build.
#pragma once
#include <string>
#include \"kernels/kernel_table.h\"
${declarations}
namespace kvfuse::detail {
// Fills `table` with the kernels compiled for `isa`; false when none were.
inline bool register_compiled_kernels(kvfuse_isa isa, KernelTable& table) {
    (void)table;
    switch (isa) {
${cases}        default:
            return false;
    }
}
// Registers over `table` (already filled for `isa`) the variants whose CPU feature `features`
// reports.
inline void register_compiled_variants(kvfuse_isa isa, const kvfuse_cpu_features& features, KernelTable& table) {
    (void)features;
    (void)table;
    switch (isa) {
${variant_cases}        default:
            break;
    }
}
}  // namespace kvfuse::detail
")
  set(KVFUSE_KERNEL_SOURCES ${sources} PARENT_SCOPE)
endfunction()
