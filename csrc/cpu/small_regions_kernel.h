#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

namespace litesam {
// masks: bool (N, H, W). Component ids (int32, 0 = background), see ops/small_regions.py.
at::Tensor connected_components_cpu(const at::Tensor& masks);
// SAM1's remove_small_regions for every mask: (new masks bool (N, H, W), changed bool (N,)).
std::tuple<at::Tensor, at::Tensor> remove_small_regions_cpu(const at::Tensor& masks, double area_thresh, bool holes);
}  // namespace litesam
