// Mask IoU and mask NMS on bit-packed masks (int32 words along W, LSB first: ops/bitmask.py).
// One thread block per tile of 64 x 64 mask pairs:
//  1. the block tests the 4096 pairs' boxes (and, for NMS, order and group) and compacts the pairs whose
//     boxes overlap into a shared list; non-overlapping masks share no pixel, so they are never read;
//  2. each warp takes one listed pair at a time and counts popc(a & b) over the rows and words of the
//     two boxes' intersection only (a warp-wide sum), then IoU = inter / (area_a + area_b - inter).
// mask_iou writes the IoU; mask_nms sets bit c of word [row, col block] when the row mask suppresses the
// column mask (IoU > threshold), in the layout of the box-NMS bitmask, and reuses box NMS's greedy walk
// (nms_greedy_keep_cuda: one walker per group chain, N/64 serial steps at most, no host loop). The boxes
// come from the caller (post-processing has them); the tile stages its rows' and columns' group ids in
// shared memory once instead of reading them per pair. One host sync: the kept count.
#include "cuda/mask_nms_kernel.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "common/launch_plans.h"
#include "common/mask_iou.h"
#include "common/mask_nms_common.h"
#include "common/nms_common.h"
#include "cuda/launch_limits.h"
#include "cuda/nms_kernel.h"

