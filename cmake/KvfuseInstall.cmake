include(CMakePackageConfigHelpers)

# A static libkvfuse brings its private dependencies to the consumer's link: the config file
# finds them (find_dependency) and the .pc file lists them for `pkg-config --static`.
get_target_property(_kvfuse_type kvfuse TYPE)
if(_kvfuse_type STREQUAL "STATIC_LIBRARY")
  set(KVFUSE_STATIC_PACKAGE ON)
else()
  set(KVFUSE_STATIC_PACKAGE OFF)
endif()
if(KVFUSE_OPENMP)
  set(KVFUSE_PC_LIBS_PRIVATE "-fopenmp")
else()
  set(KVFUSE_PC_LIBS_PRIVATE "-pthread")
endif()
if(KVFUSE_WITH_HWLOC)
  string(APPEND KVFUSE_PC_LIBS_PRIVATE " -lhwloc")
endif()
string(APPEND KVFUSE_PC_LIBS_PRIVATE " -lstdc++ -lm")


install(TARGETS kvfuse EXPORT kvfuseTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES include/kvfuse/kvfuse.h include/kvfuse/kvfuse.hpp
              ${KVFUSE_GENERATED_DIR}/include/kvfuse/version.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kvfuse)

set(_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/kvfuse)
install(EXPORT kvfuseTargets NAMESPACE kvfuse:: DESTINATION ${_cmake_dir})
configure_package_config_file(cmake/kvfuseConfig.cmake.in
    ${PROJECT_BINARY_DIR}/kvfuseConfig.cmake INSTALL_DESTINATION ${_cmake_dir})
# While the major version is 0 every minor version may break the API and ABI: find_package(kvfuse
# 0.1) must not accept 0.2 (the soname carries the minor version too, dispatch/CMakeLists.txt).
if(PROJECT_VERSION_MAJOR EQUAL 0)
  set(_kvfuse_compatibility SameMinorVersion)
else()
  set(_kvfuse_compatibility SameMajorVersion)
endif()
write_basic_package_version_file(${PROJECT_BINARY_DIR}/kvfuseConfigVersion.cmake
    COMPATIBILITY ${_kvfuse_compatibility})
install(FILES ${PROJECT_BINARY_DIR}/kvfuseConfig.cmake ${PROJECT_BINARY_DIR}/kvfuseConfigVersion.cmake
        DESTINATION ${_cmake_dir})

# Relocatable: the prefix is found from where the .pc file lies, so `--prefix` at install works.
file(RELATIVE_PATH KVFUSE_PC_TO_PREFIX ${CMAKE_INSTALL_FULL_LIBDIR}/pkgconfig ${CMAKE_INSTALL_PREFIX})
configure_file(cmake/kvfuse.pc.in ${PROJECT_BINARY_DIR}/kvfuse.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/kvfuse.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
