#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace litesam {
// Same contracts as mask_iou_cpu / mask_nms_cpu; everything stays on the device except the kept count.
at::Tensor mask_iou_cuda(const at::Tensor& packed_a, const at::Tensor& boxes_a, const at::Tensor& packed_b,
                         const at::Tensor& boxes_b, bool upper);
at::Tensor mask_nms_cuda(const at::Tensor& packed, const at::Tensor& boxes, const at::Tensor& scores,
                         const c10::optional<at::Tensor>& idxs, double iou_threshold);
}  // namespace litesam