namespace litesam {
namespace {

constexpr int kTile = kPairTile;  // = the NMS bitmask word width
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kAreaThreads = 256;

__device__ __forceinline__ int warp_sum(int value) {
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// Pixel count of each mask (mask `index[i]` when index is given), one block per mask.
__global__ void mask_area_kernel(const int32_t* __restrict__ packed, const int64_t* __restrict__ index,
                                 int64_t mask_words, int32_t* __restrict__ areas) {
  __shared__ int warp_counts[kAreaThreads / 32];
  const int64_t mask = index != nullptr ? index[blockIdx.x] : static_cast<int64_t>(blockIdx.x);
  const uint32_t* words = reinterpret_cast<const uint32_t*>(packed) + mask * mask_words;
  int count = 0;
  for (int64_t k = threadIdx.x; k < mask_words; k += kAreaThreads) count += __popc(words[k]);
  count = warp_sum(count);
  if ((threadIdx.x & 31) == 0) warp_counts[threadIdx.x >> 5] = count;
  __syncthreads();
  if (threadIdx.x < 32) {
    int total = threadIdx.x < kAreaThreads / 32 ? warp_counts[threadIdx.x] : 0;
    total = warp_sum(total);
    if (threadIdx.x == 0) areas[blockIdx.x] = total;
  }
}

// A set of masks as a tile sees them: packed words, optional indirection, int32 windows, areas.
struct MaskSet {
  const int32_t* packed;
  const int64_t* index;  // row i of windows/areas is mask index[i] of packed (nullptr: i)
  const int32_t* windows;
  const int32_t* areas;
  int64_t count;
};

// Steps 1 and 2 of the file comment for the tile (row_start.., col_start..); `wanted(r, c)` filters pairs
// before the box test, `emit(r, c, inter)` (lane 0 of a warp) receives each listed pair's intersection.
template <typename Wanted, typename Emit>
__device__ void tile_intersections(const MaskSet& rows_set, const MaskSet& cols_set, int64_t row_start,
                                   int64_t col_start, int64_t height, int64_t words, Wanted wanted, Emit emit) {
  __shared__ int32_t row_win[kTile * 4];
  __shared__ int32_t col_win[kTile * 4];
  __shared__ unsigned short pairs[kTile * kTile];
  __shared__ int pair_count;
  const int t = threadIdx.x;
  const int rows = static_cast<int>(rows_set.count - row_start < kTile ? rows_set.count - row_start : kTile);
  const int cols = static_cast<int>(cols_set.count - col_start < kTile ? cols_set.count - col_start : kTile);
  if (t < kTile * 4) {
    row_win[t] = t < rows * 4 ? rows_set.windows[row_start * 4 + t] : 0;
    col_win[t] = t < cols * 4 ? cols_set.windows[col_start * 4 + t] : 0;
  }
  if (t == 0) pair_count = 0;
  __syncthreads();

  const int lane = t & 31;
  for (int p = t; p < kTile * kTile; p += kThreads) {  // uniform trip count: whole warps ballot
    const int r = p / kTile, c = p % kTile;
    PairWindow w;
    const bool listed = r < rows && c < cols && wanted(r, c) && pair_window(row_win + 4 * r, col_win + 4 * c, &w);
    // One shared atomic per warp, not per pair.
    const unsigned ballot = __ballot_sync(0xffffffffu, listed);
    int base = 0;
    if (lane == 0 && ballot != 0) base = atomicAdd(&pair_count, __popc(ballot));
    base = __shfl_sync(0xffffffffu, base, 0);
    if (listed) pairs[base + __popc(ballot & ((1u << lane) - 1u))] = static_cast<unsigned short>(p);
  }
  __syncthreads();

  const int64_t mask_words = height * words;
  for (int q = t >> 5; q < pair_count; q += kWarps) {
    const int r = pairs[q] / kTile, c = pairs[q] % kTile;
    PairWindow w;
    pair_window(row_win + 4 * r, col_win + 4 * c, &w);
    const int64_t row_mask = rows_set.index != nullptr ? rows_set.index[row_start + r] : row_start + r;
    const int64_t col_mask = cols_set.index != nullptr ? cols_set.index[col_start + c] : col_start + c;
    const uint32_t* a = reinterpret_cast<const uint32_t*>(rows_set.packed) + row_mask * mask_words;
    const uint32_t* b = reinterpret_cast<const uint32_t*>(cols_set.packed) + col_mask * mask_words;
    // Lane positions walk the window row-major in strides of 32 without a division per step.
    const int span = w.k1 - w.k0 + 1;
    const int row_step = 32 / span, word_step = 32 % span;
    int y = w.y0 + lane / span, k = lane % span;
    int count = 0;
    while (y <= w.y1) {
      const int64_t offset = static_cast<int64_t>(y) * words + w.k0 + k;
      count += __popc(__ldg(a + offset) & __ldg(b + offset));
      k += word_step;
      y += row_step;
      if (k >= span) {
        k -= span;
        y += 1;
      }
    }
    count = warp_sum(count);
    if (lane == 0) emit(r, c, count);
  }
}

__global__ void mask_iou_kernel(MaskSet a, MaskSet b, int64_t height, int64_t words, bool upper,
                                float* __restrict__ iou) {
  const int64_t row_start = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t col_start = static_cast<int64_t>(blockIdx.x) * kTile;
  if (upper && col_start + kTile - 1 <= row_start) return;
  tile_intersections(
      a, b, row_start, col_start, height, words,
      [&](int r, int c) { return !upper || col_start + c > row_start + r; },
      [&](int r, int c, int inter) {
        iou[(row_start + r) * b.count + col_start + c] =
            iou_from_counts(inter, a.areas[row_start + r], b.areas[col_start + c]);
      });
}

__global__ void mask_nms_bitmask_kernel(MaskSet masks, const int64_t* __restrict__ groups,
                                        const int64_t* __restrict__ col_end, int64_t height, int64_t words,
                                        int64_t col_blocks, double threshold, unsigned long long* __restrict__ mask) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (col_block < row_block) return;
  if (col_end != nullptr && col_block >= col_end[row_block]) return;
  __shared__ unsigned long long bits[kTile];
  __shared__ int64_t row_groups[kTile];
  __shared__ int64_t col_groups[kTile];
  const int64_t row_start = row_block * kTile, col_start = col_block * kTile;
  if (threadIdx.x < kTile) {
    bits[threadIdx.x] = 0;
    if (groups != nullptr) {
      const int64_t row = row_start + threadIdx.x, col = col_start + threadIdx.x;
      row_groups[threadIdx.x] = row < masks.count ? groups[row] : -1;
      col_groups[threadIdx.x] = col < masks.count ? groups[col] : -1;
    }
  }
  // (tile_intersections syncs before anyone reads these)
  tile_intersections(
      masks, masks, row_start, col_start, height, words,
      [&](int r, int c) {
        return col_start + c > row_start + r && (groups == nullptr || row_groups[r] == col_groups[c]);
      },
      [&](int r, int c, int inter) {
        const float iou = iou_from_counts(inter, masks.areas[row_start + r], masks.areas[col_start + c]);
        // A native 32-bit shared atomic on the word's half (a 64-bit one is a compare-and-swap loop).
        if (static_cast<double>(iou) > threshold) atomicOr(reinterpret_cast<unsigned*>(bits) + 2 * r + (c >> 5), 1u << (c & 31));
      });
  __syncthreads();
  if (threadIdx.x < kTile && row_start + threadIdx.x < masks.count) {
    mask[(row_start + threadIdx.x) * col_blocks + col_block] = bits[threadIdx.x];
  }
}

// Launch checks (the area kernel's grid too) happen in plan_pair_tiles before any of this runs.
at::Tensor areas_of(const at::Tensor& packed, const at::Tensor& index) {
  const int64_t n = index.defined() ? index.size(0) : packed.size(0);
  at::Tensor areas = at::empty({n}, packed.options().dtype(at::kInt));
  if (n == 0) return areas;
  mask_area_kernel<<<static_cast<unsigned>(n), kAreaThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      packed.const_data_ptr<int32_t>(), index.defined() ? index.const_data_ptr<int64_t>() : nullptr,
      packed.size(1) * packed.size(2), areas.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return areas;
}

dim3 tile_grid(int64_t rows, int64_t cols, const at::Tensor& on) {
  const PairTilesPlan plan = plan_pair_tiles(rows, cols, device_launch_limits(on.get_device()));
  return dim3(static_cast<unsigned>(plan.grid_x), static_cast<unsigned>(plan.grid_y));
}

}  // namespace

at::Tensor mask_iou_cuda(const at::Tensor& packed_a, const at::Tensor& boxes_a, const at::Tensor& packed_b,
                         const at::Tensor& boxes_b, bool upper) {
  check_mask_iou_inputs(packed_a, boxes_a, packed_b, boxes_b);
  TORCH_CHECK_VALUE(packed_a.is_cuda(), "masks_a must be a CUDA tensor for the CUDA kernel, got ", packed_a.device());
  c10::cuda::CUDAGuard device_guard(packed_a.device());
  const int64_t na = packed_a.size(0), nb = packed_b.size(0);
  const int64_t height = packed_a.size(1), words = packed_a.size(2);
  at::Tensor iou = at::zeros({na, nb}, packed_a.options().dtype(at::kFloat));
  if (na == 0 || nb == 0) return iou;
  const dim3 grid = tile_grid(na, nb, packed_a);
  const at::Tensor a = packed_a.contiguous(), b = packed_b.contiguous();
  const at::Tensor win_a = window_boxes(boxes_a, at::Tensor(), height, words * kMaskBitsPerWord);
  const at::Tensor win_b = window_boxes(boxes_b, at::Tensor(), height, words * kMaskBitsPerWord);
  const at::Tensor area_a = areas_of(a, at::Tensor()), area_b = areas_of(b, at::Tensor());
  const MaskSet set_a{a.const_data_ptr<int32_t>(), nullptr, win_a.const_data_ptr<int32_t>(),
                      area_a.const_data_ptr<int32_t>(), na};
  const MaskSet set_b{b.const_data_ptr<int32_t>(), nullptr, win_b.const_data_ptr<int32_t>(),
                      area_b.const_data_ptr<int32_t>(), nb};
  mask_iou_kernel<<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(set_a, set_b, height, words, upper,
                                                                           iou.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return iou;
}

at::Tensor mask_nms_cuda(const at::Tensor& packed, const at::Tensor& boxes, const at::Tensor& scores,
                         const c10::optional<at::Tensor>& idxs, double iou_threshold) {
  check_mask_nms_inputs(packed, boxes, scores, idxs, iou_threshold);
  TORCH_CHECK_VALUE(packed.is_cuda(), "masks must be a CUDA tensor for the CUDA kernel, got ", packed.device());
  const int64_t n = packed.size(0);
  if (n == 0) return at::empty({0}, scores.options().dtype(at::kLong));
  c10::cuda::CUDAGuard device_guard(packed.device());
  const dim3 grid = tile_grid(n, n, packed);
  plan_nms_walk(n, idxs.has_value(), device_launch_limits(packed.get_device()));  // reject before any work
  const int64_t col_blocks = grid.x;
  const int64_t height = packed.size(1), words = packed.size(2);

  // Masks stay where they are; tiles reach them through `order` (no copy of the mask stack).
  const at::Tensor order = nms_visit_order(scores, idxs).contiguous();
  const at::Tensor masks = packed.contiguous();
  const at::Tensor windows = window_boxes(boxes, order, height, words * kMaskBitsPerWord);
  const at::Tensor areas = areas_of(masks, order);
  const VisitGroups groups = visit_groups(idxs, order);
  const MaskSet set{masks.const_data_ptr<int32_t>(), order.const_data_ptr<int64_t>(),
                    windows.const_data_ptr<int32_t>(), areas.const_data_ptr<int32_t>(), n};

  at::Tensor mask = at::empty({n * col_blocks}, scores.options().dtype(at::kLong));
  mask_nms_bitmask_kernel<<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      set, groups.sorted_ptr(), groups.col_end_ptr(), height, words, col_blocks, iou_threshold,
      reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor keep = nms_greedy_keep_cuda(mask, groups.sorted, groups.col_end, n);
  return kept_indices(order, keep, scores, idxs.has_value());
}

}  // namespace litesam
