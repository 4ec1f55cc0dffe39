// Connected components (8-connectivity) of a mask stack on the device: Playne & Hawick's union-find
// with atomicMin, in block-raster code space so every root is its component's smallest code (OpenCV's
// label order). remove_small_regions then needs, per mask, only flags and an atomicMax over
// (area, -code): no host synchronisation anywhere.
#include "cuda/small_regions_kernel.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "common/small_regions_common.h"

namespace litesam {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 * 16 ? (blocks > 0 ? blocks : 1) : 65535 * 16);
}

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

struct Geometry {
  int64_t n, h, w, codes;
  int32_t half_w;
};

__device__ __forceinline__ bool working_at(const bool* masks, const Geometry& g, int64_t i, int64_t y, int64_t x,
                                           bool invert) {
  return masks[(i * g.h + y) * g.w + x] != invert;
}

__global__ void init_kernel(const bool* __restrict__ masks, Geometry g, bool invert, int32_t* __restrict__ parent) {
  const int64_t total = g.n * g.h * g.w;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = p / (g.h * g.w), y = (p / g.w) % g.h, x = p % g.w;
    const int32_t c = block_code(static_cast<int32_t>(y), static_cast<int32_t>(x), g.half_w);
    parent[i * g.codes + c] = masks[p] != invert ? c : -1;
  }
}

__global__ void merge_kernel(const bool* __restrict__ masks, Geometry g, bool invert, int32_t* parent) {
  const int64_t total = g.n * g.h * g.w;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (masks[p] == invert) continue;
    const int64_t i = p / (g.h * g.w), y = (p / g.w) % g.h, x = p % g.w;
    int32_t* own = parent + i * g.codes;
    const int32_t c = block_code(static_cast<int32_t>(y), static_cast<int32_t>(x), g.half_w);
    // Scan neighbours W, NW, N, NE: N touches the other three and W touches NW (8-connectivity), so at
    // most two unions are needed.
    auto code_at = [&](int64_t ny, int64_t nx) {
      return block_code(static_cast<int32_t>(ny), static_cast<int32_t>(nx), g.half_w);
    };
    const bool has_up = y > 0;
    if (has_up && working_at(masks, g, i, y - 1, x, invert)) {
      unite(own, c, code_at(y - 1, x));
      continue;
    }
    if (x > 0 && working_at(masks, g, i, y, x - 1, invert)) unite(own, c, code_at(y, x - 1));
    else if (has_up && x > 0 && working_at(masks, g, i, y - 1, x - 1, invert)) unite(own, c, code_at(y - 1, x - 1));
    if (has_up && x + 1 < g.w && working_at(masks, g, i, y - 1, x + 1, invert)) unite(own, c, code_at(y - 1, x + 1));
  }
}

// Flatten to roots and count each root's pixels.
__global__ void compress_kernel(Geometry g, int32_t* parent, int32_t* __restrict__ area) {
  const int64_t total = g.n * g.codes;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < total;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (parent[q] < 0) continue;
    const int64_t i = q / g.codes;
    const int32_t root = find_root(parent + i * g.codes, static_cast<int32_t>(q % g.codes));
    parent[q] = root;
    atomicAdd(area + i * g.codes + root, 1);
  }
}

// Per mask: any small component, any large one, and the largest (ties: smallest code) as
// (area << 32) | ~code, so atomicMax picks it.
__global__ void stats_kernel(Geometry g, const int32_t* __restrict__ parent, const int32_t* __restrict__ area,
                             double area_thresh, int32_t* __restrict__ any_small, int32_t* __restrict__ any_large,
                             unsigned long long* __restrict__ largest) {
  const int64_t total = g.n * g.codes;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < total;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = q / g.codes;
    const int32_t c = static_cast<int32_t>(q % g.codes);
    if (parent[q] != c) continue;
    const int32_t a = area[q];
    if (static_cast<double>(a) < area_thresh) any_small[i] = 1; else any_large[i] = 1;
    const unsigned long long key = (static_cast<unsigned long long>(a) << 32) | (0xFFFFFFFFull - static_cast<uint32_t>(c));
    atomicMax(largest + i, key);
  }
}

__global__ void output_kernel(const bool* __restrict__ masks, Geometry g, bool holes, double area_thresh,
                              const int32_t* __restrict__ parent, const int32_t* __restrict__ area,
                              const int32_t* __restrict__ any_small, const int32_t* __restrict__ any_large,
                              const unsigned long long* __restrict__ largest, bool* __restrict__ out,
                              bool* __restrict__ changed) {
  const int64_t total = g.n * g.h * g.w;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = p / (g.h * g.w), y = (p / g.w) % g.h, x = p % g.w;
    const bool small_exists = any_small[i] != 0;
    if (y == 0 && x == 0) changed[i] = small_exists;
    if (!small_exists) { out[p] = masks[p]; continue; }
    const int32_t root = parent[i * g.codes + block_code(static_cast<int32_t>(y), static_cast<int32_t>(x), g.half_w)];
    const bool small = root >= 0 && static_cast<double>(area[i * g.codes + root]) < area_thresh;
    if (holes) {
      out[p] = masks[p] || small;
    } else if (any_large[i]) {
      out[p] = root >= 0 && !small;
    } else {
      const int32_t best = static_cast<int32_t>(0xFFFFFFFFull - (largest[i] & 0xFFFFFFFFull));
      out[p] = root >= 0 && root == best;
    }
  }
}

