// The compiled kernels' schemas and their CPU/CUDA implementations. The public ops
// (torch.ops.litesam.<op>) are Python custom ops that pick a backend per call; the compiled
// kernels are the `_<op>_kernel` ops below, reached from there or called directly.
#include <torch/library.h>

#include "cpu/nms_kernel.h"
#ifdef WITH_CUDA
#include "cuda/nms_kernel.h"
#endif

TORCH_LIBRARY(litesam, m) {
  m.def("_batched_nms_kernel(Tensor boxes, Tensor scores, Tensor? idxs, float iou_threshold) -> Tensor");
}

TORCH_LIBRARY_IMPL(litesam, CPU, m) {
  m.impl("_batched_nms_kernel", TORCH_FN(litesam::batched_nms_cpu));
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(litesam, CUDA, m) {
  m.impl("_batched_nms_kernel", TORCH_FN(litesam::batched_nms_cuda));
}
#endif
