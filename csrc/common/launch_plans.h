#pragma once
// Launch plans: every grid dimension, chunk, shared-memory size and scratch size of the CUDA kernels
// comes from one of these host functions, computed from the problem sizes and the device's limits
// (LaunchLimits). They are plain C++ (no CUDA), so the CPU tests call them through
// torch.ops.litesam._launch_plan at the boundaries (N > 65535 masks, a bitset above the opt-in shared
// memory, 99 KB vs 227 KB devices, scratch budgets). A size that no plan can launch raises ValueError
// here, before anything is allocated or launched.
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/nms_walk.h"

namespace litesam {

// Scratch memory a kernel may allocate beyond its inputs and outputs (small-region labels, the RLE
// change bitmap) before it processes the masks in chunks: 1 GiB.
constexpr int64_t kDefaultScratchBudgetBytes = int64_t{1} << 30;

// The device limits a plan depends on; the defaults are an H100/H200 (sm_90).
struct LaunchLimits {
  int64_t max_grid_x = 2147483647;
  int64_t max_grid_y = 65535;
  int64_t max_grid_z = 65535;
  int64_t shared_optin_bytes = 232448;  // cudaDevAttrMaxSharedMemoryPerBlockOptin (227 KB on sm_90)
  int64_t scratch_budget_bytes = kDefaultScratchBudgetBytes;

