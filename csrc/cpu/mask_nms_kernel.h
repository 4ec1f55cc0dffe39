#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace litesam {
// Pairwise IoU (float32, Na x Nb) of bit-packed masks (int32, N x H x ceil(W/32)); boxes are int64
// inclusive XYXY boxes that enclose the masks. With `upper`, only entries j > i are computed (rest 0).
at::Tensor mask_iou_cpu(const at::Tensor& packed_a, const at::Tensor& boxes_a, const at::Tensor& packed_b,
                        const at::Tensor& boxes_b, bool upper);
// Greedy mask-IoU NMS; with idxs only masks of equal idxs suppress each other. Returns kept indices
// (int64) in decreasing score order, ties by increasing index; suppression when IoU > iou_threshold.
at::Tensor mask_nms_cpu(const at::Tensor& packed, const at::Tensor& boxes, const at::Tensor& scores,
                        const c10::optional<at::Tensor>& idxs, double iou_threshold);
}  // namespace litesam
