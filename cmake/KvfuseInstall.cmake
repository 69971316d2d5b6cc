include(CMakePackageConfigHelpers)

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
write_basic_package_version_file(${PROJECT_BINARY_DIR}/kvfuseConfigVersion.cmake
    COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/kvfuseConfig.cmake ${PROJECT_BINARY_DIR}/kvfuseConfigVersion.cmake
        DESTINATION ${_cmake_dir})

# Relocatable: the prefix is found from where the .pc file lies, so `--prefix` at install works.
file(RELATIVE_PATH KVFUSE_PC_TO_PREFIX ${CMAKE_INSTALL_FULL_LIBDIR}/pkgconfig ${CMAKE_INSTALL_PREFIX})
configure_file(cmake/kvfuse.pc.in ${PROJECT_BINARY_DIR}/kvfuse.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/kvfuse.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
