#pragma once
// Shared by the CPU and CUDA connected-components kernels: input checks and the block-raster code.
//
// code(y, x) = 4 * ((y / 2) * ceil(W / 2) + x / 2) + 2 * (y % 2) + (x % 2). Union-find roots are the
// smallest code of a component, so root order is OpenCV's label order (its 8-connected labelling works
// on 2x2 blocks in raster order, and an 8-connected 2x2 block never holds two components).
#include <ATen/core/Tensor.h>

#ifdef __CUDACC__
#define LITESAM_HD __host__ __device__ __forceinline__
#else
#define LITESAM_HD inline
#endif

namespace litesam {

LITESAM_HD int32_t block_code(int32_t y, int32_t x, int32_t half_w) {
  return 4 * ((y >> 1) * half_w + (x >> 1)) + 2 * (y & 1) + (x & 1);
}

LITESAM_HD int64_t codes_per_mask(int64_t h, int64_t w) { return 4 * ((h + 1) / 2) * ((w + 1) / 2); }

inline void check_small_regions_masks(const at::Tensor& masks) {
  TORCH_CHECK_VALUE(masks.dim() == 3, "masks must have shape (N, H, W), got ", masks.sizes());
  TORCH_CHECK_TYPE(masks.scalar_type() == at::kBool, "masks must be a bool tensor, got ", masks.scalar_type());
  TORCH_CHECK_VALUE(codes_per_mask(masks.size(1), masks.size(2)) < (int64_t{1} << 31) - 1,
                    "masks of ", masks.size(1), "x", masks.size(2), " pixels are too large for int32 component ids");
}

}  // namespace litesam
