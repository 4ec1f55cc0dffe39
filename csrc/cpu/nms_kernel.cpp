#include "cpu/nms_kernel.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <vector>

#include "common/box_iou.h"
#include "common/nms_common.h"

namespace litesam {
namespace {

template <typename T>
std::vector<int64_t> greedy_keep(const at::Tensor& boxes_sorted, const int64_t* groups, double threshold) {
  const int64_t n = boxes_sorted.size(0);
  const T* boxes = boxes_sorted.const_data_ptr<T>();
  std::vector<T> areas(n);
  for (int64_t i = 0; i < n; ++i) areas[i] = box_area(boxes + 4 * i);
  std::vector<uint8_t> suppressed(n, 0);
  std::vector<int64_t> kept;
  for (int64_t i = 0; i < n; ++i) {
    if (suppressed[i]) continue;
    kept.push_back(i);
    const T* box_i = boxes + 4 * i;
    for (int64_t j = i + 1; j < n; ++j) {
      // Groups are contiguous in visit order, so the first other group ends this box's reach.
      if (groups != nullptr && groups[j] != groups[i]) break;
      if (!suppressed[j] && iou_exceeds(box_i, areas[i], boxes + 4 * j, areas[j], threshold)) suppressed[j] = 1;
    }
  }
  return kept;
}

}  // namespace

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                           const c10::optional<at::Tensor>& idxs, double iou_threshold) {
  check_nms_inputs(boxes, scores, idxs, iou_threshold);
  TORCH_CHECK_VALUE(boxes.device().is_cpu(), "boxes must be a CPU tensor for the CPU kernel, got ", boxes.device());
  if (boxes.size(0) == 0) return at::empty({0}, boxes.options().dtype(at::kLong));

  const at::Tensor order = nms_visit_order(scores, idxs);
  const at::Tensor boxes_sorted =
      boxes.index_select(0, order).to(nms_compute_type(boxes.scalar_type())).contiguous();
  at::Tensor groups_sorted;
  if (idxs.has_value()) groups_sorted = idxs->index_select(0, order).to(at::kLong).contiguous();
  const int64_t* groups = idxs.has_value() ? groups_sorted.const_data_ptr<int64_t>() : nullptr;

  std::vector<int64_t> kept_positions;
  AT_DISPATCH_SWITCH(boxes_sorted.scalar_type(), "batched_nms_cpu",
                     AT_DISPATCH_CASE(at::kFloat, [&] { kept_positions = greedy_keep<float>(boxes_sorted, groups, iou_threshold); })
                     AT_DISPATCH_CASE(at::kDouble, [&] { kept_positions = greedy_keep<double>(boxes_sorted, groups, iou_threshold); }));

  const int64_t kept_count = static_cast<int64_t>(kept_positions.size());
  at::Tensor positions = at::from_blob(kept_positions.data(), {kept_count}, at::kLong).clone();
  at::Tensor kept = order.index_select(0, positions);
  return idxs.has_value() ? in_score_order(kept, scores) : kept;
}

}  // namespace litesam
