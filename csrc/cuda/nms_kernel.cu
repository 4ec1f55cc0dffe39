// Box NMS on the device in three steps, with one host sync (the kept count):
//  1. suppression bitmask: tile (row block r, column block c >= r) of 64 x 64 boxes in visit order;
//     bit j of word mask[i][c] says box i suppresses box 64c + j. With idxs, boxes are grouped by
//     idxs, and tiles whose groups cannot meet are neither computed nor read (col_end).
//  2. one block walks the row blocks in order: the 64 boxes of a block are resolved serially from
//     their diagonal words (in shared memory), then all threads OR the kept boxes' rows into the
//     shared `removed` bitset. That is N/64 serial steps instead of torchvision's N.
//  3. masked_select of the kept positions (the one sync).
// Memory: N * ceil(N/64) * 8 bytes of device memory for the mask (1.25 GB at N = 100k), none on the host.
#include "cuda/nms_kernel.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/masked_select.h>

#include "common/box_iou.h"
#include "common/nms_common.h"

namespace litesam {
namespace {

constexpr int kBoxesPerWord = 64;
constexpr int kGatherThreads = 256;

template <typename T>
__global__ void nms_mask_kernel(int64_t n, int64_t col_blocks, const T* __restrict__ boxes,
                                const int64_t* __restrict__ groups, const int64_t* __restrict__ col_end,
                                double threshold, unsigned long long* __restrict__ mask) {
  const int64_t row_block = blockIdx.y;
  const int64_t col_block = blockIdx.x;
  if (col_block < row_block) return;
  if (col_end != nullptr && col_block >= col_end[row_block]) return;

  __shared__ T col_boxes[kBoxesPerWord * 4];
  __shared__ T col_areas[kBoxesPerWord];
  __shared__ int64_t col_groups[kBoxesPerWord];
  const int64_t col_start = col_block * kBoxesPerWord;
  const int col_count = static_cast<int>(n - col_start < kBoxesPerWord ? n - col_start : kBoxesPerWord);
  const int t = threadIdx.x;
  if (t < col_count) {
    const T* box = boxes + 4 * (col_start + t);
    for (int k = 0; k < 4; ++k) col_boxes[4 * t + k] = box[k];
    col_areas[t] = box_area(box);
    if (groups != nullptr) col_groups[t] = groups[col_start + t];
  }
  __syncthreads();

  const int64_t row = row_block * kBoxesPerWord + t;
  if (row >= n) return;
  const T* row_box = boxes + 4 * row;
  const T row_area = box_area(row_box);
  const int64_t row_group = groups != nullptr ? groups[row] : 0;
  unsigned long long bits = 0;
  for (int j = (row_block == col_block) ? t + 1 : 0; j < col_count; ++j) {
    if (groups != nullptr && col_groups[j] != row_group) continue;
    if (iou_exceeds(row_box, row_area, col_boxes + 4 * j, col_areas[j], threshold)) bits |= 1ULL << j;
  }
  mask[row * col_blocks + col_block] = bits;
}

__global__ void nms_gather_kernel(int64_t n, int64_t col_blocks, const unsigned long long* __restrict__ mask,
                                  const int64_t* __restrict__ col_end, bool* __restrict__ keep) {
  extern __shared__ unsigned long long removed[];
  __shared__ unsigned long long diagonal[kBoxesPerWord];
  __shared__ unsigned long long kept_bits;
  for (int64_t j = threadIdx.x; j < col_blocks; j += blockDim.x) removed[j] = 0;
  __syncthreads();

  for (int64_t r = 0; r < col_blocks; ++r) {
    const int64_t row_start = r * kBoxesPerWord;
    const int count = static_cast<int>(n - row_start < kBoxesPerWord ? n - row_start : kBoxesPerWord);
    if (threadIdx.x < count) diagonal[threadIdx.x] = mask[(row_start + threadIdx.x) * col_blocks + r];
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long suppressed = removed[r];
      unsigned long long kept = 0;
      for (int t = 0; t < count; ++t) {
        if (!((suppressed >> t) & 1ULL)) {
          kept |= 1ULL << t;
          suppressed |= diagonal[t];
        }
      }
      kept_bits = kept;
    }
    __syncthreads();
    const unsigned long long kept = kept_bits;
    if (threadIdx.x < count) keep[row_start + threadIdx.x] = (kept >> threadIdx.x) & 1ULL;
    const int64_t end = col_end != nullptr ? col_end[r] : col_blocks;
    for (int64_t j = r + 1 + threadIdx.x; j < end; j += blockDim.x) {
      unsigned long long acc = removed[j];
      for (unsigned long long bits = kept; bits != 0; bits &= bits - 1) {
        const int t = __ffsll(static_cast<long long>(bits)) - 1;
        acc |= mask[(row_start + t) * col_blocks + j];
      }
      removed[j] = acc;
    }
    __syncthreads();
  }
}

}  // namespace

