// libm2det_tensorrt_rtx_alias.so: no code of its own. Its SONAME is "libtensorrt_rtx.so" and its one
// dependency is libtensorrt_rtx.so.1 (see plugins/CMakeLists.txt).
//
// TensorRT-RTX's ONNX parser links no TensorRT library: when it imports a plugin node it dlopen()s
// the runtime by its unversioned development name "libtensorrt_rtx.so" and dlsym()s its private
// API there. pip's tensorrt-rtx packages ship only libtensorrt_rtx.so.1, so that lookup fails and
// the process aborts. The dynamic linker matches an already loaded library by its SONAME before it
// searches any folder, so once this library is loaded (m2det.engines.plugin_library
// .expose_tensorrt_rtx) the parser's dlopen() returns it, and dlsym() on it finds the runtime's
// symbols through its dependency: the libtensorrt_rtx.so.1 the process already has.

extern "C" int m2det_tensorrt_rtx_alias_version()
{
    return 1;
}
