#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

namespace litesam {
// SAM's Sam.postprocess_masks (two bilinear resizes) + threshold + stability + box + area for float32
// logits (N, h, w), one pass per mask with two cached rows of the 1024-grid (no full-resolution logits).
// Tables (ops/mask_postprocess.py::bilinear_table), float32 rows [i0, i1, w0, w1]: y1/x1 map crop
// rows/cols to low-res rows/cols, y2/x2 map output rows/cols to crop rows/cols.
// Returns (masks bool (N, H, W) or packed int32 (N, H, ceil(W/32)), stability float32 (N,),
// boxes int64 (N, 4) XYXY inclusive, areas int64 (N,)).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> postprocess_masks_cpu(
    const at::Tensor& logits, const at::Tensor& y1, const at::Tensor& x1, const at::Tensor& y2,
    const at::Tensor& x2, double mask_threshold, double high, double low, bool packed);
}  // namespace litesam
