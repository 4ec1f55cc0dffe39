// SAM/COCO uncompressed RLE on the device, column-major order, in four kernels and one host read:
//  1. one thread per column counts its changes (pixel p vs p + 1 in column-major order: the pixel below,
//     or for the last row the top of the next column); threads of a warp read one row: coalesced;
//  2. exclusive prefix sums (ATen) give each column's write offset; the host reads two sizes
//     (total changes, masks whose first pixel is set) to allocate the outputs: the only sync;
//  3. one thread per column writes its boundaries (p + 1) in order;
//  4. one thread per boundary writes its run length (boundary - previous boundary of the same mask)
//     at its place in the mask's count list; one thread per mask writes the last run. The leading
//     0-run of masks whose first pixel is set is the zero the output starts with.
#include "cuda/rle_kernel.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>

#include "common/rle_common.h"

namespace litesam {
namespace {

constexpr int kThreads = 256;

struct MaskView {
  const uint8_t* bools;
  const int32_t* words;
  int64_t height, width, row_len;

  __device__ const uint8_t* bools_of(int64_t i) const { return bools ? bools + i * height * row_len : nullptr; }
  __device__ const int32_t* words_of(int64_t i) const { return words ? words + i * height * row_len : nullptr; }
  // Whether pixel (y, x) differs from the next pixel in column-major order (false for the very last).
  __device__ bool change_after(const uint8_t* b, const int32_t* w, int64_t y, int64_t x) const {
    const bool last_row = y == height - 1;
    const int64_t next_y = last_row ? 0 : y + 1;
    const int64_t next_x = last_row ? x + 1 : x;
    if (next_x >= width) return false;
    return rle_pixel(b, w, row_len, y, x) != rle_pixel(b, w, row_len, next_y, next_x);
  }
};

__global__ void column_changes_kernel(MaskView view, int64_t* __restrict__ per_column) {
  const int64_t mask = blockIdx.y;
  const int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (x >= view.width) return;
  const uint8_t* b = view.bools_of(mask);
  const int32_t* w = view.words_of(mask);
  int64_t count = 0;
  for (int64_t y = 0; y < view.height; ++y) count += view.change_after(b, w, y, x);
  per_column[mask * view.width + x] = count;
}

__global__ void column_boundaries_kernel(MaskView view, const int64_t* __restrict__ offsets,
                                         int64_t* __restrict__ boundaries) {
  const int64_t mask = blockIdx.y;
  const int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (x >= view.width) return;
  const uint8_t* b = view.bools_of(mask);
  const int32_t* w = view.words_of(mask);
  int64_t slot = offsets[mask * view.width + x];
  for (int64_t y = 0; y < view.height; ++y) {
    if (view.change_after(b, w, y, x)) boundaries[slot++] = x * view.height + y + 1;
  }
}

__global__ void inner_runs_kernel(int64_t total_changes, int64_t n, const int64_t* __restrict__ boundaries,
                                  const int64_t* __restrict__ change_start, const int64_t* __restrict__ out_start,
                                  const int64_t* __restrict__ first, int64_t* __restrict__ counts) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= total_changes) return;
  // The owning mask: the last one whose first change is at or before j (change_start ascends).
  int64_t lo = 0, hi = n - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (change_start[mid] <= j) lo = mid; else hi = mid - 1;
  }
  const int64_t rank = j - change_start[lo];
  const int64_t previous = rank > 0 ? boundaries[j - 1] : 0;
  counts[out_start[lo] + first[lo] + rank] = boundaries[j] - previous;
}

__global__ void last_runs_kernel(int64_t n, int64_t pixels, const int64_t* __restrict__ boundaries,
                                 const int64_t* __restrict__ changes, const int64_t* __restrict__ change_start,
                                 const int64_t* __restrict__ out_start, const int64_t* __restrict__ first,
                                 int64_t* __restrict__ counts) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t last = changes[i] > 0 ? boundaries[change_start[i] + changes[i] - 1] : 0;
  counts[out_start[i] + first[i] + changes[i]] = pixels - last;
}

unsigned blocks_for(int64_t count) { return static_cast<unsigned>((count + kThreads - 1) / kThreads); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> mask_to_rle_cuda(const at::Tensor& masks, int64_t width) {
  check_rle_inputs(masks, width);
  TORCH_CHECK_VALUE(masks.is_cuda(), "masks must be a CUDA tensor for the CUDA kernel, got ", masks.device());
  c10::cuda::CUDAGuard device_guard(masks.device());
  const int64_t n = masks.size(0), height = masks.size(1);
  const auto long_options = masks.options().dtype(at::kLong);
  if (n == 0) return {at::empty({0}, long_options), at::empty({0}, long_options)};
  if (height * width == 0) return {at::zeros({n}, long_options), at::zeros({n}, long_options).add_(1)};
  TORCH_CHECK_VALUE(n <= 65535, "mask_to_rle's CUDA kernel takes at most 65535 masks per call, got ", n);

  const bool packed = masks.scalar_type() == at::kInt;
  MaskView view{packed ? nullptr : reinterpret_cast<const uint8_t*>(masks.const_data_ptr<bool>()),
                packed ? masks.const_data_ptr<int32_t>() : nullptr, height, width, masks.size(2)};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(blocks_for(width), static_cast<unsigned>(n));

  at::Tensor per_column = at::empty({n, width}, long_options);
  column_changes_kernel<<<grid, kThreads, 0, stream>>>(view, per_column.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor changes = per_column.sum(1);
  const at::Tensor flat = per_column.view({-1});
  const at::Tensor offsets = flat.cumsum(0).sub(flat).contiguous();
  at::Tensor corner = masks.select(1, 0).select(1, 0);
  const at::Tensor first = (packed ? corner.bitwise_and(1) : corner).to(at::kLong).contiguous();
  const at::Tensor sizes = at::stack({changes.sum(), first.sum()}).cpu();  // the one host read
  const int64_t total_changes = sizes[0].item<int64_t>();
  const int64_t leading = sizes[1].item<int64_t>();

  at::Tensor boundaries = at::empty({total_changes}, long_options);
  const at::Tensor lengths = first.add(changes).add(1);
  const at::Tensor out_start = lengths.cumsum(0).sub(lengths).contiguous();
  const at::Tensor change_start = changes.cumsum(0).sub(changes).contiguous();
  at::Tensor counts = at::zeros({total_changes + n + leading}, long_options);
  if (total_changes > 0) {
    column_boundaries_kernel<<<grid, kThreads, 0, stream>>>(view, offsets.data_ptr<int64_t>(),
                                                            boundaries.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    inner_runs_kernel<<<blocks_for(total_changes), kThreads, 0, stream>>>(
        total_changes, n, boundaries.data_ptr<int64_t>(), change_start.data_ptr<int64_t>(),
        out_start.data_ptr<int64_t>(), first.data_ptr<int64_t>(), counts.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor changes_c = changes.contiguous();
  last_runs_kernel<<<blocks_for(n), kThreads, 0, stream>>>(
      n, height * width, boundaries.data_ptr<int64_t>(), changes_c.data_ptr<int64_t>(),
      change_start.data_ptr<int64_t>(), out_start.data_ptr<int64_t>(), first.data_ptr<int64_t>(),
      counts.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {counts, lengths.contiguous()};
}

}  // namespace litesam
