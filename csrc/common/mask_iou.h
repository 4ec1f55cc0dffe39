#pragma once
// Mask IoU on bit-packed masks (layout: litesam_kernels/ops/bitmask.py), shared by the CPU and CUDA
// mask-NMS kernels so that every backend decides every pair with the same arithmetic.
// Boxes are SAM's: int64 (cast to int32 here) inclusive XYXY pixel indices that enclose the mask.
#include <cstdint>

#include "common/host_device.h"

namespace litesam {

constexpr int kMaskBitsPerWord = 32;

// The rows [y0, y1] and words [k0, k1] (inclusive) that can hold common pixels of two masks with boxes
// a and b; false when the boxes do not overlap (the masks then share no pixel).
struct PairWindow {
  int32_t y0, y1, k0, k1;
};

LITESAM_HD bool pair_window(const int32_t* a, const int32_t* b, PairWindow* w) {
  const int32_t x0 = a[0] > b[0] ? a[0] : b[0];
  const int32_t x1 = a[2] < b[2] ? a[2] : b[2];
  const int32_t y0 = a[1] > b[1] ? a[1] : b[1];
  const int32_t y1 = a[3] < b[3] ? a[3] : b[3];
  if (x0 > x1 || y0 > y1) return false;
  *w = PairWindow{y0, y1, x0 / kMaskBitsPerWord, x1 / kMaskBitsPerWord};
  return true;
}

// IoU as every backend (and the torch reference) computes it: the counts are exact integers, divided
// in double and rounded once to float. An empty union (two empty masks) has IoU 0, not NaN.
LITESAM_HD float iou_from_counts(int64_t inter, int64_t area_a, int64_t area_b) {
  const int64_t uni = area_a + area_b - inter;
  return uni > 0 ? static_cast<float>(static_cast<double>(inter) / static_cast<double>(uni)) : 0.0f;
}

// Serial intersection count of two packed masks (row stride `words` int32 words) within a window.
inline int64_t window_intersection(const int32_t* a, const int32_t* b, int64_t words, const PairWindow& w) {
  int64_t count = 0;
  for (int64_t y = w.y0; y <= w.y1; ++y) {
    const uint32_t* ra = reinterpret_cast<const uint32_t*>(a + y * words);
    const uint32_t* rb = reinterpret_cast<const uint32_t*>(b + y * words);
    for (int64_t k = w.k0; k <= w.k1; ++k) count += popcount32(ra[k] & rb[k]);
  }
  return count;
}

}  // namespace litesam
