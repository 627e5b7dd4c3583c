# install.cmake — what `cmake --install` puts where, and the Debian package
# (`cpack -G DEB`).  Included by the top-level CMakeLists.txt.
#
#   bin/flashify
#   share/man/man1/flashify.1.gz                    docs/flashify.1, gzip -9n
#   share/bash-completion/completions/flashify      bash-completion's completionsdir
#   share/zsh/vendor-completions/_flashify          prefix /usr (packages), or
#   share/zsh/site-functions/_flashify              any other prefix
#   share/flashify/examples/stories260K/            the bundled example model
#   share/doc/flashify/{README.md,copyright}
#
# DESTDIR and CMAKE_INSTALL_PREFIX (or --prefix) are honoured; the
# directories are GNUInstallDirs'.
include(GNUInstallDirs)
find_package(Python3 REQUIRED COMPONENTS Interpreter)
find_program(FLASHIFY_GZIP gzip REQUIRED)

# The man page, compressed as Debian installs them (-n: no name or time
# stamp, so the package is reproducible).
set(FLASHIFY_MAN_GZ ${CMAKE_BINARY_DIR}/flashify.1.gz)
add_custom_command(OUTPUT ${FLASHIFY_MAN_GZ}
  COMMAND sh -c "\"$0\" -9nc < \"$1\" > \"$2\"" ${FLASHIFY_GZIP} ${CMAKE_SOURCE_DIR}/docs/flashify.1 ${FLASHIFY_MAN_GZ}
  DEPENDS ${CMAKE_SOURCE_DIR}/docs/flashify.1
  COMMENT "Compressing the man page" VERBATIM)

# The completions, generated from the option table of the binary just
# built (scripts/gen_completions.py), so they list exactly its options.
set(FLASHIFY_COMPLETIONS ${CMAKE_BINARY_DIR}/completions/flashify ${CMAKE_BINARY_DIR}/completions/_flashify)
add_custom_command(OUTPUT ${FLASHIFY_COMPLETIONS}
  COMMAND ${Python3_EXECUTABLE} ${CMAKE_SOURCE_DIR}/scripts/gen_completions.py
          $<TARGET_FILE:flashify> ${CMAKE_SOURCE_DIR}/completions ${CMAKE_BINARY_DIR}/completions
  DEPENDS flashify ${CMAKE_SOURCE_DIR}/scripts/gen_completions.py
          ${CMAKE_SOURCE_DIR}/completions/flashify.bash.in ${CMAKE_SOURCE_DIR}/completions/_flashify.in
  COMMENT "Generating the bash and zsh completions" VERBATIM)
add_custom_target(flashify_extras ALL DEPENDS ${FLASHIFY_MAN_GZ} ${FLASHIFY_COMPLETIONS})

install(TARGETS flashify RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES ${FLASHIFY_MAN_GZ} DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
install(FILES ${CMAKE_BINARY_DIR}/completions/flashify
        DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions)
# zsh: Debian's zsh searches /usr/share/zsh/vendor-completions (packages)
# and /usr/local/share/zsh/site-functions (local installs), not
# /usr/share/zsh/site-functions; which one applies is known only at install
# time (cmake --install --prefix, CPack).  FLASHIFY_ZSH_COMPLETION_DIR
# (relative to the prefix) overrides the choice.
set(FLASHIFY_ZSH_COMPLETION_DIR "" CACHE STRING
    "zsh completion directory under the prefix (default: share/zsh/vendor-completions for /usr, else share/zsh/site-functions)")
install(CODE "
  set(_dir \"${FLASHIFY_ZSH_COMPLETION_DIR}\")
  if(NOT _dir AND CMAKE_INSTALL_PREFIX STREQUAL \"/usr\")
    set(_dir \"${CMAKE_INSTALL_DATADIR}/zsh/vendor-completions\")
  elseif(NOT _dir)
    set(_dir \"${CMAKE_INSTALL_DATADIR}/zsh/site-functions\")
  endif()
  file(INSTALL DESTINATION \"\${CMAKE_INSTALL_PREFIX}/\${_dir}\" TYPE FILE
       FILES \"${CMAKE_BINARY_DIR}/completions/_flashify\")
")
install(DIRECTORY ${CMAKE_SOURCE_DIR}/examples/stories260K
        DESTINATION ${CMAKE_INSTALL_DATADIR}/flashify/examples)
install(FILES ${CMAKE_SOURCE_DIR}/examples/PROVENANCE.md
        DESTINATION ${CMAKE_INSTALL_DATADIR}/flashify/examples)
install(FILES ${CMAKE_SOURCE_DIR}/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(FILES ${CMAKE_SOURCE_DIR}/LICENSE DESTINATION ${CMAKE_INSTALL_DOCDIR} RENAME copyright)

# ---- the Debian package: cpack -G DEB (in the build directory) ----------
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME flashify)
set(CPACK_PACKAGE_VENDOR "flashify")
set(CPACK_PACKAGE_CONTACT "flashify maintainers <flashify@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "fold RMSNorm weights into linear layers (FlashNorm)")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)          # flashify_<version>-<release>_<arch>.deb
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_COMPRESSION_TYPE xz)
# The long description (CPack puts the summary above it and indents it).
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "flashify converts a Hugging Face checkpoint (a local directory or a Hub
repo id) into its FlashNorm form: every RMSNorm weight is folded into the
linear layers that read the norm, exactly, and the norm runs without a
weight. It proves the result equivalent to the source (a tensor check and
a reference forward pass in C), streams models of any size in bounded
memory, and shares the Hugging Face cache with the Python tools.")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "bash-completion, man-db")
# The run-time dependencies from the binary's libraries (dpkg-shlibdeps, in
# dpkg-dev; CPack also needs file(1) for it); without them, the packages
# that hold those libraries on Debian 12, as dpkg-shlibdeps finds them.
find_program(FLASHIFY_DPKG_SHLIBDEPS dpkg-shlibdeps)
find_program(FLASHIFY_FILE file)
if(FLASHIFY_DPKG_SHLIBDEPS AND FLASHIFY_FILE)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
else()
  message(STATUS "cpack -G DEB: no dpkg-shlibdeps or file(1); Depends are the Debian 12 ones")
  set(CPACK_DEBIAN_PACKAGE_DEPENDS "libc6 (>= 2.34), libcjson1 (>= 1.7.13), libcurl4 (>= 7.63.0), libssl3 (>= 3.0.0)")
endif()
include(CPack)
