#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace litesam {
// Same contract as batched_nms_cpu; everything stays on the device except the kept count.
at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const c10::optional<at::Tensor>& idxs, double iou_threshold);

// The greedy walk (common/nms_walk.h) over a suppression bitmask in visit order, shared with mask NMS:
// mask is int64 (N * ceil(N/64)) on the device, bit j of word [i, c] set when item i suppresses item
// 64c + j; only words with c >= i / 64 (and c < col_end[i / 64]) are read. groups_sorted: the visit-order
// group ids (int64, N) and col_end their group_block_ends when there are groups, else both undefined.
// Returns bool keep flags (N).
at::Tensor nms_greedy_keep_cuda(const at::Tensor& mask, const at::Tensor& groups_sorted, const at::Tensor& col_end,
                                int64_t n);
}  // namespace litesam
