# The library's sources, named once. The installed libraries, the fuzz targets
# (the same sources compiled again with sanitizers) and the tests are all built
# from these lists, so a new source file is added here and nowhere else.
#
# Paths are relative to csrc/.

# The torch-free core (safetensors::format): header parsing and validation,
# file access, the writer, dtypes, errors, tensor-parallel arithmetic, the
# staging schedule, JSON with Python's NaN and Infinity, and the zip and
# pickle readers of migration.
set(SAFETENSORS_FORMAT_SOURCES
  error.cpp
  dtype.cpp
  header.cpp
  source.cpp
  writer.cpp
  durable.cpp
  tensor_parallel.cpp
  staging.cpp
  json_nonfinite.cpp
  checkpoint/zip.cpp
  pickle/unpickler.cpp)

# What needs LibTorch (safetensors::torch): tensors, modules, sharded sets,
# distributed loads and migration.
set(SAFETENSORS_TORCH_SOURCES
  torch_dtype.cpp
  load.cpp
  host_memory.cpp
  upload.cpp
  save.cpp
  module.cpp
  jit_module.cpp
  optimizer.cpp
  training.cpp
  distributed.cpp
  sharded.cpp
  checkpoint/detect.cpp
  checkpoint/archive.cpp
  checkpoint/torch_zip.cpp
  checkpoint/legacy.cpp
  checkpoint/flatten.cpp
  checkpoint/read.cpp
  checkpoint/convert.cpp
  checkpoint/diff.cpp
  transform.cpp)

# AOTInductor packages' constants from safetensors: only where LibTorch has
# AOTInductor's package loader (2.6 has it, 1.13 not; see
# safetensors_torch_has_aoti below), which then defines SAFETENSORS_TORCH_HAS_AOTI.
set(SAFETENSORS_TORCH_AOTI_SOURCES
  aoti.cpp)

# The command-line tool.
set(SAFETENSORS_CLI_SOURCES
  cli/main.cpp
  cli/util.cpp
  cli/inspect.cpp
  cli/verify.cpp
  cli/convert.cpp
  cli/diff.cpp
  cli/progress.cpp)

set(_safetensors_csrc ${CMAKE_CURRENT_LIST_DIR}/../csrc)
get_filename_component(_safetensors_csrc ${_safetensors_csrc} ABSOLUTE)
set(_safetensors_include ${CMAKE_CURRENT_LIST_DIR}/../include)
get_filename_component(_safetensors_include ${_safetensors_include} ABSOLUTE)

# Whether the LibTorch found (TORCH_INCLUDE_DIRS) has AOTInductor's package
# loader: SAFETENSORS_TORCH_HAS_AOTI, set in the caller's scope.
function(safetensors_torch_has_aoti)
  set(found OFF)
  foreach(dir IN LISTS TORCH_INCLUDE_DIRS)
    if(EXISTS ${dir}/torch/csrc/inductor/aoti_package/model_package_loader.h)
      set(found ON)
    endif()
  endforeach()
  set(SAFETENSORS_TORCH_HAS_AOTI ${found} PARENT_SCOPE)
endfunction()

# safetensors_torch_add_layer(<target> format|torch [STATIC|SHARED] [FORMAT <target>])
#
# Makes a library of one layer from its list. The library's type follows
# BUILD_SHARED_LIBS unless STATIC or SHARED is given. A torch layer links the
# format layer named by FORMAT (publicly: its headers include the core's).
# Private headers are reached from csrc/, as "upload.hpp" or "detail/x.hpp".
# Flags of a particular build (sanitizers, warnings) are the caller's.
function(safetensors_torch_add_layer target layer)
  cmake_parse_arguments(PARSE_ARGV 2 arg "STATIC;SHARED" "FORMAT" "")
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "safetensors_torch_add_layer: unexpected arguments ${arg_UNPARSED_ARGUMENTS}")
  endif()
  if(layer STREQUAL "format")
    set(sources ${SAFETENSORS_FORMAT_SOURCES})
  elseif(layer STREQUAL "torch")
    set(sources ${SAFETENSORS_TORCH_SOURCES})
    safetensors_torch_has_aoti()
    if(SAFETENSORS_TORCH_HAS_AOTI)
      list(APPEND sources ${SAFETENSORS_TORCH_AOTI_SOURCES})
    endif()
    if(NOT arg_FORMAT)
      message(FATAL_ERROR "safetensors_torch_add_layer(${target} torch) needs FORMAT <format target>")
    endif()
  else()
    message(FATAL_ERROR "safetensors_torch_add_layer: no layer '${layer}' (format or torch)")
  endif()
  list(TRANSFORM sources PREPEND ${_safetensors_csrc}/)
  set(type)
  if(arg_STATIC)
    set(type STATIC)
  elseif(arg_SHARED)
    set(type SHARED)
  endif()

  add_library(${target} ${type} ${sources})
  target_compile_features(${target} PUBLIC cxx_std_17)
  target_include_directories(${target}
    PUBLIC $<BUILD_INTERFACE:${_safetensors_include}> $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
    PRIVATE ${_safetensors_csrc})
  # Header-only, and used by no public header: not part of the interface.
  target_link_libraries(${target} PRIVATE $<BUILD_INTERFACE:nlohmann_json::nlohmann_json>)
  if(layer STREQUAL "format")
    # When static, it is still linked into shared libraries: safetensors::torch
    # or a consumer's.
    set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE ON)
    target_link_libraries(${target} PRIVATE ZLIB::ZLIB)
  else()
    target_link_libraries(${target} PUBLIC ${arg_FORMAT} torch)
    if(SAFETENSORS_TORCH_HAS_AOTI)
      # Public: include/safetensors/aoti.hpp declares its API under it.
      target_compile_definitions(${target} PUBLIC SAFETENSORS_TORCH_HAS_AOTI)
      target_link_libraries(${target} PRIVATE ${CMAKE_DL_LIBS})
    endif()
  endif()
endfunction()
