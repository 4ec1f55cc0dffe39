#pragma once
// Shared by the CPU and CUDA connected-components kernels: input checks, the block-raster code, the
// union decisions of one pixel and SAM1's output rule, so both backends run the same per-pixel logic.
//
// code(y, x) = 4 * ((y / 2) * ceil(W / 2) + x / 2) + 2 * (y % 2) + (x % 2). Union-find roots are the
// smallest code of a component, so root order is OpenCV's label order (its 8-connected labelling works
// on 2x2 blocks in raster order, and an 8-connected 2x2 block never holds two components).
#include <ATen/core/Tensor.h>

#include "common/host_device.h"

namespace litesam {

LITESAM_HD int32_t block_code(int32_t y, int32_t x, int32_t half_w) {
  return 4 * ((y >> 1) * half_w + (x >> 1)) + 2 * (y & 1) + (x & 1);
}

LITESAM_HD int64_t codes_per_mask(int64_t h, int64_t w) { return 4 * ((h + 1) / 2) * ((w + 1) / 2); }

// The unions a working pixel needs with its scan neighbours (N, W, NW, NE; each flag: inside the mask
// and working). 8-connectivity, the SAUF decision tree: N touches the other three and W touches NW, so
// at most two unions are needed. Offsets (dy, dx) of the neighbours to unite with.
struct ScanUnions {
  int count;
  int dy[2], dx[2];
};

LITESAM_HD ScanUnions scan_unions(bool north, bool west, bool north_west, bool north_east) {
  ScanUnions unions{0, {0, 0}, {0, 0}};
  auto add = [&unions](int dy, int dx) {
    unions.dy[unions.count] = dy;
    unions.dx[unions.count] = dx;
    ++unions.count;
  };
  if (north) {
    add(-1, 0);
    return unions;
  }
  if (west) {
    add(0, -1);
  } else if (north_west) {
    add(-1, -1);
  }
  if (north_east) add(-1, 1);
  return unions;
}

// The largest component of a mask as one integer, so that max() (atomicMax on the device) picks the
// largest area and, among equal areas, the smallest root code (OpenCV's first label).
LITESAM_HD uint64_t largest_key(int64_t area, int32_t root) {
  return (static_cast<uint64_t>(area) << 32) | (0xFFFFFFFFull - static_cast<uint32_t>(root));
}
LITESAM_HD int32_t largest_root(uint64_t key) { return static_cast<int32_t>(0xFFFFFFFFull - (key & 0xFFFFFFFFull)); }

// SAM1's remove_small_regions for one pixel (ops/small_regions.py): `working` whether the pixel is in the
// working image (mask, or ~mask for holes), `small` whether its component is, `largest` whether its
// component is the mask's largest; any_small / any_large over the mask's components.
LITESAM_HD bool region_output(bool mask, bool working, bool small, bool largest, bool holes, bool any_small,
                              bool any_large) {
  if (!any_small) return mask;  // unchanged
  if (holes) return mask || small;
  return working && (any_large ? !small : largest);
}

inline void check_small_regions_masks(const at::Tensor& masks) {
  TORCH_CHECK_VALUE(masks.dim() == 3, "masks must have shape (N, H, W), got ", masks.sizes());
  TORCH_CHECK_TYPE(masks.scalar_type() == at::kBool, "masks must be a bool tensor, got ", masks.scalar_type());
  TORCH_CHECK_VALUE(codes_per_mask(masks.size(1), masks.size(2)) < (int64_t{1} << 31) - 1,
                    "masks of ", masks.size(1), "x", masks.size(2), " pixels are too large for int32 component ids");
}

}  // namespace litesam
