# One precompiled header with the LibTorch API, built once and reused by every target
# that includes LibTorch (target_precompile_headers REUSE_FROM). Targets reusing it must
# be compiled with the same flags, which is why position-independent code stays off.
#
# The header is large (about 570 MB with GCC 12): loading it costs a compiler 10-13 s of a
# 2-core VM's time, more than a file that does not need <torch/...> takes to compile without
# it (datasets/walk.cpp: 14 s with it, 1.7 s without; pipeline/h5_strings.cpp, which includes
# only <ATen/core/Tensor.h>: 9.9 s and 5.0 s). So only the files that include a <torch/...>
# header, themselves or through the project's own headers, are compiled with it; the others
# skip it. The scan below decides that at configure time. A file it misjudges still compiles
# correctly, only slower: one that skips the header includes what it uses itself.

add_library(attnscope_pch STATIC ${PROJECT_SOURCE_DIR}/cmake/pch.cpp)
target_link_libraries(attnscope_pch PUBLIC attnscope::torch)
if(ATTNSCOPE_PCH)
  target_precompile_headers(attnscope_pch PRIVATE <torch/torch.h> <vector> <string> <memory>)
endif()

# Folders the project's own quoted includes are looked up in, after the including file's own.
set(_attnscope_include_roots ${PROJECT_SOURCE_DIR} ${PROJECT_SOURCE_DIR}/common
    ${PROJECT_SOURCE_DIR}/tests ${PROJECT_BINARY_DIR}/generated)

# Sets ${out} to ON when `file` includes a <torch/...> header, itself or through a quoted
# include that resolves to a file of the project (followed recursively, each file once).
# Results are kept in global properties, so every header is read once per configure.
function(_attnscope_includes_torch file out)
  get_property(_known GLOBAL PROPERTY "_attnscope_torch:${file}" SET)
  if(_known)
    get_property(_r GLOBAL PROPERTY "_attnscope_torch:${file}")
    set(${out} ${_r} PARENT_SCOPE)
    return()
  endif()
  # Marked OFF first, so an include cycle ends here.
  set_property(GLOBAL PROPERTY "_attnscope_torch:${file}" OFF)
  set(_r OFF)
  file(STRINGS "${file}" _lines REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]")
  get_filename_component(_dir "${file}" DIRECTORY)
  foreach(_line IN LISTS _lines)
    if(_line MATCHES "include[ \t]*<(torch/[^>]*)>")
      set(_r ON)
      break()
    elseif(_line MATCHES "include[ \t]*\"([^\"]+)\"")
      set(_name "${CMAKE_MATCH_1}")
      foreach(_root IN ITEMS "${_dir}" ${_attnscope_include_roots})
        if(EXISTS "${_root}/${_name}" AND NOT IS_DIRECTORY "${_root}/${_name}")
          get_filename_component(_path "${_root}/${_name}" ABSOLUTE)
          _attnscope_includes_torch("${_path}" _sub)
          if(_sub)
            set(_r ON)
          endif()
          break()
        endif()
      endforeach()
      if(_r)
        break()
      endif()
    endif()
  endforeach()
  set_property(GLOBAL PROPERTY "_attnscope_torch:${file}" ${_r})
  set(${out} ${_r} PARENT_SCOPE)
endfunction()

function(attnscope_use_pch target)
  if(NOT ATTNSCOPE_PCH)
    return()
  endif()
  target_precompile_headers(${target} REUSE_FROM attnscope_pch)
  get_target_property(_sources ${target} SOURCES)
  get_target_property(_source_dir ${target} SOURCE_DIR)
  foreach(_source IN LISTS _sources)
    if(NOT _source MATCHES "\\.(cpp|cc|cxx)$")
      continue()
    endif()
    get_filename_component(_path "${_source}" ABSOLUTE BASE_DIR "${_source_dir}")
    _attnscope_includes_torch("${_path}" _torch)
    if(NOT _torch)
      set_source_files_properties("${_source}" TARGET_DIRECTORY ${target}
                                  PROPERTIES SKIP_PRECOMPILE_HEADERS ON)
    endif()
  endforeach()
endfunction()
