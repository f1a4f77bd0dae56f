# rainserve_add_test(NAME <name> SOURCES <...> LIBS <...> [LABELS <...>])
# Builds one GoogleTest binary and registers it with ctest under its own name.
# Tests labelled `gpu` need a CUDA device; they skip themselves (GTEST_SKIP)
# when none is present, so a plain `ctest` passes on machines without a GPU.
function(rainserve_add_test)
  cmake_parse_arguments(ARG "" "NAME;TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SOURCES})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_LIBS} GTest::gtest GTest::gtest_main
                        rainserve_warnings)
  # Where test data lives when a binary runs outside ctest (ctest also sets
  # RAINSERVE_SOURCE_DIR in the environment, which wins).
  target_compile_definitions(${ARG_NAME} PRIVATE RAINSERVE_SOURCE_DIR_DEFAULT="${PROJECT_SOURCE_DIR}")
  add_test(NAME ${ARG_NAME} COMMAND ${ARG_NAME})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 600)
  endif()
  set_tests_properties(${ARG_NAME} PROPERTIES TIMEOUT ${ARG_TIMEOUT}
                       ENVIRONMENT "RAINSERVE_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
  if(ARG_LABELS)
    set_tests_properties(${ARG_NAME} PROPERTIES LABELS "${ARG_LABELS}")
  endif()
endfunction()
