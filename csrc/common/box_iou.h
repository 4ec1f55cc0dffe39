#pragma once
// IoU test shared by the CPU and CUDA NMS kernels, so both decide every pair with the same arithmetic.
// Products are explicitly rounded on the device: a fused multiply-add in `area_a + area_b - w * h`
// would change the last bit of the IoU and, at the threshold, the keep list.
#include <cmath>

#include "common/host_device.h"

namespace litesam {

LITESAM_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

LITESAM_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

template <typename T>
LITESAM_HD T box_area(const T* box) {
  return mul_rn(box[2] - box[0], box[3] - box[1]);
}

// True when IoU(a, b) > threshold, computed as torchvision does: inter / (area_a + area_b - inter),
// compared in double. A pair with no positive intersection never suppresses (IoU <= 0, or NaN for
// degenerate pairs); NaN coordinates propagate to a NaN IoU, which never suppresses either.
template <typename T>
LITESAM_HD bool iou_exceeds(const T* a, T area_a, const T* b, T area_b, double threshold) {
  const T left = a[0] > b[0] ? a[0] : b[0];
  const T top = a[1] > b[1] ? a[1] : b[1];
  const T right = a[2] < b[2] ? a[2] : b[2];
  const T bottom = a[3] < b[3] ? a[3] : b[3];
  const T width = right - left;
  const T height = bottom - top;
  if (!(width > T(0)) || !(height > T(0))) {
    return false;
  }
  const T inter = mul_rn(width, height);
  const T iou = inter / ((area_a + area_b) - inter);
  return static_cast<double>(iou) > threshold;
}

}  // namespace litesam