__global__ void labels_kernel(Geometry g, const int32_t* __restrict__ parent, int32_t* __restrict__ labels) {
  const int64_t total = g.n * g.h * g.w;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = p / (g.h * g.w), y = (p / g.w) % g.h, x = p % g.w;
    const int32_t root = parent[i * g.codes + block_code(static_cast<int32_t>(y), static_cast<int32_t>(x), g.half_w)];
    labels[p] = root < 0 ? 0 : root + 1;
  }
}

Geometry geometry_of(const at::Tensor& masks) {
  Geometry g;
  g.n = masks.size(0);
  g.h = masks.size(1);
  g.w = masks.size(2);
  g.codes = codes_per_mask(g.h, g.w);
  g.half_w = static_cast<int32_t>((g.w + 1) / 2);
  return g;
}

// parent (N * codes) and per-root areas (N * codes) of the working pixels.
std::tuple<at::Tensor, at::Tensor> label(const at::Tensor& masks, const Geometry& g, bool invert, cudaStream_t stream) {
  at::Tensor parent = at::empty({g.n * g.codes}, masks.options().dtype(at::kInt));
  at::Tensor area = at::zeros({g.n * g.codes}, masks.options().dtype(at::kInt));
  // Codes of the padding row/column (odd H or W) have no pixel: mark them empty first.
  C10_CUDA_CHECK(cudaMemsetAsync(parent.data_ptr<int32_t>(), 0xFF, parent.numel() * sizeof(int32_t), stream));
  const int64_t pixels = g.n * g.h * g.w;
  init_kernel<<<blocks_for(pixels), kThreads, 0, stream>>>(masks.const_data_ptr<bool>(), g, invert, parent.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  merge_kernel<<<blocks_for(pixels), kThreads, 0, stream>>>(masks.const_data_ptr<bool>(), g, invert, parent.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  compress_kernel<<<blocks_for(g.n * g.codes), kThreads, 0, stream>>>(g, parent.data_ptr<int32_t>(), area.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {parent, area};
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
  const Geometry g = geometry_of(masks);
  auto [parent, area] = label(masks, g, false, stream);
  labels_kernel<<<blocks_for(masks.numel()), kThreads, 0, stream>>>(g, parent.const_data_ptr<int32_t>(), labels.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return labels;
}

std::tuple<at::Tensor, at::Tensor> remove_small_regions_cuda(const at::Tensor& masks_in, double area_thresh, bool holes) {
  check_small_regions_masks(masks_in);
  TORCH_CHECK_VALUE(masks_in.is_cuda(), "masks must be a CUDA tensor for the CUDA kernel, got ", masks_in.device());
  TORCH_CHECK_VALUE(area_thresh >= 0, "area_thresh must be >= 0, got ", area_thresh);
  c10::cuda::CUDAGuard device_guard(masks_in.device());
  const at::Tensor masks = masks_in.contiguous();
  const Geometry g = geometry_of(masks);
  at::Tensor out = at::empty(masks.sizes(), masks.options());
  at::Tensor changed = at::empty({g.n}, masks.options());
  if (masks.numel() == 0) return {out, changed.fill_(false)};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto [parent, area] = label(masks, g, holes, stream);
  at::Tensor flags = at::zeros({2, g.n}, masks.options().dtype(at::kInt));
  at::Tensor largest = at::zeros({g.n}, masks.options().dtype(at::kLong));
  auto* largest_ptr = reinterpret_cast<unsigned long long*>(largest.data_ptr<int64_t>());
  int32_t* any_small = flags.data_ptr<int32_t>();
  int32_t* any_large = any_small + g.n;
  stats_kernel<<<blocks_for(g.n * g.codes), kThreads, 0, stream>>>(g, parent.const_data_ptr<int32_t>(),
      area.const_data_ptr<int32_t>(), area_thresh, any_small, any_large, largest_ptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  output_kernel<<<blocks_for(masks.numel()), kThreads, 0, stream>>>(masks.const_data_ptr<bool>(), g, holes, area_thresh,
      parent.const_data_ptr<int32_t>(), area.const_data_ptr<int32_t>(), any_small, any_large, largest_ptr,
      out.data_ptr<bool>(), changed.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, changed};
}

}  // namespace litesam
