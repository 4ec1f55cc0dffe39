#pragma once
// Shared by the CPU and CUDA RLE kernels: input checks and the word-level logic of both passes.
//
// Pass 1 turns a mask into its *change bitmap*: bit y of word [b, x] (b = y / 32, one word per 32 rows
// of a column) is set when pixel (32b + y, x) differs from the next pixel in column-major order (the
// pixel below, or for the last row the top of the next column; nothing after the very last pixel).
// Pass 2 walks each column's words in order and writes the run lengths that end at its changes. Both
// backends compute the change bits with the functions below, 32 columns (packed) or 4 columns (bool)
// per operation; rows become column words by transpose_step (packed: across the lanes of a warp on the
// device, over an array on the CPU) or add_flag_bits (bool), and both emit runs with emit_runs().
#include <ATen/core/Tensor.h>

#include "common/host_device.h"

namespace litesam {

// masks: bool (N, H, W) or int32 bit-packed (N, H, ceil(W/32)) (ops/bitmask.py), contiguous.
inline void check_rle_inputs(const at::Tensor& masks, int64_t width) {
  TORCH_CHECK_TYPE(masks.scalar_type() == at::kBool || masks.scalar_type() == at::kInt,
                   "masks must be bool or bit-packed int32, got ", masks.scalar_type());
  TORCH_CHECK_VALUE(masks.dim() == 3, "masks must be a 3-D (N, H, W) tensor, got ", masks.dim(), " dims");
  TORCH_CHECK_VALUE(masks.is_contiguous(), "masks must be contiguous");
  TORCH_CHECK_VALUE(width >= 0, "width must be non-negative, got ", width);
  if (masks.scalar_type() == at::kBool) {
    TORCH_CHECK_VALUE(masks.size(2) == width, "width must equal masks.size(2) for bool masks, got ", width);
  } else {
    TORCH_CHECK_VALUE(masks.size(2) == (width + 31) / 32, "packed masks must have ceil(width/32) = ",
                      (width + 31) / 32, " words per row, got ", masks.size(2));
  }
}

// Bits of a 32-column word (columns first_x .. first_x + 31) whose column is below `limit`. A change
// exists for x < W, except in the last row, where the pixel after (H - 1, W - 1) does not: limit W - 1.
// Applying it also ignores whatever the padding bits of a packed row hold.
LITESAM_HD uint32_t columns_below(int64_t first_x, int64_t limit) {
  const int64_t count = limit - first_x;
  return low_bits32(count < 0 ? 0 : (count > 32 ? 32 : static_cast<int>(count)));
}

// ------------------------------------------------------------------------------ packed (32 columns)
// What follows packed row H - 1 in column-major order: row 0 shifted by one column (bit b = pixel
// (0, 32k + b + 1)); `row0_next_word` is row 0's next word (0 past the end of the row).
LITESAM_HD uint32_t next_column_top(uint32_t row0_word, uint32_t row0_next_word) {
  return (row0_word >> 1) | (row0_next_word << 31);
}

// Change bits of word k (columns first_x = 32k ..) of row y, from the next row's word (last row:
// next_column_top of row 0).
LITESAM_HD uint32_t packed_change_bits(uint32_t word, uint32_t next_word, int64_t first_x, int64_t width,
                                       bool last_row) {
  return (word ^ next_word) & columns_below(first_x, last_row ? width - 1 : width);
}

// --------------------------------------------------------------------------------- bool (4 columns)
// Four bool pixels as loaded in one 32-bit word (byte j = column first_x + j, little-endian), each
// reduced to bit 0 of its byte (any non-zero byte is True, as `!= 0`).
LITESAM_HD uint32_t byte_flags(uint32_t bytes) {
  bytes |= bytes >> 4;
  bytes |= bytes >> 2;
  bytes |= bytes >> 1;
  return bytes & 0x01010101u;
}

// As next_column_top, for four bool pixels: row 0 shifted by one column (one byte).
LITESAM_HD uint32_t next_column_top_bytes(uint32_t row0_bytes, uint32_t row0_next_bytes) {
  return (row0_bytes >> 8) | (row0_next_bytes << 24);
}

// Change flags (bit 0 of byte j: column first_x + j) of four bool pixels of one row, from the byte_flags
// of the row and of what follows it (the next row, or next_column_top_bytes of row 0 for the last row).
LITESAM_HD uint32_t change_flags(uint32_t flags, uint32_t next_flags, int64_t first_x, int64_t width, bool last_row) {
  const uint32_t columns = columns_below(first_x, last_row ? width - 1 : width);  // bits 0..3
  const uint32_t byte_columns = (columns & 1u) | ((columns & 2u) << 7) | ((columns & 4u) << 14) | ((columns & 8u) << 21);
  return (flags ^ next_flags) & byte_columns;
}

// Adds one row's four change flags as bit `row_in_block` of the four columns' bitmap words.
LITESAM_HD void add_flag_bits(uint32_t flags, int row_in_block, uint32_t* column_words) {
  for (int j = 0; j < 4; ++j) column_words[j] |= ((flags >> (8 * j)) & 1u) << row_in_block;
}

// ---------------------------------------------------------------------------- rows -> column words
// One step of the 32 x 32 bit transpose over 32 lanes (lane l holds row l, bit c its column c): with
// `partner` = lane l ^ s's word, swap the s x s blocks whose row and column differ in bit s. After
// s = 16, 8, 4, 2, 1, lane c holds column c (bit l = row l). The device exchanges with __shfl_xor_sync,
// the CPU over an array of 32 rows.
LITESAM_HD uint32_t transpose_step(uint32_t mine, uint32_t partner, int s, bool upper_lane) {
  const uint32_t stay = 0xFFFFFFFFu / ((1u << s) + 1u);  // bits c with (c & s) == 0: 0x0000FFFF .. 0x55555555
  return upper_lane ? (mine & ~stay) | ((partner >> s) & stay) : (mine & stay) | ((partner << s) & ~stay);
}

// ------------------------------------------------------------------------------------------- pass 2
// Run lengths ending at the changes of one bitmap word, in order: bit b is a change after the pixel of
// column-major index first_boundary - 1 + b, so the run ends at boundary first_boundary + b.
// store(length) receives each run; returns the last boundary (`previous` when the word is empty).
#if defined(__CUDACC__)
#pragma nv_exec_check_disable  // instantiated with device lambdas on the device, host lambdas on the host
#endif
template <typename Store>
LITESAM_HD int64_t emit_runs(uint32_t word, int64_t first_boundary, int64_t previous, Store store) {
  while (word != 0) {
    const int64_t boundary = first_boundary + count_trailing_zeros64(word);
    word &= word - 1u;
    store(boundary - previous);
    previous = boundary;
  }
  return previous;
}

}  // namespace litesam
