#include "cpu/mask_nms_kernel.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>

#include <vector>

#include "common/mask_iou.h"
#include "common/mask_nms_common.h"
#include "common/nms_common.h"

namespace litesam {
namespace {

std::vector<int64_t> mask_areas(const at::Tensor& packed) {
  const int64_t n = packed.size(0);
  const int64_t mask_words = packed.size(1) * packed.size(2);
  const uint32_t* words = reinterpret_cast<const uint32_t*>(packed.const_data_ptr<int32_t>());
  std::vector<int64_t> areas(n);
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t count = 0;
      for (int64_t k = 0; k < mask_words; ++k) count += popcount32(words[i * mask_words + k]);
      areas[i] = count;
    }
  });
  return areas;
}

}  // namespace

at::Tensor mask_iou_cpu(const at::Tensor& packed_a, const at::Tensor& boxes_a, const at::Tensor& packed_b,
                        const at::Tensor& boxes_b, bool upper) {
  check_mask_iou_inputs(packed_a, boxes_a, packed_b, boxes_b);
  TORCH_CHECK_VALUE(packed_a.device().is_cpu(), "masks_a must be a CPU tensor for the CPU kernel, got ",
                    packed_a.device());
  const int64_t na = packed_a.size(0), nb = packed_b.size(0);
  const int64_t height = packed_a.size(1), words = packed_a.size(2);
  at::Tensor iou = at::zeros({na, nb}, packed_a.options().dtype(at::kFloat));
  if (na == 0 || nb == 0) return iou;
  const at::Tensor a = packed_a.contiguous(), b = packed_b.contiguous();
  const at::Tensor win_a = window_boxes(boxes_a, at::Tensor(), height, words * kMaskBitsPerWord);
  const at::Tensor win_b = window_boxes(boxes_b, at::Tensor(), height, words * kMaskBitsPerWord);
  const std::vector<int64_t> area_a = mask_areas(a), area_b = mask_areas(b);
  const int32_t* pa = a.const_data_ptr<int32_t>();
  const int32_t* pb = b.const_data_ptr<int32_t>();
  const int32_t* wa = win_a.const_data_ptr<int32_t>();
  const int32_t* wb = win_b.const_data_ptr<int32_t>();
  float* out = iou.data_ptr<float>();
  const int64_t mask_words = height * words;
  at::parallel_for(0, na, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t j = upper ? i + 1 : 0; j < nb; ++j) {
        PairWindow w;
        if (!pair_window(wa + 4 * i, wb + 4 * j, &w)) continue;
        const int64_t inter = window_intersection(pa + i * mask_words, pb + j * mask_words, words, w);
        out[i * nb + j] = iou_from_counts(inter, area_a[i], area_b[j]);
      }
    }
  });
  return iou;
}

at::Tensor mask_nms_cpu(const at::Tensor& packed, const at::Tensor& boxes, const at::Tensor& scores,
                        const c10::optional<at::Tensor>& idxs, double iou_threshold) {
  check_mask_nms_inputs(packed, boxes, scores, idxs, iou_threshold);
  TORCH_CHECK_VALUE(packed.device().is_cpu(), "masks must be a CPU tensor for the CPU kernel, got ", packed.device());
  const int64_t n = packed.size(0);
  if (n == 0) return at::empty({0}, scores.options().dtype(at::kLong));
  const int64_t height = packed.size(1), words = packed.size(2), mask_words = height * words;

  // Masks stay where they are; the greedy pass reaches them through `order`.
  const at::Tensor order = nms_visit_order(scores, idxs).contiguous();
  const int64_t* order_ptr = order.const_data_ptr<int64_t>();
  const at::Tensor masks = packed.contiguous();
  const int32_t* pm = masks.const_data_ptr<int32_t>();
  const at::Tensor win = window_boxes(boxes, order, height, words * kMaskBitsPerWord);
  const int32_t* wp = win.const_data_ptr<int32_t>();
  const std::vector<int64_t> areas = mask_areas(masks);

  // Groups are contiguous in visit order: group_end[i] is one past the last member of i's group.
  std::vector<int64_t> group_end(n, n);
  if (idxs.has_value()) {
    const at::Tensor groups = idxs->index_select(0, order).to(at::kLong).contiguous();
    const int64_t* g = groups.const_data_ptr<int64_t>();
    for (int64_t i = n - 2; i >= 0; --i) group_end[i] = g[i] == g[i + 1] ? group_end[i + 1] : i + 1;
  }

  // Lazy greedy: only pairs (kept i, not yet suppressed j) are ever evaluated; the j loop of each
  // kept mask is parallel (each j is written by one thread only).
  std::vector<uint8_t> suppressed(n, 0);
  std::vector<int64_t> kept_positions;
  for (int64_t i = 0; i < n; ++i) {
    if (suppressed[i]) continue;
    kept_positions.push_back(i);
    const int32_t* mask_i = pm + order_ptr[i] * mask_words;
    const int64_t area_i = areas[order_ptr[i]];
    at::parallel_for(i + 1, group_end[i], 64, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        PairWindow w;
        if (suppressed[j] || !pair_window(wp + 4 * i, wp + 4 * j, &w)) continue;
        const int64_t inter = window_intersection(mask_i, pm + order_ptr[j] * mask_words, words, w);
        if (static_cast<double>(iou_from_counts(inter, area_i, areas[order_ptr[j]])) > iou_threshold) suppressed[j] = 1;
      }
    });
  }

  const int64_t kept_count = static_cast<int64_t>(kept_positions.size());
  at::Tensor positions = at::from_blob(kept_positions.data(), {kept_count}, at::kLong).clone();
  at::Tensor kept = order.index_select(0, positions);
  return idxs.has_value() ? in_score_order(kept, scores) : kept;
}

}  // namespace litesam
