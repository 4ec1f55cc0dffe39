#pragma once
// Shared by the CPU and CUDA RLE kernels: input checks and the pixel read for bool or packed masks.
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

namespace litesam {

// masks: bool (N, H, W) or int32 bit-packed (N, H, ceil(W/32)) (ops/bitmask.py), contiguous.
inline void check_rle_inputs(const at::Tensor& masks, int64_t width) {
  TORCH_CHECK_TYPE(masks.scalar_type() == at::kBool || masks.scalar_type() == at::kInt,
                   "masks must be bool or bit-packed int32, got ", masks.scalar_type());
  TORCH_CHECK_VALUE(masks.dim() == 3, "masks must be a 3-D (N, H, W) tensor, got ", masks.dim(), " dims");
  TORCH_CHECK_VALUE(masks.is_contiguous(), "masks must be contiguous");
  TORCH_CHECK_VALUE(width >= 0, "width must be non-negative, got ", width);
  if (masks.scalar_type() == at::kBool) {
    TORCH_CHECK_VALUE(masks.size(2) == width, "width must equal masks.size(2) for bool masks, got ", width);
  } else {
    TORCH_CHECK_VALUE(masks.size(2) == (width + 31) / 32, "packed masks must have ceil(width/32) = ",
                      (width + 31) / 32, " words per row, got ", masks.size(2));
  }
}

// Pixel (y, x) of one mask whose rows are `row_len` elements long.
C10_HOST_DEVICE inline int rle_pixel(const uint8_t* bools, const int32_t* words, int64_t row_len, int64_t y,
                                     int64_t x) {
  if (words != nullptr) return (static_cast<uint32_t>(words[y * row_len + (x >> 5)]) >> (x & 31)) & 1u;
  return bools[y * row_len + x] != 0;
}

}  // namespace litesam
