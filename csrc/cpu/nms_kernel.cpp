#include "cpu/nms_kernel.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include <vector>

#include "common/box_iou.h"
#include "common/nms_common.h"
#include "cpu/greedy_walk.h"

namespace litesam {
namespace {

// Box IoU is cheap: a parallel task suppresses at least 16 blocks (1024 boxes) per kept block.
constexpr int64_t kBoxBulkGrain = 16;

template <typename T>
at::Tensor greedy_keep(const at::Tensor& boxes_sorted, const int64_t* groups, const int64_t* col_end,
                                 double threshold) {
  const int64_t n = boxes_sorted.size(0);
  const T* boxes = boxes_sorted.const_data_ptr<T>();
  std::vector<T> areas(n);
  for (int64_t i = 0; i < n; ++i) areas[i] = box_area(boxes + 4 * i);
  return greedy_walk_cpu</*kEagerDiagonal=*/true>(
      n, groups, col_end,
      [&](int64_t i, int64_t j) { return iou_exceeds(boxes + 4 * i, areas[i], boxes + 4 * j, areas[j], threshold); },
      kBoxBulkGrain);
}

}  // namespace

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                           const c10::optional<at::Tensor>& idxs, double iou_threshold) {
  check_nms_inputs(boxes, scores, idxs, iou_threshold);
  TORCH_CHECK_VALUE(boxes.device().is_cpu(), "boxes must be a CPU tensor for the CPU kernel, got ", boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));

  const at::Tensor order = nms_visit_order(scores, idxs);
  const at::Tensor boxes_sorted =
      boxes.index_select(0, order).to(nms_compute_type(boxes.scalar_type())).contiguous();
  const VisitGroups groups = visit_groups(idxs, order);

  at::Tensor keep;
  AT_DISPATCH_SWITCH(boxes_sorted.scalar_type(), "batched_nms_cpu",
                     AT_DISPATCH_CASE(at::kFloat, [&] { keep = greedy_keep<float>(boxes_sorted, groups.sorted_ptr(), groups.col_end_ptr(), iou_threshold); })
                     AT_DISPATCH_CASE(at::kDouble, [&] { keep = greedy_keep<double>(boxes_sorted, groups.sorted_ptr(), groups.col_end_ptr(), iou_threshold); }));
  return kept_indices(order, keep, scores, idxs.has_value());
}

}  // namespace litesam
