#pragma once
// The greedy walk of box NMS and mask NMS over a suppression bitmask, as every backend runs it.
//
// Items (boxes or masks) are in visit order (decreasing score, grouped by idxs); bit u of word [i, c]
// says item i suppresses item 64c + u (same group, later in visit order). Items come in blocks of 64
// (one word). Groups are contiguous runs of the visit order, so the walk splits into independent
// *walkers*: the walker of block b0 exists when at least one group starts in b0; it owns every group
// that starts in b0 and follows the last of them through the blocks after, until that group ends.
// Each walker resolves its blocks one after the other: the 64 items of a block from their diagonal
// words (serial, in registers/shared memory), then the block's kept items' rows are OR-ed into the
// walker's `removed` bitset for the later blocks. The CPU kernels (cpu/greedy_walk.h) and the CUDA
// kernel (cuda/nms_kernel.cu) call the functions below, so the CPU tests run the device's word logic.
#include "common/host_device.h"

namespace litesam {

constexpr int kWalkBlock = 64;  // items per bitmask word

// Shared memory of the device walker (a plain struct so that the host launch plan knows its size).
struct NmsWalkShared {
  uint64_t diagonal[2][kWalkBlock];      // block r and the prefetched block r + 1 (double buffer)
  uint32_t group_starts[2][2];           // per buffer: the two 32-bit ballots of group-start bits
  int32_t kept_row_offset[kWalkBlock];   // word offset (t * col_blocks) of the current block's kept rows t
  uint64_t kept;                         // the current block's kept bits (thread 0 -> all)
};

// Whether the item at a visit position starts a group (the first item always does).
LITESAM_HD bool is_group_start(int64_t position, int64_t group, int64_t previous_group) {
  return position == 0 || group != previous_group;
}

// The items of a block of `count` that a walker owns, from the block's group-start bits: in the
// walker's first block, everything from the first start on (those groups all start here); in a later
// block, everything before the first start (the walker's last group continuing). 0 ends the walker.
LITESAM_HD uint64_t walker_items(uint64_t starts, int count, bool walker_first_block) {
  const uint64_t before_first_start = low_bits64(count_trailing_zeros64(starts));
  return low_bits64(count) & (walker_first_block ? ~before_first_start : before_first_start);
}

// Whether the walker's last group can go on into the next block: always after its first block; after
// a later block only when no group started in it (else that group's own walker has the next block).
LITESAM_HD bool walker_continues(uint64_t starts, bool walker_first_block) {
  return walker_first_block || starts == 0;
}

// Greedy resolution of one block: item t is kept when no kept item before it (in this block or, via
// `blocked`, in an earlier one) suppresses it, then its diagonal word blocks the items it suppresses.
// `blocked` must include every item the walker does not own (and every bit >= count).
// `diagonal_word(t, blocked)` gives item t's word (it may leave out items already blocked: their bits
// cannot change the outcome). kEager reads every item's word, kept or not, so the reads do not depend
// on the decisions (the device: loads from shared memory issued ahead of the serial chain; the CPU box
// kernel: 64 cheap rows); otherwise only the kept items' words are computed (CPU mask NMS: costly rows).
#if defined(__CUDACC__)
#pragma nv_exec_check_disable  // instantiated with device lambdas on the device, host lambdas on the host
#endif
template <bool kEager, typename DiagonalWord>
LITESAM_HD uint64_t resolve_block(uint64_t blocked, DiagonalWord diagonal_word) {
  uint64_t kept = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int t = 0; t < kWalkBlock; ++t) {
    const bool free = !((blocked >> t) & 1ull);
    if (kEager) {
      const uint64_t word = diagonal_word(t, blocked);
      if (free) {
        kept |= 1ull << t;
        blocked |= word;
      }
    } else if (free) {
      kept |= 1ull << t;
      blocked |= diagonal_word(t, blocked);
    }
  }
  return kept;
}

// Rank of kept item t among the kept items of its block (its slot in the compacted kept list).
LITESAM_HD int kept_rank(uint64_t kept, int t) { return popcount64(kept & low_bits64(t)); }

}  // namespace litesam
