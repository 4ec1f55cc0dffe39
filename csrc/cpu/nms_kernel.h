#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace litesam {
// Greedy box NMS; with idxs only boxes of equal idxs suppress each other. Returns kept indices (int64)
// in decreasing score order, ties by increasing index.
at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                           const c10::optional<at::Tensor>& idxs, double iou_threshold);
}  // namespace litesam