void check_nms_gather_size(int64_t n) {
  const int64_t removed_bytes = (n + kBoxesPerWord - 1) / kBoxesPerWord * static_cast<int64_t>(sizeof(unsigned long long));
  TORCH_CHECK_VALUE(removed_bytes <= 200 * 1024, "NMS keeps a bitset of ceil(N/64) words in shared memory; N = ",
                    n, " needs ", removed_bytes, " bytes (at most 204800)");
}

at::Tensor nms_greedy_keep_cuda(const at::Tensor& mask, const c10::optional<at::Tensor>& col_end, int64_t n) {
  check_nms_gather_size(n);
  const int64_t col_blocks = (n + kBoxesPerWord - 1) / kBoxesPerWord;
  const int64_t removed_bytes = col_blocks * static_cast<int64_t>(sizeof(unsigned long long));
  at::Tensor keep = at::empty({n}, mask.options().dtype(at::kBool));
  if (removed_bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(nms_gather_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(removed_bytes)));
  }
  const auto* mask_ptr = reinterpret_cast<const unsigned long long*>(mask.const_data_ptr<int64_t>());
  const int64_t* col_end_ptr = col_end.has_value() ? col_end->const_data_ptr<int64_t>() : nullptr;
  nms_gather_kernel<<<1, kGatherThreads, removed_bytes, at::cuda::getCurrentCUDAStream()>>>(
      n, col_blocks, mask_ptr, col_end_ptr, keep.data_ptr<bool>());
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
  const int64_t col_blocks = (n + kBoxesPerWord - 1) / kBoxesPerWord;
  TORCH_CHECK_VALUE(col_blocks <= 65535, "box NMS supports at most ", 65535 * kBoxesPerWord, " boxes, got ", n);
  check_nms_gather_size(n);

  const at::Tensor order = nms_visit_order(scores, idxs);
  const at::Tensor boxes_sorted =
      boxes.index_select(0, order).to(nms_compute_type(boxes.scalar_type())).contiguous();
  at::Tensor groups_sorted, col_end;
  if (idxs.has_value()) {
    groups_sorted = idxs->index_select(0, order).to(at::kLong).contiguous();
    col_end = group_block_ends(groups_sorted, kBoxesPerWord);
  }
  const int64_t* groups_ptr = idxs.has_value() ? groups_sorted.const_data_ptr<int64_t>() : nullptr;
  const int64_t* col_end_ptr = idxs.has_value() ? col_end.const_data_ptr<int64_t>() : nullptr;

  at::Tensor mask = at::empty({n * col_blocks}, boxes.options().dtype(at::kLong));
  auto* mask_ptr = reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(col_blocks));
  AT_DISPATCH_SWITCH(boxes_sorted.scalar_type(), "batched_nms_cuda",
                     AT_DISPATCH_CASE(at::kFloat, [&] {
                       nms_mask_kernel<float><<<grid, kBoxesPerWord, 0, stream>>>(
                           n, col_blocks, boxes_sorted.const_data_ptr<float>(), groups_ptr, col_end_ptr,
                           iou_threshold, mask_ptr);
                     }) AT_DISPATCH_CASE(at::kDouble, [&] {
                       nms_mask_kernel<double><<<grid, kBoxesPerWord, 0, stream>>>(
                           n, col_blocks, boxes_sorted.const_data_ptr<double>(), groups_ptr, col_end_ptr,
                           iou_threshold, mask_ptr);
                     }));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor keep = nms_greedy_keep_cuda(mask, idxs.has_value() ? c10::optional<at::Tensor>(col_end) : c10::nullopt, n);
  at::Tensor kept = at::masked_select(order, keep);
  return idxs.has_value() ? in_score_order(kept, scores) : kept;
}

}  // namespace litesam
