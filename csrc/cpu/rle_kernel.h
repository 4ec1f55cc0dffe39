#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

namespace litesam {
// SAM's uncompressed RLE of each mask (column-major, starting with the 0-run): returns
// (counts of all masks concatenated, int64; count-list length per mask, int64 (N,)).
std::tuple<at::Tensor, at::Tensor> mask_to_rle_cpu(const at::Tensor& masks, int64_t width);
}  // namespace litesam
