# Compiler launcher, warnings and sanitizers shared by every attnscope target.

if(ATTNSCOPE_CCACHE)
  find_program(ATTNSCOPE_CCACHE_PROGRAM ccache)
  if(ATTNSCOPE_CCACHE_PROGRAM)
    # Precompiled headers need these sloppiness settings, or ccache never hits.
    set(_launcher ${CMAKE_COMMAND} -E env
        "CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime"
        ${ATTNSCOPE_CCACHE_PROGRAM})
    set(CMAKE_C_COMPILER_LAUNCHER ${_launcher})
    set(CMAKE_CXX_COMPILER_LAUNCHER ${_launcher})
    message(STATUS "attnscope: using ccache (${ATTNSCOPE_CCACHE_PROGRAM})")
  endif()
endif()

add_library(attnscope_warnings INTERFACE)
add_library(attnscope::warnings ALIAS attnscope_warnings)
target_compile_options(attnscope_warnings INTERFACE
  $<$<CXX_COMPILER_ID:GNU,Clang>:-Wall -Wextra -Wno-unused-parameter>)

if(ATTNSCOPE_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()
