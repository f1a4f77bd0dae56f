# rainserve_proto_library(<target> ROOT <dir> PROTOS <files relative to ROOT> [GRPC])
# Runs protoc (and the gRPC C++ plugin with GRPC) and builds a static library
# of the generated code. Generated headers are included as
# "rainserve/v1/generation.pb.h".
function(rainserve_proto_library target)
  cmake_parse_arguments(ARG "GRPC" "ROOT" "PROTOS" ${ARGN})
  set(out_dir ${CMAKE_CURRENT_BINARY_DIR}/gen)
  file(MAKE_DIRECTORY ${out_dir})
  set(sources)
  set(ARG_PROTOS_ABS)
  foreach(proto ${ARG_PROTOS})
    list(APPEND ARG_PROTOS_ABS ${ARG_ROOT}/${proto})
  endforeach()
  foreach(proto ${ARG_PROTOS})
    string(REGEX REPLACE "\\.proto$" "" stem ${proto})
    set(outputs ${out_dir}/${stem}.pb.cc ${out_dir}/${stem}.pb.h)
    set(plugin_args)
    if(ARG_GRPC)
      list(APPEND outputs ${out_dir}/${stem}.grpc.pb.cc ${out_dir}/${stem}.grpc.pb.h)
      set(plugin_args --grpc_out=${out_dir} --plugin=protoc-gen-grpc=${RAINSERVE_GRPC_CPP_PLUGIN})
    endif()
    add_custom_command(
      OUTPUT ${outputs}
      COMMAND ${Protobuf_PROTOC_EXECUTABLE} --proto_path=${ARG_ROOT}
              --proto_path=${Protobuf_INCLUDE_DIR}
              --cpp_out=${out_dir} ${plugin_args} ${ARG_ROOT}/${proto}
      DEPENDS ${ARG_ROOT}/${proto} ${ARG_PROTOS_ABS}
      COMMENT "protoc ${proto}"
      VERBATIM)
    list(APPEND sources ${outputs})
  endforeach()
  add_library(${target} STATIC ${sources})
  target_include_directories(${target} SYSTEM PUBLIC ${out_dir} ${Protobuf_INCLUDE_DIRS})
  target_link_libraries(${target} PUBLIC ${Protobuf_LIBRARIES})
  if(ARG_GRPC)
    target_link_libraries(${target} PUBLIC gRPC::grpc++)
  endif()
endfunction()
