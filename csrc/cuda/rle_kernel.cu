// SAM/COCO uncompressed RLE on the device (column-major order), two passes over the data and one host
// read, with the word logic of common/rle_common.h:
//  1. pass 1 reads every mask once with 128-bit loads (when the rows are aligned) and writes its change
//     bitmap (bit y of word [y / 32, x]: a change after pixel (y, x) in column-major order) plus, per
//     column, the number of changes and the last one. A thread block owns a strip of columns of one mask
//     and its warps take turns over the 32-row blocks, so per-column totals need no atomics.
//     Packed masks: lane = row, kWords words per lane, XOR with the next lane's row (a shuffle), then a
//     5-step shuffle transpose per word turns the 32 rows into 32 column words. Bool masks: lane =
//     kBytes columns; the lane walks the 32 rows, collecting each column's bits.
//  2. ATen: per-column write offsets (prefix sums), each column's previous change (a running max), and
//     the host read of two sizes (total changes, masks whose first pixel is set) that sizes the output.
//  3. pass 2: one thread per column reads its bitmap words (coalesced across the warp) and writes the
//     run lengths ending at its changes; the last column writes the mask's last run, the first its
//     leading 0-run when the first pixel is set.
// Masks are indexed by a 1-D grid (no grid.y limit on N); launches cover whole masks. When the bitmap
// of all masks exceeds the scratch budget, pass 1 first counts every mask without a bitmap, then each
// chunk of masks is read again for its bitmap (launch plan "rle").
#include "cuda/rle_kernel.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/cummax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>

#include "common/launch_plans.h"
#include "common/rle_common.h"
#include "cuda/launch_limits.h"