  static constexpr int kFields = 5;
  std::vector<int64_t> to_vector() const {
    return {max_grid_x, max_grid_y, max_grid_z, shared_optin_bytes, scratch_budget_bytes};
  }
  static LaunchLimits from(c10::ArrayRef<int64_t> v) {
    TORCH_CHECK_VALUE(v.size() == kFields, "limits must be [max_grid_x, max_grid_y, max_grid_z, "
                      "shared_optin_bytes, scratch_budget_bytes], got ", v.size(), " values");
    for (int64_t value : v) TORCH_CHECK_VALUE(value >= 1, "every launch limit must be >= 1, got ", v);
    return LaunchLimits{v[0], v[1], v[2], v[3], v[4]};
  }
};

// Limits that replace the device's own in every CUDA launch while set (tests force the chunked and
// fallback paths on a real GPU with them); nullopt: the device's. Guarded by a mutex.
inline std::mutex& launch_limits_override_mutex() {
  static std::mutex mutex;
  return mutex;
}
inline std::optional<LaunchLimits>& launch_limits_override_slot() {
  static std::optional<LaunchLimits> slot;
  return slot;
}
inline void set_launch_limits_override(std::optional<LaunchLimits> limits) {
  std::lock_guard<std::mutex> lock(launch_limits_override_mutex());
  launch_limits_override_slot() = limits;
}
inline std::optional<LaunchLimits> launch_limits_override() {
  std::lock_guard<std::mutex> lock(launch_limits_override_mutex());
  return launch_limits_override_slot();
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// --------------------------------------------------------------------------------------------- tiles
// Pairwise 64 x 64 tiles of box NMS, mask NMS and mask IoU: grid (column tiles, row tiles), plus the
// one-block-per-mask area kernel of mask NMS.
constexpr int kPairTile = 64;

struct PairTilesPlan {
  int64_t grid_x, grid_y, area_blocks;
  std::vector<int64_t> to_vector() const { return {grid_x, grid_y, area_blocks}; }
};

inline PairTilesPlan plan_pair_tiles(int64_t rows, int64_t cols, const LaunchLimits& limits) {
  TORCH_CHECK_VALUE(rows >= 0 && cols >= 0, "tile plan: sizes must be >= 0, got ", rows, " x ", cols);
  PairTilesPlan plan{ceil_div(cols, kPairTile), ceil_div(rows, kPairTile), std::max(rows, cols)};
  TORCH_CHECK_VALUE(plan.grid_y <= limits.max_grid_y && plan.grid_x <= limits.max_grid_x,
                    "at most ", std::min(limits.max_grid_y, limits.max_grid_x) * kPairTile,
                    " items per side of a pairwise kernel (grid of 64 x 64 tiles), got ", rows, " x ", cols);
  TORCH_CHECK_VALUE(plan.area_blocks <= limits.max_grid_x, "at most ", limits.max_grid_x, " masks, got ",
                    plan.area_blocks);
  return plan;
}

// ------------------------------------------------------------------------------------------ NMS walk
constexpr int kMaxWalkThreads = 512;

struct NmsWalkPlan {
  int64_t col_blocks, walkers, threads, static_shared_bytes, dynamic_shared_bytes, global_removed, scratch_words;
  std::vector<int64_t> to_vector() const {
    return {col_blocks, walkers, threads, static_shared_bytes, dynamic_shared_bytes, global_removed, scratch_words};
  }
};

// One walker per row block when there are groups (idle ones exit after one load), else one. The
// `removed` bitset (ceil(N/64) words) lives in shared memory when it fits the device's opt-in shared
// memory next to the static NmsWalkShared, else in a zeroed global scratch (same kernel, atomics).
// Threads: each step ORs up to 64 rows over the columns left, so at least ~8 loads per thread at the
// start of the walk, between 128 and 512 (at 1024, sm_80 spills the pipelined OR step's registers).
inline NmsWalkPlan plan_nms_walk(int64_t n, bool grouped, const LaunchLimits& limits) {
  TORCH_CHECK_VALUE(n >= 1, "walk plan: n must be >= 1, got ", n);
  NmsWalkPlan plan{};
  plan.col_blocks = ceil_div(n, kWalkBlock);
  plan.walkers = grouped ? plan.col_blocks : 1;
  TORCH_CHECK_VALUE(plan.walkers <= limits.max_grid_x, "NMS: at most ", limits.max_grid_x * kWalkBlock,
                    " items, got ", n);
  // The walk addresses a block's rows by int32 word offsets t * col_blocks (t < 64).
  TORCH_CHECK_VALUE(plan.col_blocks * kWalkBlock <= 2147483647, "NMS: at most ", int64_t{2147483647 / kWalkBlock} * kWalkBlock,
                    " items, got ", n);
  int64_t threads = 128;
  while (threads < kMaxWalkThreads && threads < plan.col_blocks * 8) threads *= 2;
  plan.threads = threads;
  const int64_t static_bytes = static_cast<int64_t>(sizeof(NmsWalkShared));
  plan.static_shared_bytes = static_bytes;
  TORCH_CHECK_VALUE(static_bytes <= limits.shared_optin_bytes, "the NMS walk needs ", static_bytes,
                    " bytes of shared memory per block; the device allows ", limits.shared_optin_bytes);
  const int64_t removed_bytes = plan.col_blocks * static_cast<int64_t>(sizeof(uint64_t));
  if (static_bytes + removed_bytes <= limits.shared_optin_bytes) {
    plan.dynamic_shared_bytes = removed_bytes;
  } else {
    plan.global_removed = 1;
    plan.scratch_words = plan.col_blocks;
  }
  return plan;
}

// ----------------------------------------------------------------------------------------------- RLE
constexpr int kRleThreads = 256;
constexpr int kRleWarps = kRleThreads / 32;
constexpr int kRleRowsPerBlock = 32;  // one 32-bit word of the change bitmap per column

struct RlePlan {
  int64_t vector;             // bool: bytes per lane and row (16, 8, 4, 1); packed: words per row (4, 2, 1)
  int64_t strip_columns;      // columns of one thread block of pass 1 (32 * vector)
  int64_t strips;             // thread blocks of pass 1 per mask
  int64_t y_blocks;           // bitmap words per column
  int64_t pass1_masks_per_launch;
  int64_t chunk_masks;        // masks whose change bitmap fits the scratch budget
  int64_t chunks;             // > 1: pass 1 counts every mask first, then re-reads each chunk
  int64_t pass2_masks_per_launch;
  int64_t bitmap_bytes;       // scratch of one chunk's bitmap
  std::vector<int64_t> to_vector() const {
    return {vector, strip_columns, strips, y_blocks, pass1_masks_per_launch, chunk_masks, chunks,
            pass2_masks_per_launch, bitmap_bytes};
  }
};

// masks: n x height x row_len elements (bool: row_len = width bytes; packed: ceil(width/32) words), the
// first at an address with `base_alignment` (bytes, a power of two). 128-bit loads need every row start
// aligned: the widest vector dividing both the row length and the base alignment is used.
inline RlePlan plan_rle(int64_t n, int64_t height, int64_t width, int64_t row_len, bool packed,
                        int64_t base_alignment, const LaunchLimits& limits) {
  TORCH_CHECK_VALUE(n >= 1 && height >= 1 && width >= 1, "rle plan: sizes must be >= 1, got ", n, " x ", height,
                    " x ", width);
  TORCH_CHECK_VALUE(row_len == (packed ? ceil_div(width, 32) : width), "rle plan: row_len ", row_len,
                    " does not fit width ", width);
  TORCH_CHECK_VALUE(base_alignment >= 1, "rle plan: base_alignment must be >= 1, got ", base_alignment);
  constexpr int64_t kMaxSide = 2147483647 - 2 * kRleRowsPerBlock;  // y and x stay int32 in the kernels
  TORCH_CHECK_VALUE(height <= kMaxSide && width <= kMaxSide, "mask_to_rle: masks must be smaller than ",
                    kMaxSide, " pixels per side, got ", height, " x ", width);
  RlePlan plan{};
  const int64_t element_bytes = packed ? 4 : 1;
  const int64_t candidates[] = {16, 8, 4, 2, 1};
  plan.vector = 1;
  for (int64_t bytes : candidates) {
    const int64_t elements = bytes / element_bytes;
    if (elements < 1 || (!packed && bytes == 2)) continue;  // bool lanes take 16, 8, 4 or 1 bytes
    if (row_len % elements == 0 && base_alignment % bytes == 0) {
      plan.vector = elements;
      break;
    }
  }
  plan.strip_columns = 32 * plan.vector;
  plan.strips = ceil_div(width, plan.strip_columns);
  plan.y_blocks = ceil_div(height, kRleRowsPerBlock);
  TORCH_CHECK_VALUE(plan.strips <= limits.max_grid_x, "mask_to_rle: masks of width ", width, " need ",
                    plan.strips, " thread blocks each, more than the grid allows (", limits.max_grid_x, ")");
  plan.pass1_masks_per_launch = std::min(n, limits.max_grid_x / plan.strips);
  const int64_t bitmap_bytes_per_mask = plan.y_blocks * width * 4;
  plan.chunk_masks = std::min(n, std::max<int64_t>(1, limits.scratch_budget_bytes / bitmap_bytes_per_mask));
  plan.chunks = ceil_div(n, plan.chunk_masks);
  plan.bitmap_bytes = plan.chunk_masks * bitmap_bytes_per_mask;
  // Pass 2: one thread per column; a launch covers whole masks and indexes its columns in int32 (the
  // last block's threads included, hence the margin of one block).
  const int64_t max_columns = std::min<int64_t>(2147483647 - kRleThreads, limits.max_grid_x * kRleThreads);
  TORCH_CHECK_VALUE(width <= max_columns, "mask_to_rle: masks wider than ", max_columns, " columns");
  plan.pass2_masks_per_launch = std::min(n, max_columns / width);
  return plan;
}

// ------------------------------------------------------------------------------------- small regions
constexpr int kRegionBlockX = 32;  // one warp per row segment: warp-aggregated atomics see one row
constexpr int kRegionBlockY = 8;

struct SmallRegionsPlan {
  int64_t chunk_masks, chunks, grid_x, grid_y, scratch_bytes;
  std::vector<int64_t> to_vector() const { return {chunk_masks, chunks, grid_x, grid_y, scratch_bytes}; }
};

// Grid (ceil(W/32), ceil(H/8), masks of the chunk) of 32 x 8 threads, one pixel each, int32 index math
// inside a mask. Scratch per mask: parent + area, int32 per block-raster code (common/small_regions_common.h);
// masks are labelled in chunks whose scratch fits the budget (at least one mask per chunk).
inline SmallRegionsPlan plan_small_regions(int64_t n, int64_t height, int64_t width, const LaunchLimits& limits) {
  TORCH_CHECK_VALUE(n >= 1 && height >= 1 && width >= 1, "small-regions plan: sizes must be >= 1, got ", n, " x ",
                    height, " x ", width);
  SmallRegionsPlan plan{};
  plan.grid_x = ceil_div(width, kRegionBlockX);
  plan.grid_y = ceil_div(height, kRegionBlockY);
  TORCH_CHECK_VALUE(plan.grid_x <= limits.max_grid_x && plan.grid_y <= limits.max_grid_y,
                    "connected components: masks of ", height, " x ", width, " pixels exceed the grid (at most ",
                    limits.max_grid_y * kRegionBlockY, " rows)");
  const int64_t codes = 4 * ceil_div(height, 2) * ceil_div(width, 2);
  const int64_t bytes_per_mask = codes * 2 * static_cast<int64_t>(sizeof(int32_t));
  plan.chunk_masks = std::min({n, limits.max_grid_z, std::max<int64_t>(1, limits.scratch_budget_bytes / bytes_per_mask)});
  plan.chunks = ceil_div(n, plan.chunk_masks);
  plan.scratch_bytes = plan.chunk_masks * bytes_per_mask;
  return plan;
}

// ------------------------------------------------------------------------------------- by name (tests)
// torch.ops.litesam._launch_plan(kernel, sizes, limits): the plan of one kernel family as a list.
//   "pair_tiles"    sizes [rows, cols]                                   -> PairTilesPlan
//   "nms_walk"      sizes [n, grouped]                                   -> NmsWalkPlan
//   "rle"           sizes [n, height, width, row_len, packed, base_alignment] -> RlePlan
//   "small_regions" sizes [n, height, width]                             -> SmallRegionsPlan
inline std::vector<int64_t> launch_plan_by_name(const std::string& kernel, c10::ArrayRef<int64_t> sizes,
                                                c10::ArrayRef<int64_t> limits_values) {
  const LaunchLimits limits = LaunchLimits::from(limits_values);
  auto expect = [&](size_t count, const char* names) {
    TORCH_CHECK_VALUE(sizes.size() == count, "sizes of the '", kernel, "' plan must be ", names, ", got ", sizes);
  };
  if (kernel == "pair_tiles") {
    expect(2, "[rows, cols]");
    return plan_pair_tiles(sizes[0], sizes[1], limits).to_vector();
  }
  if (kernel == "nms_walk") {
    expect(2, "[n, grouped]");
    return plan_nms_walk(sizes[0], sizes[1] != 0, limits).to_vector();
  }
  if (kernel == "rle") {
    expect(6, "[n, height, width, row_len, packed, base_alignment]");
    return plan_rle(sizes[0], sizes[1], sizes[2], sizes[3], sizes[4] != 0, sizes[5], limits).to_vector();
  }
  if (kernel == "small_regions") {
    expect(3, "[n, height, width]");
    return plan_small_regions(sizes[0], sizes[1], sizes[2], limits).to_vector();
  }
  TORCH_CHECK_VALUE(false, "unknown launch plan '", kernel, "' (pair_tiles, nms_walk, rle, small_regions)");
}

}  // namespace litesam
