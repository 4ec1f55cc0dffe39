#pragma once
// Input checks shared by the CPU and CUDA mask-NMS / mask-IoU kernels (the Python op checks the public
// inputs first; these guard direct calls of the compiled kernels).
#include <ATen/core/Tensor.h>
#include <ATen/ops/stack.h>
#include <c10/util/Optional.h>

namespace litesam {

inline void check_packed_masks(const char* name, const at::Tensor& packed, const char* boxes_name,
                               const at::Tensor& boxes) {
  TORCH_CHECK_VALUE(packed.dim() == 3, name, " must be packed masks of shape (N, H, ceil(W/32)), got ",
                    packed.sizes());
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kInt, name, " must be int32 packed masks, got ", packed.scalar_type());
  // Zero-pixel masks are all empty (IoU 0 everywhere): the Python op answers those without a kernel.
  TORCH_CHECK_VALUE(packed.size(1) > 0 && packed.size(2) > 0, name, " must have H > 0 and W > 0, got ",
                    packed.sizes());
  TORCH_CHECK_VALUE(packed.size(1) * packed.size(2) * 32 < (int64_t(1) << 31), name,
                    " masks must have fewer than 2**31 pixels each, got shape ", packed.sizes());
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == packed.size(0), boxes_name,
                    " must have shape (", packed.size(0), ", 4), got ", boxes.sizes());
  TORCH_CHECK_TYPE(boxes.scalar_type() == at::kLong, boxes_name, " must be int64, got ", boxes.scalar_type());
  TORCH_CHECK_VALUE(boxes.device() == packed.device(), boxes_name, " must be on the device of ", name, " (",
                    packed.device(), "), got ", boxes.device());
}

// Boxes clipped to the packed mask (an enclosing box may stick out of it) as int32 (N, 4), rows in `order`
// when it is defined. The packed width (words * 32) bounds x: padding bits are zero, so that is exact.
inline at::Tensor window_boxes(const at::Tensor& boxes, const at::Tensor& order, int64_t height, int64_t width) {
  at::Tensor sorted = order.defined() ? boxes.index_select(0, order) : boxes;
  at::Tensor x = sorted.slice(1, 0, 4, 2).clamp(0, width - 1);
  at::Tensor y = sorted.slice(1, 1, 4, 2).clamp(0, height - 1);
  return at::stack({x.select(1, 0), y.select(1, 0), x.select(1, 1), y.select(1, 1)}, 1).to(at::kInt).contiguous();
}

inline void check_mask_nms_inputs(const at::Tensor& packed, const at::Tensor& boxes, const at::Tensor& scores,
                                  const c10::optional<at::Tensor>& idxs, double iou_threshold) {
  check_packed_masks("masks", packed, "boxes", boxes);
  TORCH_CHECK_VALUE(scores.dim() == 1 && scores.size(0) == packed.size(0), "scores must have shape (",
                    packed.size(0), ",), got ", scores.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(scores.scalar_type()), "scores must be a floating tensor, got ",
                   scores.scalar_type());
  TORCH_CHECK_VALUE(scores.device() == packed.device(), "scores must be on the device of masks (", packed.device(),
                    "), got ", scores.device());
  TORCH_CHECK_VALUE(iou_threshold >= 0.0 && iou_threshold <= 1.0, "iou_threshold must be in [0, 1], got ",
                    iou_threshold);
  if (idxs.has_value()) {
    TORCH_CHECK_VALUE(idxs->dim() == 1 && idxs->size(0) == packed.size(0), "idxs must have shape (",
                      packed.size(0), ",), got ", idxs->sizes());
    TORCH_CHECK_TYPE(at::isIntegralType(idxs->scalar_type(), /*includeBool=*/false),
                     "idxs must be an integer tensor, got ", idxs->scalar_type());
    TORCH_CHECK_VALUE(idxs->device() == packed.device(), "idxs must be on the device of masks (", packed.device(),
                      "), got ", idxs->device());
  }
}

inline void check_mask_iou_inputs(const at::Tensor& packed_a, const at::Tensor& boxes_a, const at::Tensor& packed_b,
                                  const at::Tensor& boxes_b) {
  check_packed_masks("masks_a", packed_a, "boxes_a", boxes_a);
  check_packed_masks("masks_b", packed_b, "boxes_b", boxes_b);
  TORCH_CHECK_VALUE(packed_a.size(1) == packed_b.size(1) && packed_a.size(2) == packed_b.size(2),
                    "masks_a and masks_b must have the same (H, ceil(W/32)), got ", packed_a.sizes(), " and ",
                    packed_b.sizes());
  TORCH_CHECK_VALUE(packed_a.device() == packed_b.device(), "masks_b must be on the device of masks_a (",
                    packed_a.device(), "), got ", packed_b.device());
}

}  // namespace litesam
