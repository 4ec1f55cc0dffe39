#include "cpu/mask_postprocess_kernel.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace litesam {
namespace {

struct Tap {
  int64_t i0, i1;
  float w0, w1;
};

std::vector<Tap> read_table(const at::Tensor& table, const char* name, int64_t limit) {
  TORCH_CHECK_TYPE(table.scalar_type() == at::kFloat, name, " must be float32, got ", table.scalar_type());
  TORCH_CHECK_VALUE(table.dim() == 2 && table.size(1) == 4 && table.is_contiguous(), name,
                    " must be a contiguous (n, 4) table");
  const float* t = table.const_data_ptr<float>();
  std::vector<Tap> taps(table.size(0));
  for (int64_t i = 0; i < table.size(0); ++i) {
    taps[i] = {static_cast<int64_t>(t[4 * i]), static_cast<int64_t>(t[4 * i + 1]), t[4 * i + 2], t[4 * i + 3]};
    TORCH_CHECK_VALUE(taps[i].i0 >= 0 && taps[i].i1 >= 0 && taps[i].i0 < limit && taps[i].i1 < limit, name,
                      " has an index outside [0, ", limit, ")");
  }
  return taps;
}

// On x86-64 the row loops are also built for FMA hardware and picked at load time (ifunc): std::fma is
// then one instruction instead of a libm call. Both clones compute the same correctly rounded fma.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LITESAM_FMA_CLONES __attribute__((target_clones("fma", "default")))
#else
#define LITESAM_FMA_CLONES
#endif

// torch's bilinear blend is FMA-contracted in its CPU/CUDA kernels: fma(a, w0, b * w1), rows then columns.
// One row of the first resize: low-res rows `top`/`bottom` blended by `ty`, at each crop column.
LITESAM_FMA_CLONES void resize_row(const float* top, const float* bottom, const Tap& ty, const Tap* cols,
                                   int64_t count, float* out) {
  for (int64_t c = 0; c < count; ++c) {
    const Tap& tx = cols[c];
    out[c] = std::fma(std::fma(top[tx.i0], tx.w0, top[tx.i1] * tx.w1), ty.w0,
                      std::fma(bottom[tx.i0], tx.w0, bottom[tx.i1] * tx.w1) * ty.w1);
  }
}

// One output row of the second resize from crop rows a (and b); an axis the resize keeps is a copy.
LITESAM_FMA_CLONES void blend_row(const float* a, const float* b, const Tap& ty, const Tap* cols, int64_t count,
                                  bool same_rows, bool same_cols, float* out) {
  if (same_rows && same_cols) {
    for (int64_t x = 0; x < count; ++x) out[x] = a[x];
    return;
  }
  for (int64_t x = 0; x < count; ++x) {
    const Tap& tx = cols[x];
    const float a1 = same_cols ? a[tx.i0] : a[tx.i1];
    const float b0 = same_rows ? a[tx.i0] : b[tx.i0];
    const float b1 = same_rows ? a1 : (same_cols ? b[tx.i0] : b[tx.i1]);
    out[x] = std::fma(std::fma(a[tx.i0], tx.w0, a1 * tx.w1), ty.w0, std::fma(b0, tx.w0, b1 * tx.w1) * ty.w1);
  }
}

inline int32_t wrap_int16(int64_t count) { return static_cast<int16_t>(static_cast<uint16_t>(count & 0xFFFF)); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> postprocess_masks_cpu(
    const at::Tensor& logits, const at::Tensor& y1, const at::Tensor& x1, const at::Tensor& y2,
    const at::Tensor& x2, double mask_threshold, double high, double low, bool packed) {
  TORCH_CHECK_TYPE(logits.scalar_type() == at::kFloat, "low_res_logits must be float32 for the CPU kernel, got ",
                   logits.scalar_type());
  TORCH_CHECK_VALUE(logits.dim() == 3 && logits.is_contiguous(), "low_res_logits must be contiguous (N, h, w)");
  TORCH_CHECK_VALUE(logits.device().is_cpu(), "low_res_logits must be a CPU tensor for the CPU kernel");
  const int64_t n = logits.size(0), low_h = logits.size(1), low_w = logits.size(2);
  const std::vector<Tap> rows1 = read_table(y1, "y1", low_h), cols1 = read_table(x1, "x1", low_w);
  const int64_t crop_h = static_cast<int64_t>(rows1.size()), crop_w = static_cast<int64_t>(cols1.size());
  const std::vector<Tap> rows2 = read_table(y2, "y2", crop_h), cols2 = read_table(x2, "x2", crop_w);
  const int64_t height = static_cast<int64_t>(rows2.size()), width = static_cast<int64_t>(cols2.size());
  const int64_t words = (width + 31) / 32;
  const bool same_rows = crop_h == height, same_cols = crop_w == width;
  const float threshold = static_cast<float>(mask_threshold), high_f = static_cast<float>(high),
              low_f = static_cast<float>(low);

  const auto options = logits.options();
  at::Tensor masks = packed ? at::zeros({n, height, words}, options.dtype(at::kInt))
                            : at::empty({n, height, width}, options.dtype(at::kBool));
  at::Tensor stability = at::empty({n}, options.dtype(at::kFloat));
  at::Tensor boxes = at::empty({n, 4}, options.dtype(at::kLong));
  at::Tensor areas = at::empty({n}, options.dtype(at::kLong));
  const float* logits_ptr = logits.const_data_ptr<float>();
  bool* bool_out = packed ? nullptr : masks.data_ptr<bool>();
  int32_t* word_out = packed ? masks.data_ptr<int32_t>() : nullptr;
  float* stability_ptr = stability.data_ptr<float>();
  int64_t* boxes_ptr = boxes.data_ptr<int64_t>();
  int64_t* areas_ptr = areas.data_ptr<int64_t>();

  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    // Two cached rows of the (cropped) first-resize grid: output rows walk the crop rows monotonically.
    std::vector<float> cache[2] = {std::vector<float>(crop_w), std::vector<float>(crop_w)};
    int64_t cached_row[2] = {-1, -1};
    std::vector<float> value(width);
    for (int64_t m = begin; m < end; ++m) {
      const float* low_res = logits_ptr + m * low_h * low_w;
      cached_row[0] = cached_row[1] = -1;
      auto crop_row = [&](int64_t r) -> const float* {
        for (int s = 0; s < 2; ++s) {
          if (cached_row[s] == r) return cache[s].data();
        }
        const int slot = (cached_row[0] < cached_row[1]) ? 0 : 1;  // evict the lower (older) row
        const Tap& ty = rows1[r];
        float* out = cache[slot].data();
        resize_row(low_res + ty.i0 * low_w, low_res + ty.i1 * low_w, ty, cols1.data(), crop_w, out);
        cached_row[slot] = r;
        return out;
      };
      int64_t inter = 0, uni = 0, area = 0;
      int64_t top_row = height, bottom_row = -1, left = width, right = -1;
      for (int64_t y = 0; y < height; ++y) {
        const Tap& ty = rows2[y];
        const float* a = crop_row(ty.i0);
        // i1 is i0 or i0 + 1 and rows only move down, so fetching i1 never evicts i0's slot.
        const float* b = same_rows ? a : crop_row(ty.i1);
        int64_t row_inter = 0, row_union = 0, row_area = 0;
        blend_row(a, b, ty, cols2.data(), width, same_rows, same_cols, value.data());
        for (int64_t x = 0; x < width; ++x) {
          row_inter += value[x] > high_f;
          row_union += value[x] > low_f;
        }
        const int64_t row_offset = (m * height + y);
        for (int64_t x = 0; x < width; ++x) {
          const bool on = value[x] > threshold;
          if (packed) {
            if (on) word_out[row_offset * words + (x >> 5)] |= static_cast<int32_t>(1u << (x & 31));
          } else {
            bool_out[row_offset * width + x] = on;
          }
          if (on) {
            ++row_area;
            if (x < left) left = x;
            if (x > right) right = x;
          }
        }
        inter += wrap_int16(row_inter);
        uni += wrap_int16(row_union);
        area += row_area;
        if (row_area > 0) {
          if (y < top_row) top_row = y;
          bottom_row = y;
        }
      }
      const int32_t inter32 = static_cast<int32_t>(inter), union32 = static_cast<int32_t>(uni);
      stability_ptr[m] = static_cast<float>(inter32) / static_cast<float>(union32);
      areas_ptr[m] = area;
      const bool empty = right < left;
      int64_t* box = boxes_ptr + 4 * m;
      box[0] = empty ? 0 : left;
      box[1] = empty ? 0 : top_row;
      box[2] = empty ? 0 : right;
      box[3] = empty ? 0 : bottom_row;
    }
  });
  return {masks, stability, boxes, areas};
}

}  // namespace litesam
