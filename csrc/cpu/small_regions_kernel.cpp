// Union-find in block-raster code space, one mask per task (masks are independent).
#include "cpu/small_regions_kernel.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <vector>

#include "common/small_regions_common.h"

namespace litesam {
namespace {

int32_t find_root(std::vector<int32_t>& parent, int32_t c) {
  while (parent[c] != c) {
    parent[c] = parent[parent[c]];  // path halving
    c = parent[c];
  }
  return c;
}

// parent[code] = root code (smallest code of the component) for working pixels, -1 elsewhere.
void label_mask(const bool* working, int64_t h, int64_t w, bool invert, std::vector<int32_t>& parent) {
  const int32_t half_w = static_cast<int32_t>((w + 1) / 2);
  parent.assign(codes_per_mask(h, w), -1);
  auto on = [&](int64_t y, int64_t x) { return working[y * w + x] != invert; };
  for (int32_t y = 0; y < h; ++y) {
    for (int32_t x = 0; x < w; ++x) {
      if (!on(y, x)) continue;
      const int32_t c = block_code(y, x, half_w);
      parent[c] = c;
      const bool has_up = y > 0;
      const ScanUnions unions = scan_unions(has_up && on(y - 1, x), x > 0 && on(y, x - 1),
                                            has_up && x > 0 && on(y - 1, x - 1), has_up && x + 1 < w && on(y - 1, x + 1));
      for (int k = 0; k < unions.count; ++k) {
        const int32_t a = find_root(parent, c);
        const int32_t b = find_root(parent, block_code(y + unions.dy[k], x + unions.dx[k], half_w));
        if (a < b) parent[b] = a; else if (b < a) parent[a] = b;
      }
    }
  }
  for (size_t c = 0; c < parent.size(); ++c)
    if (parent[c] >= 0) parent[c] = find_root(parent, static_cast<int32_t>(c));
}

}  // namespace

at::Tensor connected_components_cpu(const at::Tensor& masks_in) {
  check_small_regions_masks(masks_in);
  TORCH_CHECK_VALUE(masks_in.device().is_cpu(), "masks must be a CPU tensor for the CPU kernel, got ", masks_in.device());
  const at::Tensor masks = masks_in.contiguous();
  const int64_t n = masks.size(0), h = masks.size(1), w = masks.size(2);
  at::Tensor labels = at::empty(masks.sizes(), masks.options().dtype(at::kInt));
  const bool* in = masks.const_data_ptr<bool>();
  int32_t* out = labels.data_ptr<int32_t>();
  const int32_t half_w = static_cast<int32_t>((w + 1) / 2);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> parent;
    for (int64_t i = begin; i < end; ++i) {
      label_mask(in + i * h * w, h, w, false, parent);
      for (int32_t y = 0; y < h; ++y)
        for (int32_t x = 0; x < w; ++x) {
          const int32_t root = parent[block_code(y, x, half_w)];
          out[i * h * w + y * w + x] = root < 0 ? 0 : root + 1;
        }
    }
  });
  return labels;
}

std::tuple<at::Tensor, at::Tensor> remove_small_regions_cpu(const at::Tensor& masks_in, double area_thresh, bool holes) {
  check_small_regions_masks(masks_in);
  TORCH_CHECK_VALUE(masks_in.device().is_cpu(), "masks must be a CPU tensor for the CPU kernel, got ", masks_in.device());
  TORCH_CHECK_VALUE(area_thresh >= 0, "area_thresh must be >= 0, got ", area_thresh);
  const at::Tensor masks = masks_in.contiguous();
  const int64_t n = masks.size(0), h = masks.size(1), w = masks.size(2);
  at::Tensor result = at::empty(masks.sizes(), masks.options());
  at::Tensor changed = at::empty({n}, masks.options());
  const bool* in = masks.const_data_ptr<bool>();
  bool* out = result.data_ptr<bool>();
  bool* changed_out = changed.data_ptr<bool>();
  const int32_t half_w = static_cast<int32_t>((w + 1) / 2);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> parent;
    std::vector<int64_t> area;
    for (int64_t i = begin; i < end; ++i) {
      const bool* mask = in + i * h * w;
      bool* dst = out + i * h * w;
      label_mask(mask, h, w, holes, parent);
      area.assign(parent.size(), 0);
      for (size_t c = 0; c < parent.size(); ++c)
        if (parent[c] >= 0) ++area[parent[c]];
      bool any_small = false, any_large = false;
      uint64_t largest = 0;
      for (size_t c = 0; c < parent.size(); ++c) {
        if (parent[c] != static_cast<int32_t>(c)) continue;
        if (static_cast<double>(area[c]) < area_thresh) any_small = true; else any_large = true;
        largest = std::max(largest, largest_key(area[c], static_cast<int32_t>(c)));
      }
      changed_out[i] = any_small;
      const int32_t largest_code = largest_root(largest);
      for (int32_t y = 0; y < h; ++y)
        for (int32_t x = 0; x < w; ++x) {
          const int64_t p = static_cast<int64_t>(y) * w + x;
          const int32_t root = parent[block_code(y, x, half_w)];
          const bool small = root >= 0 && static_cast<double>(area[root]) < area_thresh;
          dst[p] = region_output(mask[p], root >= 0, small, root == largest_code, holes, any_small, any_large);
        }
    }
  });
  return {result, changed};
}

}  // namespace litesam
