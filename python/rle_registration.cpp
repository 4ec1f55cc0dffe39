// SAM/COCO uncompressed RLE kernels: litesam::_mask_to_rle_kernel (see litesam_kernels/ops/rle.py).
#include <torch/library.h>

#include "cpu/rle_kernel.h"
#ifdef WITH_CUDA
#include "cuda/rle_kernel.h"
#endif

TORCH_LIBRARY_FRAGMENT(litesam, m) {
  m.def("_mask_to_rle_kernel(Tensor masks, int width) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(litesam, CPU, m) {
  m.impl("_mask_to_rle_kernel", TORCH_FN(litesam::mask_to_rle_cpu));
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(litesam, CUDA, m) {
  m.impl("_mask_to_rle_kernel", TORCH_FN(litesam::mask_to_rle_cuda));
}
#endif
