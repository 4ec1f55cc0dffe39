// Connected components (8-connectivity) of a mask stack on the device: Playne & Hawick's union-find
// with atomicMin, in block-raster code space so every root is its component's smallest code (OpenCV's
// label order). remove_small_regions then needs, per mask, only flags and an atomicMax over
// (area, -code): no host synchronisation anywhere.
//
// Launch (plan "small_regions"): a 3-D grid (column tiles, row tiles, masks of a chunk) of 32 x 8
// threads, one pixel each, so a thread finds its pixel without any division and indexes its mask with
// int32 offsets from a per-mask base pointer. Each warp holds 32 consecutive pixels of one row, so the
// per-root area counts are warp-aggregated (__match_any_sync: one atomicAdd per distinct root in the
// warp, not one per pixel; a large background component in holes mode would otherwise serialise
// every pixel on one address). The union-find scratch (parent + area, int32 per code: 8 bytes per
// pixel) exists for one chunk of masks at a time, sized to the scratch budget (1 GiB by default).
#include "cuda/small_regions_kernel.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "common/launch_plans.h"
#include "common/small_regions_common.h"
#include "cuda/launch_limits.h"

namespace litesam {
namespace {

constexpr unsigned kFullWarp = 0xffffffffu;

__device__ __forceinline__ int32_t find_root(const int32_t* parent, int32_t c) {
  // volatile: other threads lower parent entries while we walk.
  const volatile int32_t* p = parent;
  int32_t next = p[c];
  while (next != c) {
    c = next;
    next = p[c];
  }
  return c;
}

__device__ void unite(int32_t* parent, int32_t a, int32_t b) {
  bool done = false;
  while (!done) {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a < b) {
      const int32_t old = atomicMin(parent + b, a);
      done = old == b;
      b = old;
    } else if (b < a) {
      const int32_t old = atomicMin(parent + a, b);
      done = old == a;
      a = old;
    } else {
      done = true;
    }
  }
}

struct RegionGeometry {
  int32_t h, w, half_w, codes;
  int64_t pixels;  // h * w
};

// The pixel of this thread, in the mask `chunk_begin + blockIdx.z`, and its chunk-local scratch.
struct PixelSite {
  int32_t y, x;
  bool inside;
  int64_t mask;     // absolute mask index
  int64_t slot;     // mask index within the chunk (scratch)
  int32_t offset;   // y * w + x within the mask (int32: the masks are checked to fit)
};

__device__ __forceinline__ PixelSite site_of(const RegionGeometry& g, int64_t chunk_begin) {
  PixelSite s;
  s.x = static_cast<int32_t>(blockIdx.x) * kRegionBlockX + static_cast<int32_t>(threadIdx.x);
  s.y = static_cast<int32_t>(blockIdx.y) * kRegionBlockY + static_cast<int32_t>(threadIdx.y);
  s.inside = s.x < g.w && s.y < g.h;
  s.slot = blockIdx.z;
  s.mask = chunk_begin + s.slot;
  s.offset = s.y * g.w + s.x;
  return s;
}

__global__ void __launch_bounds__(kRegionBlockX * kRegionBlockY) init_kernel(const bool* __restrict__ masks, RegionGeometry g,
                                                                          int64_t chunk_begin, bool invert,
                                                                          int32_t* __restrict__ parent) {
  const PixelSite s = site_of(g, chunk_begin);
  if (!s.inside) return;
  const bool* mask = masks + s.mask * g.pixels;
  if (mask[s.offset] != invert) {
    const int32_t c = block_code(s.y, s.x, g.half_w);
    parent[s.slot * g.codes + c] = c;  // the rest stays -1 (memset)
  }
}

__global__ void __launch_bounds__(kRegionBlockX * kRegionBlockY) merge_kernel(const bool* __restrict__ masks, RegionGeometry g,
                                                                           int64_t chunk_begin, bool invert, int32_t* parent) {
  const PixelSite s = site_of(g, chunk_begin);
  if (!s.inside) return;
  const bool* mask = masks + s.mask * g.pixels;
  auto on = [&](int32_t dy, int32_t dx) { return mask[s.offset + dy * g.w + dx] != invert; };
  if (!on(0, 0)) return;
  const bool has_up = s.y > 0;
  const ScanUnions unions = scan_unions(has_up && on(-1, 0), s.x > 0 && on(0, -1), has_up && s.x > 0 && on(-1, -1),
                                        has_up && s.x + 1 < g.w && on(-1, 1));
  int32_t* own = parent + s.slot * g.codes;
  const int32_t c = block_code(s.y, s.x, g.half_w);
  for (int k = 0; k < unions.count; ++k) {
    unite(own, c, block_code(s.y + unions.dy[k], s.x + unions.dx[k], g.half_w));
  }
}

// Flatten every working pixel to its root and count each root's pixels, one atomic per root per warp.
__global__ void __launch_bounds__(kRegionBlockX * kRegionBlockY) compress_kernel(RegionGeometry g, int64_t chunk_begin,
                                                                              int32_t* parent, int32_t* __restrict__ area) {
  const PixelSite s = site_of(g, chunk_begin);
  int32_t* own = parent + s.slot * g.codes;
  const int32_t c = block_code(s.y, s.x, g.half_w);
  int32_t root = -1;
  if (s.inside && own[c] >= 0) {
    root = find_root(own, c);
    own[c] = root;
  }
  // Whole warps reach this (no early return above): lanes of equal root elect their lowest lane.
  const unsigned peers = __match_any_sync(kFullWarp, root);
  if (root >= 0 && (threadIdx.x & 31) == static_cast<unsigned>(__ffs(peers) - 1)) {
    atomicAdd(area + s.slot * g.codes + root, __popc(peers));
  }
}

// Per mask: any small component, any large one, and the largest (largest_key) by atomicMax.
__global__ void __launch_bounds__(kRegionBlockX * kRegionBlockY) stats_kernel(
    RegionGeometry g, int64_t chunk_begin, const int32_t* __restrict__ parent, const int32_t* __restrict__ area,
    double area_thresh, int32_t* __restrict__ any_small, int32_t* __restrict__ any_large,
    unsigned long long* __restrict__ largest) {
  const PixelSite s = site_of(g, chunk_begin);
  if (!s.inside) return;
  const int32_t c = block_code(s.y, s.x, g.half_w);
  const int64_t scratch = s.slot * g.codes;
  if (parent[scratch + c] != c) return;  // roots only (a root's parent is itself)
  const int32_t a = area[scratch + c];
  if (static_cast<double>(a) < area_thresh) any_small[s.mask] = 1; else any_large[s.mask] = 1;
  atomicMax(largest + s.mask, static_cast<unsigned long long>(largest_key(a, c)));
}

__global__ void __launch_bounds__(kRegionBlockX * kRegionBlockY) output_kernel(
    const bool* __restrict__ masks, RegionGeometry g, int64_t chunk_begin, bool holes, double area_thresh,
    const int32_t* __restrict__ parent, const int32_t* __restrict__ area, const int32_t* __restrict__ any_small,
    const int32_t* __restrict__ any_large, const unsigned long long* __restrict__ largest, bool* __restrict__ out,
    bool* __restrict__ changed) {
  const PixelSite s = site_of(g, chunk_begin);
  if (!s.inside) return;
  const bool small_exists = any_small[s.mask] != 0;
  if (s.offset == 0) changed[s.mask] = small_exists;
  const int64_t scratch = s.slot * g.codes;
  const int32_t root = parent[scratch + block_code(s.y, s.x, g.half_w)];
  const bool small = root >= 0 && static_cast<double>(area[scratch + root]) < area_thresh;
  const bool mask = masks[s.mask * g.pixels + s.offset];
  out[s.mask * g.pixels + s.offset] = region_output(mask, root >= 0, small, root == largest_root(largest[s.mask]),
                                                    holes, small_exists, any_large[s.mask] != 0);
}

__global__ void __launch_bounds__(kRegionBlockX * kRegionBlockY) labels_kernel(RegionGeometry g, int64_t chunk_begin,
                                                                            const int32_t* __restrict__ parent,
                                                                            int32_t* __restrict__ labels) {
  const PixelSite s = site_of(g, chunk_begin);
  if (!s.inside) return;
  const int32_t root = parent[s.slot * g.codes + block_code(s.y, s.x, g.half_w)];
  labels[s.mask * g.pixels + s.offset] = root < 0 ? 0 : root + 1;
}

RegionGeometry geometry_of(const at::Tensor& masks) {
  const int64_t h = masks.size(1), w = masks.size(2);
  return RegionGeometry{static_cast<int32_t>(h), static_cast<int32_t>(w), static_cast<int32_t>((w + 1) / 2),
                        static_cast<int32_t>(codes_per_mask(h, w)), h * w};
}

// Labels every chunk of masks in turn: after `label` the chunk's parent (roots) and areas are final and
// `use(chunk_begin, grid, parent, area)` consumes them before the next chunk reuses the scratch.
template <typename Use>
void label_in_chunks(const at::Tensor& masks, const RegionGeometry& g, bool invert, cudaStream_t stream, Use use) {
  const int64_t n = masks.size(0);
  const SmallRegionsPlan plan = plan_small_regions(n, g.h, g.w, device_launch_limits(masks.get_device()));
  at::Tensor parent = at::empty({plan.chunk_masks * g.codes}, masks.options().dtype(at::kInt));
  at::Tensor area = at::empty({plan.chunk_masks * g.codes}, masks.options().dtype(at::kInt));
  const dim3 block(kRegionBlockX, kRegionBlockY);
  for (int64_t begin = 0; begin < n; begin += plan.chunk_masks) {
    const int64_t count = std::min(plan.chunk_masks, n - begin);
    const size_t bytes = static_cast<size_t>(count * g.codes) * sizeof(int32_t);
    // Codes of the padding row/column (odd H or W) and of non-working pixels stay -1.
    C10_CUDA_CHECK(cudaMemsetAsync(parent.data_ptr<int32_t>(), 0xFF, bytes, stream));
    C10_CUDA_CHECK(cudaMemsetAsync(area.data_ptr<int32_t>(), 0, bytes, stream));
    const dim3 grid(static_cast<unsigned>(plan.grid_x), static_cast<unsigned>(plan.grid_y), static_cast<unsigned>(count));
    init_kernel<<<grid, block, 0, stream>>>(masks.const_data_ptr<bool>(), g, begin, invert, parent.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    merge_kernel<<<grid, block, 0, stream>>>(masks.const_data_ptr<bool>(), g, begin, invert, parent.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    compress_kernel<<<grid, block, 0, stream>>>(g, begin, parent.data_ptr<int32_t>(), area.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    use(begin, grid, parent, area);
  }
}

}  // namespace

at::Tensor connected_components_cuda(const at::Tensor& masks_in) {
  check_small_regions_masks(masks_in);
  TORCH_CHECK_VALUE(masks_in.is_cuda(), "masks must be a CUDA tensor for the CUDA kernel, got ", masks_in.device());
  c10::cuda::CUDAGuard device_guard(masks_in.device());
  const at::Tensor masks = masks_in.contiguous();
  at::Tensor labels = at::empty(masks.sizes(), masks.options().dtype(at::kInt));
  if (masks.numel() == 0) return labels;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const RegionGeometry g = geometry_of(masks);
  label_in_chunks(masks, g, /*invert=*/false, stream,
                  [&](int64_t begin, dim3 grid, const at::Tensor& parent, const at::Tensor&) {
                    labels_kernel<<<grid, dim3(kRegionBlockX, kRegionBlockY), 0, stream>>>(
                        g, begin, parent.const_data_ptr<int32_t>(), labels.data_ptr<int32_t>());
                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                  });
  return labels;
}

std::tuple<at::Tensor, at::Tensor> remove_small_regions_cuda(const at::Tensor& masks_in, double area_thresh, bool holes) {
  check_small_regions_masks(masks_in);
  TORCH_CHECK_VALUE(masks_in.is_cuda(), "masks must be a CUDA tensor for the CUDA kernel, got ", masks_in.device());
  TORCH_CHECK_VALUE(area_thresh >= 0, "area_thresh must be >= 0, got ", area_thresh);
  c10::cuda::CUDAGuard device_guard(masks_in.device());
  const at::Tensor masks = masks_in.contiguous();
  const RegionGeometry g = geometry_of(masks);
  const int64_t n = masks.size(0);
  at::Tensor out = at::empty(masks.sizes(), masks.options());
  at::Tensor changed = at::empty({n}, masks.options());
  if (masks.numel() == 0) return {out, changed.fill_(false)};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor flags = at::zeros({2, n}, masks.options().dtype(at::kInt));
  at::Tensor largest = at::zeros({n}, masks.options().dtype(at::kLong));
  auto* largest_ptr = reinterpret_cast<unsigned long long*>(largest.data_ptr<int64_t>());
  int32_t* any_small = flags.data_ptr<int32_t>();
  int32_t* any_large = any_small + n;
  const dim3 block(kRegionBlockX, kRegionBlockY);
  label_in_chunks(masks, g, /*invert=*/holes, stream,
                  [&](int64_t begin, dim3 grid, const at::Tensor& parent, const at::Tensor& area) {
                    stats_kernel<<<grid, block, 0, stream>>>(g, begin, parent.const_data_ptr<int32_t>(),
                                                             area.const_data_ptr<int32_t>(), area_thresh, any_small,
                                                             any_large, largest_ptr);
                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                    output_kernel<<<grid, block, 0, stream>>>(masks.const_data_ptr<bool>(), g, begin, holes, area_thresh,
                                                              parent.const_data_ptr<int32_t>(), area.const_data_ptr<int32_t>(),
                                                              any_small, any_large, largest_ptr, out.data_ptr<bool>(),
                                                              changed.data_ptr<bool>());
                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                  });
  return {out, changed};
}

}  // namespace litesam