namespace litesam {
namespace {

constexpr unsigned kFullWarp = 0xffffffffu;
constexpr int kRows = kRleRowsPerBlock;

struct RleGeometry {
  int32_t height, width, row_len, y_blocks, strips;
  int64_t mask_elements;  // height * row_len
  int64_t pixels;         // height * width
};

// ------------------------------------------------------------------------------------ vector loads
template <int kElements>
struct Vec {
  uint32_t w[kElements];
};

template <int kWords>
__device__ __forceinline__ Vec<kWords> load_words(const uint32_t* p) {
  Vec<kWords> v;
  if constexpr (kWords == 4) {
    const uint4 q = __ldg(reinterpret_cast<const uint4*>(p));
    v.w[0] = q.x; v.w[1] = q.y; v.w[2] = q.z; v.w[3] = q.w;
  } else if constexpr (kWords == 2) {
    const uint2 q = __ldg(reinterpret_cast<const uint2*>(p));
    v.w[0] = q.x; v.w[1] = q.y;
  } else {
    v.w[0] = __ldg(p);
  }
  return v;
}

// kBytes bool pixels as little-endian words (one word holding a single byte when kBytes == 1).
template <int kBytes>
using ByteVec = Vec<(kBytes >= 4 ? kBytes / 4 : 1)>;

template <int kBytes>
__device__ __forceinline__ ByteVec<kBytes> load_bytes(const uint8_t* p) {
  if constexpr (kBytes == 1) {
    return ByteVec<1>{{static_cast<uint32_t>(__ldg(p))}};
  } else {
    return load_words<kBytes / 4>(reinterpret_cast<const uint32_t*>(p));
  }
}

template <int kBytes>
__device__ __forceinline__ ByteVec<kBytes> byte_flags_of(ByteVec<kBytes> v) {
#pragma unroll
  for (int q = 0; q < (kBytes >= 4 ? kBytes / 4 : 1); ++q) v.w[q] = byte_flags(v.w[q]);
  return v;
}

template <int kElements>
__device__ __forceinline__ Vec<kElements> zero_vec() {
  Vec<kElements> v;
#pragma unroll
  for (int i = 0; i < kElements; ++i) v.w[i] = 0;
  return v;
}

// ------------------------------------------------------------------------------------------- pass 1
// Per-column totals of one block: each warp's counts and last change rows, then one write per column.
template <int kColumns>
struct StripTotals {
  int32_t count[kRleWarps][kColumns];
  int32_t last_row_plus_one[kRleWarps][kColumns];  // 0: no change in the warp's blocks
};

template <int kColumns>
__device__ __forceinline__ void write_strip_totals(StripTotals<kColumns>& totals, const RleGeometry& g, int64_t mask,
                                                   int32_t first_x, int32_t* __restrict__ column_changes,
                                                   int64_t* __restrict__ column_last) {
  __syncthreads();
  if (column_changes == nullptr) return;  // re-read of a chunk for its bitmap: totals already written
  for (int c = threadIdx.x; c < kColumns; c += kRleThreads) {
    int32_t total = 0, latest = 0;
#pragma unroll
    for (int w = 0; w < kRleWarps; ++w) {
      total += totals.count[w][c];
      latest = max(latest, totals.last_row_plus_one[w][c]);
    }
    const int32_t x = first_x + c;
    if (x < g.width) {
      const int64_t column = mask * g.width + x;
      column_changes[column] = total;
      // The change after pixel (y, x) ends the run at column-major boundary x * H + y + 1.
      column_last[column] = latest > 0 ? static_cast<int64_t>(x) * g.height + latest : 0;
    }
  }
}

__device__ __forceinline__ void tally(uint32_t column_word, int32_t b, int32_t& count, int32_t& last_row_plus_one) {
  count += __popc(column_word);
  if (column_word != 0) last_row_plus_one = b * kRows + highest_bit32(column_word) + 1;  // blocks ascend
}

template <int kWords>
__global__ void __launch_bounds__(kRleThreads) rle_changes_packed_kernel(
    RleGeometry g, const uint32_t* __restrict__ words, int64_t mask_begin, uint32_t* __restrict__ bitmap,
    int64_t bitmap_mask_begin, int32_t* __restrict__ column_changes, int64_t* __restrict__ column_last) {
  constexpr int kColumns = 32 * kWords;
  __shared__ StripTotals<kColumns> totals;
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int32_t mask_in_launch = static_cast<int32_t>(blockIdx.x) / g.strips;
  const int32_t strip = static_cast<int32_t>(blockIdx.x) - mask_in_launch * g.strips;
  const int64_t mask = mask_begin + mask_in_launch;
  const uint32_t* m = words + mask * g.mask_elements;  // the one 64-bit product per block
  const int32_t k0 = strip * kWords;
  int32_t count[kWords], last[kWords];
#pragma unroll
  for (int v = 0; v < kWords; ++v) count[v] = last[v] = 0;

  for (int32_t b = warp; b < g.y_blocks; b += kRleWarps) {  // uniform per warp: whole warps ballot
    const int32_t y = b * kRows + lane;
    const Vec<kWords> row = y < g.height ? load_words<kWords>(m + static_cast<int64_t>(y) * g.row_len + k0) : zero_vec<kWords>();
    Vec<kWords> next;
#pragma unroll
    for (int v = 0; v < kWords; ++v) next.w[v] = __shfl_down_sync(kFullWarp, row.w[v], 1);
    if (lane == 31 && y + 1 < g.height) next = load_words<kWords>(m + static_cast<int64_t>(y + 1) * g.row_len + k0);
    const bool last_row = y == g.height - 1;
    if (last_row) {
      const Vec<kWords> top = load_words<kWords>(m + k0);
      const uint32_t following = k0 + kWords < g.row_len ? __ldg(m + k0 + kWords) : 0u;
#pragma unroll
      for (int v = 0; v < kWords; ++v) next.w[v] = next_column_top(top.w[v], v + 1 < kWords ? top.w[v + 1] : following);
    }
#pragma unroll
    for (int v = 0; v < kWords; ++v) {
      const int64_t first_x = static_cast<int64_t>(k0 + v) * 32;
      const uint32_t changes = y < g.height ? packed_change_bits(row.w[v], next.w[v], first_x, g.width, last_row) : 0u;
      // Rows (one per lane) -> columns (lane c: column first_x + c): 5 shuffles per 32 x 32 bits.
      uint32_t column_word = changes;
#pragma unroll
      for (int s = 16; s >= 1; s >>= 1) {
        column_word = transpose_step(column_word, __shfl_xor_sync(kFullWarp, column_word, s), s, (lane & s) != 0);
      }
      const int32_t x = static_cast<int32_t>(first_x) + lane;
      if (x < g.width) {
        if (bitmap != nullptr) bitmap[((mask - bitmap_mask_begin) * g.y_blocks + b) * g.width + x] = column_word;
        tally(column_word, b, count[v], last[v]);
      }
    }
  }
#pragma unroll
  for (int v = 0; v < kWords; ++v) {
    totals.count[warp][v * 32 + lane] = count[v];
    totals.last_row_plus_one[warp][v * 32 + lane] = last[v];
  }
  write_strip_totals(totals, g, mask, k0 * 32, column_changes, column_last);
}

template <int kBytes>
__global__ void __launch_bounds__(kRleThreads) rle_changes_bool_kernel(
    RleGeometry g, const uint8_t* __restrict__ bools, int64_t mask_begin, uint32_t* __restrict__ bitmap,
    int64_t bitmap_mask_begin, int32_t* __restrict__ column_changes, int64_t* __restrict__ column_last) {
  constexpr int kColumns = 32 * kBytes;
  constexpr int kVecWords = kBytes >= 4 ? kBytes / 4 : 1;
  __shared__ StripTotals<kColumns> totals;
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int32_t mask_in_launch = static_cast<int32_t>(blockIdx.x) / g.strips;
  const int32_t strip = static_cast<int32_t>(blockIdx.x) - mask_in_launch * g.strips;
  const int64_t mask = mask_begin + mask_in_launch;
  const uint8_t* m = bools + mask * g.mask_elements;
  const int32_t x0 = strip * kColumns + lane * kBytes;  // this lane's columns x0 .. x0 + kBytes - 1
  const bool active = x0 < g.width;                     // W % kBytes == 0: all of them or none
  int32_t count[kBytes], last[kBytes];
#pragma unroll
  for (int j = 0; j < kBytes; ++j) count[j] = last[j] = 0;

  for (int32_t b = warp; b < g.y_blocks; b += kRleWarps) {
    const int32_t y0 = b * kRows;
    const int rows = min(kRows, g.height - y0);
    uint32_t column_words[kBytes >= 4 ? kBytes : 4];
#pragma unroll
    for (int j = 0; j < (kBytes >= 4 ? kBytes : 4); ++j) column_words[j] = 0;
    // Pixels as flags (bit 0 of each byte) once per row; row y's flags are row y - 1's `next`.
    ByteVec<kBytes> flags = byte_flags_of<kBytes>(active ? load_bytes<kBytes>(m + static_cast<int64_t>(y0) * g.width + x0)
                                                         : zero_vec<kVecWords>());
    for (int i = 0; i < rows; ++i) {  // uniform across the warp
      const int32_t y = y0 + i;
      const bool last_row = y == g.height - 1;
      ByteVec<kBytes> next;
      if (!last_row) {
        next = active ? load_bytes<kBytes>(m + static_cast<int64_t>(y + 1) * g.width + x0) : zero_vec<kVecWords>();
      } else {
        // Row 0 one column on: pixel (0, x0 + kBytes) is the next lane's first, or the next strip's.
        const ByteVec<kBytes> top = active ? load_bytes<kBytes>(m + x0) : zero_vec<kVecWords>();
        uint32_t following = __shfl_down_sync(kFullWarp, top.w[0], 1) & 0xFFu;
        if (lane == 31) following = x0 + kBytes < g.width ? static_cast<uint32_t>(__ldg(m + x0 + kBytes)) : 0u;
#pragma unroll
        for (int q = 0; q < kVecWords; ++q) {
          next.w[q] = kBytes == 1 ? following : next_column_top_bytes(top.w[q], q + 1 < kVecWords ? top.w[q + 1] : following);
        }
      }
      next = byte_flags_of<kBytes>(next);
      if (active) {
#pragma unroll
        for (int q = 0; q < kVecWords; ++q) {
          add_flag_bits(change_flags(flags.w[q], next.w[q], static_cast<int64_t>(x0) + 4 * q, g.width, last_row), i,
                        column_words + 4 * q);
        }
      }
      flags = next;
    }
    if (active) {
#pragma unroll
      for (int j = 0; j < kBytes; ++j) {
        const int32_t x = x0 + j;
        if (bitmap != nullptr) bitmap[((mask - bitmap_mask_begin) * g.y_blocks + b) * g.width + x] = column_words[j];
        tally(column_words[j], b, count[j], last[j]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kBytes; ++j) {
    totals.count[warp][lane * kBytes + j] = count[j];
    totals.last_row_plus_one[warp][lane * kBytes + j] = last[j];
  }
  write_strip_totals(totals, g, mask, strip * kColumns, column_changes, column_last);
}

// ------------------------------------------------------------------------------------------- pass 2
struct RunsLayout {
  const int64_t* column_offset;  // exclusive prefix sum of the changes of all columns of all masks
  const int64_t* previous_last;  // per column: the mask's last change boundary before it (0: none)
  const int64_t* out_start;      // per mask: its first count
  const int64_t* first_pixel;    // per mask: 1 when its first pixel is set (a leading 0-run)
  const int64_t* change_start;   // per mask: exclusive prefix sum of its changes
  const int64_t* changes;        // per mask
};

__global__ void __launch_bounds__(kRleThreads) rle_runs_kernel(RleGeometry g, const uint32_t* __restrict__ bitmap,
                                                              int64_t mask_begin, int64_t bitmap_mask_begin,
                                                              int32_t masks, RunsLayout layout,
                                                              int64_t* __restrict__ counts) {
  const int32_t q = static_cast<int32_t>(blockIdx.x) * kRleThreads + static_cast<int32_t>(threadIdx.x);
  if (q >= masks * g.width) return;  // the plan keeps masks * width in int32
  const int32_t mask_in_launch = q / g.width;
  const int32_t x = q - mask_in_launch * g.width;
  const int64_t mask = mask_begin + mask_in_launch;
  const int64_t column = mask * g.width + x;
  const int64_t mask_first = layout.out_start[mask] + layout.first_pixel[mask];
  int64_t slot = mask_first + (layout.column_offset[column] - layout.change_start[mask]);
  int64_t previous = layout.previous_last[column];
  const uint32_t* words = bitmap + (mask - bitmap_mask_begin) * g.y_blocks * g.width + x;
  const int64_t first_boundary = static_cast<int64_t>(x) * g.height + 1;
#pragma unroll 4
  for (int32_t b = 0; b < g.y_blocks; ++b) {
    previous = emit_runs(__ldg(words + static_cast<int64_t>(b) * g.width), first_boundary + b * kRows, previous,
                         [&](int64_t run) { counts[slot++] = run; });
  }
  if (x == g.width - 1) counts[mask_first + layout.changes[mask]] = g.pixels - previous;
  if (x == 0 && layout.first_pixel[mask] != 0) counts[layout.out_start[mask]] = 0;
}

// ------------------------------------------------------------------------------------------- launch
int64_t address_alignment(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  const uintptr_t lowest = address & (~address + 1);
  return lowest == 0 || lowest > 16 ? 16 : static_cast<int64_t>(lowest);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mask_to_rle_cuda(const at::Tensor& masks, int64_t width) {
  check_rle_inputs(masks, width);
  TORCH_CHECK_VALUE(masks.is_cuda(), "masks must be a CUDA tensor for the CUDA kernel, got ", masks.device());
  c10::cuda::CUDAGuard device_guard(masks.device());
  const int64_t n = masks.size(0), height = masks.size(1), row_len = masks.size(2);
  const auto long_options = masks.options().dtype(at::kLong);
  if (n == 0) return {at::empty({0}, long_options), at::empty({0}, long_options)};
  if (height * width == 0) return {at::zeros({n}, long_options), at::zeros({n}, long_options).add_(1)};

  const bool packed = masks.scalar_type() == at::kInt;
  const void* data = masks.const_data_ptr();
  const RlePlan plan = plan_rle(n, height, width, row_len, packed, address_alignment(data),
                                device_launch_limits(masks.get_device()));
  const RleGeometry g{static_cast<int32_t>(height), static_cast<int32_t>(width), static_cast<int32_t>(row_len),
                      static_cast<int32_t>(plan.y_blocks), static_cast<int32_t>(plan.strips), height * row_len,
                      height * width};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  at::Tensor column_changes = at::empty({n * width}, masks.options().dtype(at::kInt));
  at::Tensor column_last = at::empty({n * width}, long_options);
  at::Tensor bitmap = at::empty({plan.bitmap_bytes / 4}, masks.options().dtype(at::kInt));
  auto* bitmap_ptr = reinterpret_cast<uint32_t*>(bitmap.data_ptr<int32_t>());
  auto pass1 = [&](int64_t begin, int64_t end, bool with_bitmap, bool with_totals) {
    uint32_t* out_bitmap = with_bitmap ? bitmap_ptr : nullptr;
    int32_t* out_changes = with_totals ? column_changes.data_ptr<int32_t>() : nullptr;
    int64_t* out_last = with_totals ? column_last.data_ptr<int64_t>() : nullptr;
    for (int64_t first = begin; first < end; first += plan.pass1_masks_per_launch) {
      const unsigned blocks = static_cast<unsigned>(std::min(plan.pass1_masks_per_launch, end - first) * plan.strips);
      const auto* w = static_cast<const uint32_t*>(data);
      const auto* b = static_cast<const uint8_t*>(data);
      if (packed && plan.vector == 4) {
        rle_changes_packed_kernel<4><<<blocks, kRleThreads, 0, stream>>>(g, w, first, out_bitmap, begin, out_changes, out_last);
      } else if (packed && plan.vector == 2) {
        rle_changes_packed_kernel<2><<<blocks, kRleThreads, 0, stream>>>(g, w, first, out_bitmap, begin, out_changes, out_last);
      } else if (packed) {
        rle_changes_packed_kernel<1><<<blocks, kRleThreads, 0, stream>>>(g, w, first, out_bitmap, begin, out_changes, out_last);
      } else if (plan.vector == 16) {
        rle_changes_bool_kernel<16><<<blocks, kRleThreads, 0, stream>>>(g, b, first, out_bitmap, begin, out_changes, out_last);
      } else if (plan.vector == 8) {
        rle_changes_bool_kernel<8><<<blocks, kRleThreads, 0, stream>>>(g, b, first, out_bitmap, begin, out_changes, out_last);
      } else if (plan.vector == 4) {
        rle_changes_bool_kernel<4><<<blocks, kRleThreads, 0, stream>>>(g, b, first, out_bitmap, begin, out_changes, out_last);
      } else {
        rle_changes_bool_kernel<1><<<blocks, kRleThreads, 0, stream>>>(g, b, first, out_bitmap, begin, out_changes, out_last);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  };
  const bool one_chunk = plan.chunks == 1;
  pass1(0, n, /*with_bitmap=*/one_chunk, /*with_totals=*/true);

  const at::Tensor per_column = column_changes.view({n, width}).to(at::kLong);
  const at::Tensor changes = per_column.sum(1).contiguous();
  const at::Tensor flat = per_column.view({-1});
  const at::Tensor column_offset = flat.cumsum(0).sub(flat).contiguous();
  // Boundaries ascend along a mask, so the last change before column x is the running max before it.
  const at::Tensor last = column_last.view({n, width});
  const at::Tensor running_last = std::get<0>(at::cummax(last, 1));
  const at::Tensor previous_last = at::constant_pad_nd(running_last.slice(1, 0, width - 1), {1, 0}, 0).contiguous();
  at::Tensor corner = masks.select(1, 0).select(1, 0);
  const at::Tensor first = (packed ? corner.bitwise_and(1) : corner).to(at::kLong).contiguous();
  const at::Tensor sizes = at::stack({changes.sum(), first.sum()}).cpu();  // the one host read
  const int64_t total_changes = sizes[0].item<int64_t>();
  const int64_t leading = sizes[1].item<int64_t>();

  const at::Tensor lengths = first.add(changes).add(1).contiguous();
  const at::Tensor out_start = lengths.cumsum(0).sub(lengths).contiguous();
  const at::Tensor change_start = changes.cumsum(0).sub(changes).contiguous();
  at::Tensor counts = at::empty({total_changes + n + leading}, long_options);  // every entry written once
  const RunsLayout layout{column_offset.const_data_ptr<int64_t>(), previous_last.const_data_ptr<int64_t>(),
                          out_start.const_data_ptr<int64_t>(),     first.const_data_ptr<int64_t>(),
                          change_start.const_data_ptr<int64_t>(),  changes.const_data_ptr<int64_t>()};
  for (int64_t begin = 0; begin < n; begin += plan.chunk_masks) {
    const int64_t end = std::min(n, begin + plan.chunk_masks);
    if (!one_chunk) pass1(begin, end, /*with_bitmap=*/true, /*with_totals=*/false);
    for (int64_t first_mask = begin; first_mask < end; first_mask += plan.pass2_masks_per_launch) {
      const int64_t masks_now = std::min(plan.pass2_masks_per_launch, end - first_mask);
      const unsigned blocks = static_cast<unsigned>(ceil_div(masks_now * width, kRleThreads));
      rle_runs_kernel<<<blocks, kRleThreads, 0, stream>>>(g, bitmap_ptr, first_mask, begin, static_cast<int32_t>(masks_now),
                                                          layout, counts.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  return {counts, lengths};
}

}  // namespace litesam
