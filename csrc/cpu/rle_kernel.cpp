#include "cpu/rle_kernel.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <cstring>
#include <vector>

#include "common/rle_common.h"

namespace litesam {

std::tuple<at::Tensor, at::Tensor> mask_to_rle_cpu(const at::Tensor& masks, int64_t width) {
  check_rle_inputs(masks, width);
  TORCH_CHECK_VALUE(masks.device().is_cpu(), "masks must be a CPU tensor for the CPU kernel, got ", masks.device());
  const int64_t n = masks.size(0), height = masks.size(1), row_len = masks.size(2);
  const bool packed = masks.scalar_type() == at::kInt;
  const uint8_t* bools = packed ? nullptr : reinterpret_cast<const uint8_t*>(masks.const_data_ptr<bool>());
  const int32_t* words = packed ? masks.const_data_ptr<int32_t>() : nullptr;
  const int64_t mask_stride = height * row_len;

  // Each mask is walked in column-major order; one vector of runs per mask, then one copy.
  std::vector<std::vector<int64_t>> runs(n);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint8_t* b = bools ? bools + i * mask_stride : nullptr;
      const int32_t* w = words ? words + i * mask_stride : nullptr;
      std::vector<int64_t>& out = runs[i];
      int current = 0;  // SAM's counts start with the 0-run (length 0 when the first pixel is set)
      int64_t run = 0;
      for (int64_t x = 0; x < width; ++x) {
        for (int64_t y = 0; y < height; ++y) {
          const int value = rle_pixel(b, w, row_len, y, x);
          if (value != current) {
            out.push_back(run);
            run = 0;
            current = value;
          }
          ++run;
        }
      }
      out.push_back(run);
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
