// The Python module litesam_kernels._C. Importing it loads the TORCH_LIBRARY registrations of
// ops_registration.cpp; build_info() says how it was built.
#include <pybind11/pybind11.h>

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "litesam_kernels compiled kernels (registered as torch.ops.litesam._*_kernel)";
  m.def("build_info", [] {
    py::dict info;
#ifdef WITH_CUDA
    info["cuda"] = true;
    info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
    info["cuda_archs"] = std::string(LITESAM_CUDA_ARCHS);
#else
    info["cuda"] = false;
    info["cuda_version"] = py::none();
    info["cuda_archs"] = py::none();
#endif
#if defined(__clang__)
    info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    info["compiler"] = std::string("gcc ") + __VERSION__;
#else
    info["compiler"] = std::string("unknown");
#endif
    info["cplusplus"] = static_cast<long>(__cplusplus);
    return info;
  }, "How this extension was built: CUDA on/off, CUDA runtime version, archs, host compiler.");
}
