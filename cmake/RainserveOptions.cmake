# Compiler settings shared by every RainServe target.

find_program(RAINSERVE_CCACHE ccache)
if(RAINSERVE_CCACHE)
  set(CMAKE_C_COMPILER_LAUNCHER ${RAINSERVE_CCACHE})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${RAINSERVE_CCACHE})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${RAINSERVE_CCACHE})
endif()

# Warnings for our own code only (interface library, linked by each module).
add_library(rainserve_warnings INTERFACE)
target_compile_options(rainserve_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>)

if(RAINSERVE_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer
                      -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()

# Fuzzing: every target gets libFuzzer's coverage instrumentation and the
# sanitizers; only the fuzz executables link libFuzzer itself (tests/fuzz).
if(RAINSERVE_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "RAINSERVE_FUZZ needs clang (-DCMAKE_CXX_COMPILER=clang++)")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
                      -fno-sanitize-recover=undefined -g)
  add_link_options(-fsanitize=address,undefined)
endif()

if(RAINSERVE_ENABLE_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    # Hopper with its architecture-specific features (wgmma, setmaxnreg).
    set(CMAKE_CUDA_ARCHITECTURES 90a)
  endif()
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  find_package(CUDAToolkit REQUIRED)
endif()
