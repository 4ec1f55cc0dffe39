// Fused SAM mask post-processing kernels: litesam::_postprocess_masks_kernel (ops/mask_postprocess.py).
#include <torch/library.h>

#include "cpu/mask_postprocess_kernel.h"

TORCH_LIBRARY_FRAGMENT(litesam, m) {
  m.def("_postprocess_masks_kernel(Tensor logits, Tensor y1, Tensor x1, Tensor y2, Tensor x2, float mask_threshold, "
        "float high, float low, bool packed) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(litesam, CPU, m) {
  m.impl("_postprocess_masks_kernel", TORCH_FN(litesam::postprocess_masks_cpu));
}
