// Schemas of the connected-components kernels (ops/small_regions.py) and their CPU/CUDA implementations.
#include <torch/library.h>

#include "cpu/small_regions_kernel.h"
#ifdef WITH_CUDA
#include "cuda/small_regions_kernel.h"
#endif

TORCH_LIBRARY_FRAGMENT(litesam, m) {
  m.def("_connected_components_kernel(Tensor masks) -> Tensor");
  m.def("_remove_small_regions_kernel(Tensor masks, float area_thresh, bool holes) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(litesam, CPU, m) {
  m.impl("_connected_components_kernel", TORCH_FN(litesam::connected_components_cpu));
  m.impl("_remove_small_regions_kernel", TORCH_FN(litesam::remove_small_regions_cpu));
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(litesam, CUDA, m) {
  m.impl("_connected_components_kernel", TORCH_FN(litesam::connected_components_cuda));
  m.impl("_remove_small_regions_kernel", TORCH_FN(litesam::remove_small_regions_cuda));
}
#endif
