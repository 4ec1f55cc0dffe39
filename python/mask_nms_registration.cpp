// Compiled mask-IoU / mask-NMS kernels (bit-packed masks). The public ops (litesam::mask_iou,
// mask_nms, matrix_nms) are Python custom ops in litesam_kernels/ops/mask_nms.py that call these.
#include <torch/library.h>

#include "cpu/mask_nms_kernel.h"
#ifdef WITH_CUDA
#include "cuda/mask_nms_kernel.h"
#endif

TORCH_LIBRARY_FRAGMENT(litesam, m) {
  m.def("_mask_iou_kernel(Tensor packed_a, Tensor boxes_a, Tensor packed_b, Tensor boxes_b, bool upper) -> Tensor");
  m.def("_mask_nms_kernel(Tensor packed, Tensor boxes, Tensor scores, Tensor? idxs, float iou_threshold) -> Tensor");
}

TORCH_LIBRARY_IMPL(litesam, CPU, m) {
  m.impl("_mask_iou_kernel", TORCH_FN(litesam::mask_iou_cpu));
  m.impl("_mask_nms_kernel", TORCH_FN(litesam::mask_nms_cpu));
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(litesam, CUDA, m) {
  m.impl("_mask_iou_kernel", TORCH_FN(litesam::mask_iou_cuda));
  m.impl("_mask_nms_kernel", TORCH_FN(litesam::mask_nms_cuda));
}
#endif
