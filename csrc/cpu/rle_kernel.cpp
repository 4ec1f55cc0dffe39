// SAM's uncompressed RLE on the CPU, one mask per task, in the device kernel's two passes
// (common/rle_common.h): the mask's change bitmap (32 rows of a column per word), then the runs from it.
#include "cpu/rle_kernel.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <cstring>
#include <vector>

#include "common/launch_plans.h"
#include "common/rle_common.h"

namespace litesam {
namespace {

constexpr int kRows = kRleRowsPerBlock;

// The device's warp transpose (transpose_step with lane l ^ s as the partner), over an array.
void transpose_rows(uint32_t* rows) {
  for (int s = 16; s >= 1; s >>= 1) {
    uint32_t next[kRows];
    for (int l = 0; l < kRows; ++l) next[l] = transpose_step(rows[l], rows[l ^ s], s, (l & s) != 0);
    std::memcpy(rows, next, sizeof(next));
  }
}

// Pass 1, packed rows: 32 rows of one word at a time, then a bit transpose into 32 column words.
void packed_change_bitmap(const uint32_t* mask, int64_t height, int64_t width, int64_t row_len, uint32_t* bitmap) {
  const int64_t y_blocks = (height + kRows - 1) / kRows;
  for (int64_t b = 0; b < y_blocks; ++b) {
    for (int64_t k = 0; k < row_len; ++k) {
      uint32_t rows[kRows];
      for (int l = 0; l < kRows; ++l) {
        const int64_t y = b * kRows + l;
        if (y >= height) {
          rows[l] = 0;
          continue;
        }
        const bool last_row = y == height - 1;
        const uint32_t next = last_row ? next_column_top(mask[k], k + 1 < row_len ? mask[k + 1] : 0u)
                                       : mask[(y + 1) * row_len + k];
        rows[l] = packed_change_bits(mask[y * row_len + k], next, 32 * k, width, last_row);
      }
      transpose_rows(rows);
      for (int c = 0; c < 32 && 32 * k + c < width; ++c) bitmap[b * width + 32 * k + c] = rows[c];
    }
  }
}

// Four bool pixels of a row from column x as the device loads them (little-endian word), 0 past the row.
uint32_t load_four(const uint8_t* row, int64_t x, int64_t width) {
  uint32_t bytes = 0;
  for (int j = 0; j < 4 && x + j < width; ++j) bytes |= static_cast<uint32_t>(row[x + j]) << (8 * j);
  return bytes;
}

// Pass 1, bool rows: four columns at a time down 32 rows, as one device lane does.
void bool_change_bitmap(const uint8_t* mask, int64_t height, int64_t width, uint32_t* bitmap) {
  const int64_t y_blocks = (height + kRows - 1) / kRows;
  for (int64_t b = 0; b < y_blocks; ++b) {
    for (int64_t x = 0; x < width; x += 4) {
      uint32_t columns[4] = {0, 0, 0, 0};
      for (int l = 0; l < kRows && b * kRows + l < height; ++l) {
        const int64_t y = b * kRows + l;
        const bool last_row = y == height - 1;
        const uint32_t next = last_row ? next_column_top_bytes(load_four(mask, x, width), load_four(mask, x + 4, width))
                                       : load_four(mask + (y + 1) * width, x, width);
        const uint32_t flags = byte_flags(load_four(mask + y * width, x, width));
        add_flag_bits(change_flags(flags, byte_flags(next), x, width, last_row), l, columns);
      }
      for (int j = 0; j < 4 && x + j < width; ++j) bitmap[b * width + x + j] = columns[j];
    }
  }
}

// Pass 2: SAM's counts (starting with the 0-run) from the bitmap, column by column.
void runs_from_bitmap(const uint32_t* bitmap, int64_t height, int64_t width, bool first_pixel, std::vector<int64_t>& out) {
  const int64_t y_blocks = (height + kRows - 1) / kRows;
  out.clear();
  if (first_pixel) out.push_back(0);  // the 0-run is empty when the first pixel is set
  int64_t previous = 0;
  for (int64_t x = 0; x < width; ++x) {
    for (int64_t b = 0; b < y_blocks; ++b) {
      previous = emit_runs(bitmap[b * width + x], x * height + b * kRows + 1, previous,
                           [&](int64_t run) { out.push_back(run); });
    }
  }
  out.push_back(height * width - previous);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mask_to_rle_cpu(const at::Tensor& masks, int64_t width) {
  check_rle_inputs(masks, width);
  TORCH_CHECK_VALUE(masks.device().is_cpu(), "masks must be a CPU tensor for the CPU kernel, got ", masks.device());
  const int64_t n = masks.size(0), height = masks.size(1), row_len = masks.size(2);
  const bool packed = masks.scalar_type() == at::kInt;
  const uint8_t* bools = packed ? nullptr : reinterpret_cast<const uint8_t*>(masks.const_data_ptr<bool>());
  const auto* words = packed ? reinterpret_cast<const uint32_t*>(masks.const_data_ptr<int32_t>()) : nullptr;
  const int64_t mask_stride = height * row_len;
  const int64_t y_blocks = (height + kRows - 1) / kRows;

  std::vector<std::vector<int64_t>> runs(n);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> bitmap(y_blocks * width);
    for (int64_t i = begin; i < end; ++i) {
      if (height * width == 0) {
        runs[i].assign(1, 0);  // no pixels: counts == [0]
        continue;
      }
      bool first_pixel;
      if (packed) {
        packed_change_bitmap(words + i * mask_stride, height, width, row_len, bitmap.data());
        first_pixel = words[i * mask_stride] & 1u;
      } else {
        bool_change_bitmap(bools + i * mask_stride, height, width, bitmap.data());
        first_pixel = bools[i * mask_stride] != 0;
      }
      runs_from_bitmap(bitmap.data(), height, width, first_pixel, runs[i]);
    }
  });

  int64_t total = 0;
  for (const auto& r : runs) total += static_cast<int64_t>(r.size());
  at::Tensor counts = at::empty({total}, masks.options().dtype(at::kLong));
  at::Tensor lengths = at::empty({n}, masks.options().dtype(at::kLong));
  int64_t* counts_ptr = counts.data_ptr<int64_t>();
  int64_t* lengths_ptr = lengths.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    lengths_ptr[i] = static_cast<int64_t>(runs[i].size());
    if (!runs[i].empty()) std::memcpy(counts_ptr, runs[i].data(), runs[i].size() * sizeof(int64_t));
    counts_ptr += runs[i].size();
  }
  return {counts, lengths};
}

}  // namespace litesam
