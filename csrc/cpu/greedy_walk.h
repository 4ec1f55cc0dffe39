#pragma once
// The greedy walk of common/nms_walk.h on the CPU, for box NMS and mask NMS: the device kernel's
// walkers, block resolution and `removed` words, with the suppression tests computed lazily (a pair
// is tested only while its later item is not yet removed), so the CPU tests exercise the device's
// word logic on every input they run.
#include <ATen/Parallel.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

#include "common/nms_walk.h"

namespace litesam {

// Keep flags (bool (n,), visit order) of greedy NMS over n items.
//   groups: visit-order group ids (contiguous runs), or nullptr for one group;
//   col_end: per block, the block its groups end before (group_block_ends), or nullptr (all blocks);
//   suppresses(i, j): item i suppresses the later item j of its group;
//   bulk_grain: blocks per parallel task when a walker suppresses the items after its block;
//   kEagerDiagonal: compute every item's diagonal word (cheap tests) or only the kept items' (costly ones).
// Walkers run in parallel when there are enough of them; otherwise one at a time, each with a parallel
// bulk step (one big group: mask NMS on one image).
template <bool kEagerDiagonal, typename Suppresses>
at::Tensor greedy_walk_cpu(int64_t n, const int64_t* groups, const int64_t* col_end, Suppresses suppresses,
                                     int64_t bulk_grain) {
  const int64_t col_blocks = (n + kWalkBlock - 1) / kWalkBlock;
  // Every item must be decided by exactly one walker (the device writes each keep flag once, without
  // initialising them): checked here on every CPU input.
  constexpr uint8_t kUndecided = 0xFF;
  std::vector<uint8_t> keep(n, kUndecided);
  auto count_of = [&](int64_t r) { return static_cast<int>(std::min<int64_t>(kWalkBlock, n - r * kWalkBlock)); };
  auto same_group = [&](int64_t i, int64_t j) { return groups == nullptr || groups[i] == groups[j]; };
  auto starts_of = [&](int64_t r) {
    uint64_t starts = 0;
    for (int t = 0; t < count_of(r); ++t) {
      const int64_t p = r * kWalkBlock + t;
      const int64_t group = groups != nullptr ? groups[p] : 0;
      const int64_t previous = groups != nullptr && p > 0 ? groups[p - 1] : group;
      if (is_group_start(p, group, previous)) starts |= 1ull << t;
    }
    return starts;
  };

  auto walk = [&](int64_t b0, bool parallel_bulk) {
    std::vector<uint64_t> removed(col_blocks - b0, 0);  // word c - b0: items of block c removed
    uint64_t starts = starts_of(b0);
    uint64_t items = walker_items(starts, count_of(b0), true);
    for (int64_t r = b0;; ++r) {
      const int64_t row_start = r * kWalkBlock;
      const int count = count_of(r);
      const uint64_t kept = resolve_block<kEagerDiagonal>(removed[r - b0] | ~items, [&](int t, uint64_t blocked) {
        uint64_t word = 0;
        for (int u = t + 1; u < count; ++u) {
          const int64_t i = row_start + t, j = row_start + u;
          if (!((blocked >> u) & 1ull) && same_group(i, j) && suppresses(i, j)) word |= 1ull << u;
        }
        return word;
      });
      int kept_items[kWalkBlock];
      int kept_count = 0;
      for (int t = 0; t < count; ++t) {
        if ((items >> t) & 1ull) {
          TORCH_INTERNAL_ASSERT(keep[row_start + t] == kUndecided, "greedy walk: item ", row_start + t,
                                " owned by two walkers");
          keep[row_start + t] = static_cast<uint8_t>((kept >> t) & 1ull);
        }
        if ((kept >> t) & 1ull) kept_items[kept_count++] = t;  // slot kept_rank(kept, t), as on the device
      }
      auto suppress_later = [&](int64_t c_begin, int64_t c_end) {
        for (int64_t c = c_begin; c < c_end; ++c) {
          uint64_t word = removed[c - b0];
          for (int u = 0; u < count_of(c); ++u) {
            if ((word >> u) & 1ull) continue;
            const int64_t j = c * kWalkBlock + u;
            for (int q = 0; q < kept_count; ++q) {
              const int64_t i = row_start + kept_items[q];
              if (same_group(i, j) && suppresses(i, j)) {
                word |= 1ull << u;
                break;
              }
            }
          }
          removed[c - b0] = word;
        }
      };
      const int64_t end = col_end != nullptr ? col_end[r] : col_blocks;
      if (kept_count > 0 && end > r + 1) {
        if (parallel_bulk) {
          at::parallel_for(r + 1, end, bulk_grain, suppress_later);
        } else {
          suppress_later(r + 1, end);
        }
      }
      if (r + 1 >= col_blocks || !walker_continues(starts, r == b0)) break;
      starts = starts_of(r + 1);
      items = walker_items(starts, count_of(r + 1), false);
      if (items == 0) break;
    }
  };

  std::vector<int64_t> walkers;
  for (int64_t b = 0; b < col_blocks; ++b) {
    if (walker_items(starts_of(b), count_of(b), true) != 0) walkers.push_back(b);
  }
  const int64_t walker_count = static_cast<int64_t>(walkers.size());
  if (walker_count > 1 && walker_count >= at::get_num_threads()) {
    at::parallel_for(0, walker_count, 1, [&](int64_t begin, int64_t end) {
      for (int64_t w = begin; w < end; ++w) walk(walkers[w], false);
    });
  } else {
    for (int64_t b0 : walkers) walk(b0, true);
  }
  for (int64_t p = 0; p < n; ++p) TORCH_INTERNAL_ASSERT(keep[p] != kUndecided, "greedy walk: item ", p, " undecided");
  return at::from_blob(keep.data(), {n}, at::kByte).to(at::kBool);
}

}  // namespace litesam
