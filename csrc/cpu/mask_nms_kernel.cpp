#include "cpu/mask_nms_kernel.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>

#include <vector>

#include "common/mask_iou.h"
#include "common/mask_nms_common.h"
#include "common/nms_common.h"
#include "cpu/greedy_walk.h"

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

  // Masks stay where they are; the greedy walk reaches them through `order`.
  const at::Tensor order = nms_visit_order(scores, idxs).contiguous();
  const int64_t* order_ptr = order.const_data_ptr<int64_t>();
  const at::Tensor masks = packed.contiguous();
  const int32_t* pm = masks.const_data_ptr<int32_t>();
  const at::Tensor win = window_boxes(boxes, order, height, words * kMaskBitsPerWord);
  const int32_t* wp = win.const_data_ptr<int32_t>();
  const std::vector<int64_t> areas = mask_areas(masks);
  const VisitGroups groups = visit_groups(idxs, order);

  // The device's walk (cpu/greedy_walk.h), lazily: only pairs (kept i, not yet suppressed j) are
  // evaluated, in parallel over the blocks after each kept block (one task per block of 64 masks).
  const at::Tensor keep = greedy_walk_cpu</*kEagerDiagonal=*/false>(
      n, groups.sorted_ptr(), groups.col_end_ptr(),
      [&](int64_t i, int64_t j) {
        PairWindow w;
        if (!pair_window(wp + 4 * i, wp + 4 * j, &w)) return false;
        const int64_t mask_i = order_ptr[i], mask_j = order_ptr[j];
        const int64_t inter = window_intersection(pm + mask_i * mask_words, pm + mask_j * mask_words, words, w);
        return static_cast<double>(iou_from_counts(inter, areas[mask_i], areas[mask_j])) > iou_threshold;
      },
      /*bulk_grain=*/1);
  return kept_indices(order, keep, scores, idxs.has_value());
}

}  // namespace litesam
