// Box NMS on the device in three steps, with one host sync (the kept count):
//  1. suppression bitmask: tile (row block r, column block c >= r) of 64 x 64 boxes in visit order;
//     bit j of word mask[i][c] says box i suppresses box 64c + j. With idxs, boxes are grouped by
//     idxs, and tiles whose groups cannot meet are neither computed nor read (col_end).
//  2. the greedy walk (common/nms_walk.h): one thread block per walker, so the groups of batched NMS
//     are walked in parallel (one walker without idxs). Per block of 64 boxes, thread 0 resolves the
//     block from its diagonal words, which the previous step prefetched into shared memory; then all
//     threads OR the kept boxes' rows into the walker's `removed` bitset. That OR is a fixed-count,
//     predicated, unrolled loop: each thread issues kOrUnroll independent 64-bit loads (addresses from
//     the compacted kept-row list in shared memory) before it uses any of them, so the walk is bound
//     by bandwidth and the number of blocks (N/64 steps), not by one dependent load per kept box.
//     The bitset is in shared memory when it fits the device's opt-in limit, else in global scratch.
//  3. masked_select of the kept positions (the one sync).
// Memory: N * ceil(N/64) * 8 bytes of device memory for the mask (1.25 GB at N = 100k), none on the host.
#include "cuda/nms_kernel.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "common/box_iou.h"
#include "common/launch_plans.h"
#include "common/nms_common.h"
#include "common/nms_walk.h"
#include "cuda/launch_limits.h"

