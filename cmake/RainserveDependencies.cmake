# Finds every third-party package. All come from Debian 12 packages
# (scripts/install_deps.sh) or, on the GPU machine, from those packages
# unpacked into a prefix plus PyTorch's LibTorch (scripts/gpu/build.sh).

find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)

find_package(yaml-cpp CONFIG REQUIRED)
if(NOT TARGET yaml-cpp::yaml-cpp)
  # Debian 12's yaml-cpp 0.7 exports a plain `yaml-cpp` target.
  add_library(yaml-cpp::yaml-cpp ALIAS yaml-cpp)
endif()

find_package(nlohmann_json 3 CONFIG REQUIRED)

# SentencePiece training and the tokenizer tests' reference encoder
# (pipelines/sentencepiece_library.*, not linked by the server): headers at
# build time, the library is loaded at run time.
pkg_check_modules(SentencePiece REQUIRED IMPORTED_TARGET sentencepiece)

# Protobuf through FindProtobuf; link it through ${Protobuf_LIBRARIES}
# (the imported target can pick a static archive in an unpacked prefix).
find_package(Protobuf REQUIRED)
# gRPC's package config looks for c-ares first as a CMake package, which
# Debian's libc-ares-dev does not install, and prints "Could NOT find c-ares"
# before its fallback finds the header and library. It skips that search when
# c-ares_FOUND is set, so look here quietly, the same two ways.
find_package(c-ares CONFIG QUIET)
if(NOT c-ares_FOUND)
  find_path(c-ares_INCLUDE_DIR NAMES ares.h)
  find_library(c-ares_LIBRARY cares)
  if(c-ares_INCLUDE_DIR AND c-ares_LIBRARY)
    add_library(c-ares::cares UNKNOWN IMPORTED)
    set_target_properties(c-ares::cares PROPERTIES
      IMPORTED_LOCATION "${c-ares_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${c-ares_INCLUDE_DIR}")
    set(c-ares_FOUND TRUE)
  endif()
endif()
find_package(gRPC CONFIG REQUIRED)
find_program(RAINSERVE_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)

find_package(prometheus-cpp CONFIG REQUIRED)

# LibTorch: Debian's CPU build here, PyTorch's (CUDA) build on the GPU machine.
find_package(Torch REQUIRED)

find_package(GTest CONFIG QUIET)
if(NOT GTest_FOUND)
  find_package(GTest REQUIRED)
endif()

# media: PNG (libpng), MP4/H.264 (FFmpeg's libraries) and SHA-256 (OpenSSL).
if(RAINSERVE_WITH_VIDEO)
  pkg_check_modules(RainserveLibav REQUIRED IMPORTED_TARGET
    libavcodec libavformat libavutil libswscale)
endif()
pkg_check_modules(RainservePng REQUIRED IMPORTED_TARGET libpng)
# Input images (media/image_decoder.cc): libjpeg-turbo's libjpeg API.
pkg_check_modules(RainserveJpeg REQUIRED IMPORTED_TARGET libjpeg)
find_package(OpenSSL REQUIRED)
