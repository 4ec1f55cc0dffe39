#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

namespace litesam {
// Same contracts as the CPU kernels; no host synchronisation.
at::Tensor connected_components_cuda(const at::Tensor& masks);
std::tuple<at::Tensor, at::Tensor> remove_small_regions_cuda(const at::Tensor& masks, double area_thresh, bool holes);
}  // namespace litesam
