#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace litesam {
// Same contract as batched_nms_cpu; everything stays on the device except the kept count.
at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const c10::optional<at::Tensor>& idxs, double iou_threshold);
}  // namespace litesam