namespace litesam {
namespace {

using Word = unsigned long long;
constexpr int kOrUnroll = 8;  // loads in flight per thread in the walk's OR step

template <typename T>
__global__ void __launch_bounds__(kPairTile) nms_mask_kernel(int64_t n, int64_t col_blocks, const T* __restrict__ boxes,
                                                             const int64_t* __restrict__ groups,
                                                             const int64_t* __restrict__ col_end, double threshold,
                                                             Word* __restrict__ mask) {
  const int64_t row_block = blockIdx.y;
  const int64_t col_block = blockIdx.x;
  if (col_block < row_block) return;
  if (col_end != nullptr && col_block >= col_end[row_block]) return;

  __shared__ T col_boxes[kPairTile * 4];
  __shared__ T col_areas[kPairTile];
  __shared__ int64_t col_groups[kPairTile];
  const int64_t col_start = col_block * kPairTile;
  const int col_count = static_cast<int>(n - col_start < kPairTile ? n - col_start : kPairTile);
  const int t = threadIdx.x;
  if (t < col_count) {
    const T* box = boxes + 4 * (col_start + t);
    for (int k = 0; k < 4; ++k) col_boxes[4 * t + k] = box[k];
    col_areas[t] = box_area(box);
    if (groups != nullptr) col_groups[t] = groups[col_start + t];
  }
  __syncthreads();

  const int64_t row = row_block * kPairTile + t;
  if (row >= n) return;
  const T* row_box = boxes + 4 * row;
  const T row_area = box_area(row_box);
  const int64_t row_group = groups != nullptr ? groups[row] : 0;
  Word bits = 0;
  for (int j = (row_block == col_block) ? t + 1 : 0; j < col_count; ++j) {
    if (groups != nullptr && col_groups[j] != row_group) continue;
    if (iou_exceeds(row_box, row_area, col_boxes + 4 * j, col_areas[j], threshold)) bits |= 1ULL << j;
  }
  mask[row * col_blocks + col_block] = bits;
}

// What thread t < 64 loads for block r of the walk: its diagonal word and whether it starts a group.
struct BlockEntry {
  Word diagonal;
  bool starts_group;
};

__device__ __forceinline__ BlockEntry load_block_entry(const Word* __restrict__ mask, const int64_t* __restrict__ groups,
                                                       int64_t n, int64_t col_blocks, int64_t r, int t) {
  BlockEntry entry{0, false};
  const int64_t position = r * kWalkBlock + t;
  if (t < kWalkBlock && position < n) {
    entry.diagonal = __ldg(mask + position * col_blocks + r);
    const int64_t group = groups != nullptr ? __ldg(groups + position) : 0;
    const int64_t previous = groups != nullptr && position > 0 ? __ldg(groups + position - 1) : group;
    entry.starts_group = is_group_start(position, group, previous);
  }
  return entry;
}

// Threads 0..63 (two whole warps) write their entries into shared buffer `buffer`.
__device__ __forceinline__ void publish_block(NmsWalkShared& shared, int buffer, const BlockEntry& entry, int t) {
  if (t < kWalkBlock) {
    shared.diagonal[buffer][t] = entry.diagonal;
    const unsigned starts = __ballot_sync(0xffffffffu, entry.starts_group);
    if ((t & 31) == 0) shared.group_starts[buffer][t >> 5] = starts;
  }
}

__device__ __forceinline__ uint64_t group_starts_of(const NmsWalkShared& shared, int buffer) {
  return static_cast<uint64_t>(shared.group_starts[buffer][0]) |
         (static_cast<uint64_t>(shared.group_starts[buffer][1]) << 32);
}

// kOrUnroll words of one column: kept rows base, base + slices, ... (clamped to the last kept row).
__device__ __forceinline__ void load_batch(const Word* __restrict__ column_words, const int32_t* kept_row_offset,
                                           int base, int slices, int kept_count, Word (&words)[kOrUnroll]) {
  int32_t offsets[kOrUnroll];
#pragma unroll
  for (int u = 0; u < kOrUnroll; ++u) offsets[u] = kept_row_offset[min(base + u * slices, kept_count - 1)];
#pragma unroll
  for (int u = 0; u < kOrUnroll; ++u) words[u] = __ldg(column_words + offsets[u]);
}

// removed |= OR of the kept rows over columns [first_col, end_col). Columns go across threads (coalesced
// rows); when there are fewer columns than threads, the kept rows are split into `slices` as well.
// Per column, kOrUnroll rows at a time: their offsets (shared memory), then kOrUnroll independent loads,
// then the ORs, so no load waits for another. Past the last kept row the index is clamped to it: a
// duplicate word ORs to the same result, so the loads need no predicate and their count is fixed.
// Offsets are int32 words from the block's first row (t * col_blocks < 2**31: plan_nms_walk).
template <bool kGlobalRemoved>
__device__ __forceinline__ void or_kept_rows(const Word* __restrict__ block_rows, const int32_t* kept_row_offset,
                                             int kept_count, int64_t first_col, int64_t end_col, Word* removed,
                                             int64_t origin) {
  const int64_t width = end_col - first_col;
  if (kept_count == 0 || width <= 0) return;
  const int threads = static_cast<int>(blockDim.x);
  const int lanes = width < threads ? static_cast<int>(width) : threads;
  const int slices = min(kept_count, threads / lanes);
  const int slice = static_cast<int>(threadIdx.x) / lanes;
  const int lane = static_cast<int>(threadIdx.x) - slice * lanes;
  if (slice >= slices) return;
  for (int64_t c = lane; c < width; c += lanes) {
    const int64_t column = first_col + c;
    const Word* column_words = block_rows + column;
    // Software pipeline: batch b + 1's loads are issued before batch b's words are OR-ed.
    Word words[kOrUnroll];
    load_batch(column_words, kept_row_offset, slice, slices, kept_count, words);
    Word acc = 0;
    for (int base = slice + kOrUnroll * slices; base < kept_count; base += kOrUnroll * slices) {
      Word next[kOrUnroll];
      load_batch(column_words, kept_row_offset, base, slices, kept_count, next);
#pragma unroll
      for (int u = 0; u < kOrUnroll; ++u) {
        acc |= words[u];
        words[u] = next[u];
      }
    }
#pragma unroll
    for (int u = 0; u < kOrUnroll; ++u) acc |= words[u];
    if (acc != 0) {
      // Shared words are owned by one thread unless rows are sliced; global ones may be shared with the
      // neighbouring walker (a block where its last group ends and ours start: disjoint bits).
      if (kGlobalRemoved) {
        atomicOr(removed + (column - origin), acc);
      } else if (slices > 1) {
        // Two native 32-bit shared atomics (a 64-bit shared atomicOr is a compare-and-swap loop).
        auto* halves = reinterpret_cast<unsigned*>(removed + (column - origin));
        atomicOr(halves, static_cast<unsigned>(acc));
        atomicOr(halves + 1, static_cast<unsigned>(acc >> 32));
      } else {
        removed[column - origin] |= acc;
      }
    }
  }
}

template <bool kGlobalRemoved>
__global__ void __launch_bounds__(kMaxWalkThreads) nms_walk_kernel(int64_t n, int64_t col_blocks,
                                                                   const Word* __restrict__ mask,
                                                                   const int64_t* __restrict__ groups,
                                                                   const int64_t* __restrict__ col_end,
                                                                   Word* __restrict__ removed_global,
                                                                   bool* __restrict__ keep) {
  __shared__ NmsWalkShared shared;
  extern __shared__ Word removed_shared[];
  const int t = static_cast<int>(threadIdx.x);
  const int64_t b0 = blockIdx.x;
  // Word of column c: removed[c - origin] (walker-local in shared memory, absolute in global memory).
  Word* removed = kGlobalRemoved ? removed_global : removed_shared;
  const int64_t origin = kGlobalRemoved ? 0 : b0;
  auto count_of = [&](int64_t r) { return static_cast<int>(n - r * kWalkBlock < kWalkBlock ? n - r * kWalkBlock : kWalkBlock); };

  publish_block(shared, 0, load_block_entry(mask, groups, n, col_blocks, b0, t), t);
  if (!kGlobalRemoved) {
    const int words = static_cast<int>(col_blocks - b0);  // < 2**31: the plan bounds col_blocks by the grid
    for (int j = t; j < words; j += blockDim.x) removed[j] = 0;
  }
  __syncthreads();
  uint64_t items = walker_items(group_starts_of(shared, 0), count_of(b0), true);
  if (items == 0) return;  // no group starts in this block: another walker owns it (uniform)

  int buffer = 0;
  for (int64_t r = b0;; ++r) {
    const bool continues = r + 1 < col_blocks && walker_continues(group_starts_of(shared, buffer), r == b0);
    // Issued now, used after the OR step: the next block's loads overlap this block's work.
    const BlockEntry next = continues ? load_block_entry(mask, groups, n, col_blocks, r + 1, t) : BlockEntry{0, false};
    const int64_t row_start = r * kWalkBlock;
    if (t == 0) {
      const Word removed_word = kGlobalRemoved ? __ldcg(removed + (r - origin)) : removed[r - origin];
      const uint64_t* diagonal = shared.diagonal[buffer];
      shared.kept = resolve_block</*kEager=*/true>(removed_word | ~items, [&](int row, uint64_t) { return diagonal[row]; });
    }
    __syncthreads();
    const uint64_t kept = shared.kept;
    if (t < kWalkBlock) {
      if ((items >> t) & 1ull) keep[row_start + t] = (kept >> t) & 1ull;
      if ((kept >> t) & 1ull) shared.kept_row_offset[kept_rank(kept, t)] = t * static_cast<int32_t>(col_blocks);
    }
    __syncthreads();
    const int64_t end_col = col_end != nullptr ? col_end[r] : col_blocks;
    or_kept_rows<kGlobalRemoved>(mask + row_start * col_blocks, shared.kept_row_offset, popcount64(kept), r + 1, end_col,
                                 removed, origin);
    if (continues) publish_block(shared, buffer ^ 1, next, t);
    __syncthreads();
    if (!continues) break;
    buffer ^= 1;
    items = walker_items(group_starts_of(shared, buffer), count_of(r + 1), false);
    if (items == 0) break;  // the walker's last group ended with block r (uniform)
  }
}

}  // namespace

at::Tensor nms_greedy_keep_cuda(const at::Tensor& mask, const at::Tensor& groups_sorted, const at::Tensor& col_end,
                                int64_t n) {
  const bool grouped = groups_sorted.defined();
  const NmsWalkPlan plan = plan_nms_walk(n, grouped, device_launch_limits(mask.get_device()));
  at::Tensor keep = at::empty({n}, mask.options().dtype(at::kBool));
  const at::Tensor removed_scratch =
      plan.global_removed ? at::zeros({plan.scratch_words}, mask.options().dtype(at::kLong)) : at::Tensor();
  const auto* mask_ptr = reinterpret_cast<const Word*>(mask.const_data_ptr<int64_t>());
  const int64_t* groups_ptr = grouped ? groups_sorted.const_data_ptr<int64_t>() : nullptr;
  const int64_t* col_end_ptr = grouped ? col_end.const_data_ptr<int64_t>() : nullptr;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(plan.walkers));
  const unsigned threads = static_cast<unsigned>(plan.threads);
  if (plan.global_removed) {
    nms_walk_kernel<true><<<grid, threads, 0, stream>>>(
        n, plan.col_blocks, mask_ptr, groups_ptr, col_end_ptr,
        reinterpret_cast<Word*>(removed_scratch.data_ptr<int64_t>()), keep.data_ptr<bool>());
  } else {
    if (plan.dynamic_shared_bytes > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(nms_walk_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(plan.dynamic_shared_bytes)));
    }
    nms_walk_kernel<false><<<grid, threads, static_cast<size_t>(plan.dynamic_shared_bytes), stream>>>(
        n, plan.col_blocks, mask_ptr, groups_ptr, col_end_ptr, nullptr, keep.data_ptr<bool>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return keep;
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const c10::optional<at::Tensor>& idxs, double iou_threshold) {
  check_nms_inputs(boxes, scores, idxs, iou_threshold);
  TORCH_CHECK_VALUE(boxes.is_cuda(), "boxes must be a CUDA tensor for the CUDA kernel, got ", boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  c10::cuda::CUDAGuard device_guard(boxes.device());
  const LaunchLimits limits = device_launch_limits(boxes.get_device());
  const PairTilesPlan tiles = plan_pair_tiles(n, n, limits);
  plan_nms_walk(n, idxs.has_value(), limits);  // reject before any work
  const int64_t col_blocks = tiles.grid_x;

  const at::Tensor order = nms_visit_order(scores, idxs);
  const at::Tensor boxes_sorted =
      boxes.index_select(0, order).to(nms_compute_type(boxes.scalar_type())).contiguous();
  const VisitGroups groups = visit_groups(idxs, order);
  const int64_t* groups_ptr = groups.sorted_ptr();
  const int64_t* col_end_ptr = groups.col_end_ptr();

  at::Tensor mask = at::empty({n * col_blocks}, boxes.options().dtype(at::kLong));
  auto* mask_ptr = reinterpret_cast<Word*>(mask.data_ptr<int64_t>());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(tiles.grid_x), static_cast<unsigned>(tiles.grid_y));
  AT_DISPATCH_SWITCH(boxes_sorted.scalar_type(), "batched_nms_cuda",
                     AT_DISPATCH_CASE(at::kFloat, [&] {
                       nms_mask_kernel<float><<<grid, kPairTile, 0, stream>>>(
                           n, col_blocks, boxes_sorted.const_data_ptr<float>(), groups_ptr, col_end_ptr,
                           iou_threshold, mask_ptr);
                     }) AT_DISPATCH_CASE(at::kDouble, [&] {
                       nms_mask_kernel<double><<<grid, kPairTile, 0, stream>>>(
                           n, col_blocks, boxes_sorted.const_data_ptr<double>(), groups_ptr, col_end_ptr,
                           iou_threshold, mask_ptr);
                     }));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor keep = nms_greedy_keep_cuda(mask, groups.sorted, groups.col_end, n);
  return kept_indices(order, keep, scores, idxs.has_value());
}

}  // namespace litesam
