# One precompiled header with the LibTorch API, built once and reused by every target
# that includes LibTorch (target_precompile_headers REUSE_FROM). Targets reusing it must
# be compiled with the same flags, which is why position-independent code stays off.

add_library(attnscope_pch STATIC ${PROJECT_SOURCE_DIR}/cmake/pch.cpp)
target_link_libraries(attnscope_pch PUBLIC attnscope::torch)
if(ATTNSCOPE_PCH)
  target_precompile_headers(attnscope_pch PRIVATE <torch/torch.h> <vector> <string> <memory>)
endif()

function(attnscope_use_pch target)
  if(ATTNSCOPE_PCH)
    target_precompile_headers(${target} REUSE_FROM attnscope_pch)
  endif()
endfunction()
