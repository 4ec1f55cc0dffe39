#pragma once
// Input checks and ordering shared by the CPU and CUDA box-NMS kernels.
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/masked_select.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <c10/util/Optional.h>

#include "common/nms_walk.h"

namespace litesam {

inline void check_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores,
                             const c10::optional<at::Tensor>& idxs, double iou_threshold) {
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4,
                    "boxes must have shape (N, 4), got ", boxes.sizes());
  TORCH_CHECK_VALUE(scores.dim() == 1, "scores must have shape (N,), got ", scores.sizes());
  TORCH_CHECK_VALUE(scores.size(0) == boxes.size(0), "scores must have one entry per box: boxes has ",
                    boxes.size(0), " rows, scores has ", scores.size(0));
  TORCH_CHECK_TYPE(at::isFloatingType(boxes.scalar_type()), "boxes must be a floating tensor, got ",
                   boxes.scalar_type());
  TORCH_CHECK_TYPE(boxes.scalar_type() == scores.scalar_type(),
                   "scores must have the dtype of boxes (", boxes.scalar_type(), "), got ", scores.scalar_type());
  TORCH_CHECK_VALUE(scores.device() == boxes.device(), "scores must be on the device of boxes (",
                    boxes.device(), "), got ", scores.device());
  TORCH_CHECK_VALUE(iou_threshold >= 0.0 && iou_threshold <= 1.0,
                    "iou_threshold must be in [0, 1], got ", iou_threshold);
  if (idxs.has_value()) {
    const at::Tensor& groups = *idxs;
    TORCH_CHECK_VALUE(groups.dim() == 1 && groups.size(0) == boxes.size(0),
                      "idxs must have shape (N,) with N = ", boxes.size(0), ", got ", groups.sizes());
    TORCH_CHECK_TYPE(at::isIntegralType(groups.scalar_type(), /*includeBool=*/false),
                     "idxs must be an integer tensor, got ", groups.scalar_type());
    TORCH_CHECK_VALUE(groups.device() == boxes.device(), "idxs must be on the device of boxes (",
                      boxes.device(), "), got ", groups.device());
  }
}

// The order in which the greedy pass visits boxes: decreasing score, ties by increasing index
// (a stable sort); with idxs, grouped by idxs first so each group is one contiguous run.
inline at::Tensor nms_visit_order(const at::Tensor& scores, const c10::optional<at::Tensor>& idxs) {
  at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  if (idxs.has_value()) {
    at::Tensor grouped = std::get<1>(at::sort(idxs->index_select(0, order), /*stable=*/true, 0, false));
    order = order.index_select(0, grouped);
  }
  return order;
}

// Kept original indices -> decreasing score, ties by increasing index.
inline at::Tensor in_score_order(const at::Tensor& kept, const at::Tensor& scores) {
  at::Tensor by_index = std::get<0>(at::sort(kept, /*stable=*/true, 0, false));
  at::Tensor by_score =
      std::get<1>(at::sort(scores.index_select(0, by_index), /*stable=*/true, 0, /*descending=*/true));
  return by_index.index_select(0, by_score);
}

// For each block of `block` items in visit order (groups ascending), the first column block whose groups
// it cannot meet: block c can meet row block r only if c's first group <= r's last group.
inline at::Tensor group_block_ends(const at::Tensor& groups_sorted, int64_t block) {
  const int64_t n = groups_sorted.size(0);
  const at::Tensor block_first = groups_sorted.slice(0, 0, n, block).contiguous();
  const at::Tensor last_positions =
      at::arange(block - 1, n + block - 1, block, groups_sorted.options()).clamp_max(n - 1);
  const at::Tensor block_last = groups_sorted.index_select(0, last_positions);
  return at::searchsorted(block_first, block_last, /*out_int32=*/false, /*right=*/true).contiguous();
}

// With idxs: the visit-order group ids (int64) and their group_block_ends (blocks of kWalkBlock), which
// the greedy walk of every backend takes; without: undefined tensors and null pointers.
struct VisitGroups {
  at::Tensor sorted, col_end;
  const int64_t* sorted_ptr() const { return sorted.defined() ? sorted.const_data_ptr<int64_t>() : nullptr; }
  const int64_t* col_end_ptr() const { return col_end.defined() ? col_end.const_data_ptr<int64_t>() : nullptr; }
};

inline VisitGroups visit_groups(const c10::optional<at::Tensor>& idxs, const at::Tensor& order) {
  VisitGroups groups;
  if (idxs.has_value()) {
    groups.sorted = idxs->index_select(0, order).to(at::kLong).contiguous();
    groups.col_end = group_block_ends(groups.sorted, kWalkBlock);
  }
  return groups;
}

// The op's result from the walk's keep flags (bool, visit order): kept original indices by decreasing
// score, ties by increasing index (grouped visit orders are re-sorted; an ungrouped one already is).
inline at::Tensor kept_indices(const at::Tensor& order, const at::Tensor& keep, const at::Tensor& scores, bool grouped) {
  at::Tensor kept = at::masked_select(order, keep);
  return grouped ? in_score_order(kept, scores) : kept;
}

inline at::ScalarType nms_compute_type(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace litesam
