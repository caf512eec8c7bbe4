# FindTensorRT: headers (TensorRT::headers) and libnvinfer (TensorRT::nvinfer, component "nvinfer").
#   Hints: TensorRT_ROOT (CMake or environment variable), TensorRT_INCLUDE_DIR, TensorRT_nvinfer_LIBRARY.
#   Sets TensorRT_FOUND, TensorRT_VERSION, TensorRT_INCLUDE_DIR, TensorRT_nvinfer_FOUND, TensorRT_RTX.
#   TensorRT-RTX headers (NvInferVersion.h defines TRT_MAJOR_RTX) set TensorRT_RTX and make
#   TensorRT::nvinfer its runtime library, libtensorrt_rtx (pip: tensorrt_rtx_libs/libtensorrt_rtx.so.1).
find_path(TensorRT_INCLUDE_DIR NvInfer.h
  HINTS ${TensorRT_ROOT} ENV TensorRT_ROOT
  PATH_SUFFIXES include include/x86_64-linux-gnu include/aarch64-linux-gnu)

set(TensorRT_RTX FALSE)
set(_trt_library_names nvinfer nvinfer_11 nvinfer_10)
if(TensorRT_INCLUDE_DIR AND EXISTS "${TensorRT_INCLUDE_DIR}/NvInferVersion.h")
  file(READ "${TensorRT_INCLUDE_DIR}/NvInferVersion.h" _trt_version_h)
  if(_trt_version_h MATCHES "#define TRT_MAJOR_RTX")
    set(TensorRT_RTX TRUE)
    set(_trt_library_names tensorrt_rtx libtensorrt_rtx.so.1)
  endif()
  foreach(_part MAJOR MINOR PATCH)
    # TensorRT >= 10.x defines TRT_<PART>_ENTERPRISE, TensorRT-RTX TRT_<PART>_RTX; older headers
    # NV_TENSORRT_<PART> directly.
    if(_trt_version_h MATCHES "#define TRT_${_part}_(ENTERPRISE|RTX) ([0-9]+)")
      set(_trt_${_part} "${CMAKE_MATCH_2}")
    elseif(_trt_version_h MATCHES "#define NV_TENSORRT_${_part} ([0-9]+)")
      set(_trt_${_part} "${CMAKE_MATCH_1}")
    endif()
  endforeach()
  set(TensorRT_VERSION "${_trt_MAJOR}.${_trt_MINOR}.${_trt_PATCH}")
endif()
find_library(TensorRT_nvinfer_LIBRARY NAMES ${_trt_library_names}
  HINTS ${TensorRT_ROOT} ENV TensorRT_ROOT
  PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu lib/aarch64-linux-gnu)

set(TensorRT_nvinfer_FOUND FALSE)
if(TensorRT_nvinfer_LIBRARY)
  set(TensorRT_nvinfer_FOUND TRUE)
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(TensorRT
  REQUIRED_VARS TensorRT_INCLUDE_DIR
  VERSION_VAR TensorRT_VERSION
  HANDLE_COMPONENTS)

if(TensorRT_FOUND AND NOT TARGET TensorRT::headers)
  add_library(TensorRT::headers INTERFACE IMPORTED GLOBAL)
  # SYSTEM include: warnings inside TensorRT's headers are not ours.
  set_target_properties(TensorRT::headers PROPERTIES
    INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${TensorRT_INCLUDE_DIR}"
    INTERFACE_INCLUDE_DIRECTORIES "${TensorRT_INCLUDE_DIR}")
endif()
if(TensorRT_FOUND AND TensorRT_nvinfer_FOUND AND NOT TARGET TensorRT::nvinfer)
  add_library(TensorRT::nvinfer UNKNOWN IMPORTED GLOBAL)
  set_target_properties(TensorRT::nvinfer PROPERTIES
    IMPORTED_LOCATION "${TensorRT_nvinfer_LIBRARY}"
    INTERFACE_LINK_LIBRARIES TensorRT::headers)
endif()
mark_as_advanced(TensorRT_INCLUDE_DIR TensorRT_nvinfer_LIBRARY)
