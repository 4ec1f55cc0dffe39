#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

namespace litesam {
// Same contract as mask_to_rle_cpu. Everything stays on the device; one host read of two sizes.
std::tuple<at::Tensor, at::Tensor> mask_to_rle_cuda(const at::Tensor& masks, int64_t width);
}  // namespace litesam
