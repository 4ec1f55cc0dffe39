"""AutoPPN decoding in one Triton program per image: 3x3 peak test, threshold, top-K by a packed
(score, index) key, box decode. Same semantics and arithmetic as ``ops/ppn_decode.py::_ppn_decode_reference``.

The whole heatmap of an image (64 x 64 = 4096 cells at 1024^2) sits in one block; the 8 neighbours are
re-loaded from L1/L2 rather than shuffled. Ordering uses one int64 key per cell: the logit's bits mapped to
an order-preserving int32 in the high word, ``0xFFFFFFFF - cell`` in the low word, so a descending sort
gives higher logits first and, among equal logits, the lower cell index first.
"""
import numpy as np
import torch
import triton
import triton.language as tl

from litesam_kernels.triton._configs import LaunchConfig, LaunchConfigs

_NOT_A_PEAK = tl.constexpr(-(2**63))  # below every peak's key (an order-mapped float's high word is > -2**31)
# One program holds a whole heatmap: 32 warps keep 4096 cells at 64 registers per thread; 16 warps reach the
# 128-register cap and spill, 8 spill in the full-sort branch (sm_90a AOT report).
DECODE_CONFIGS = LaunchConfigs("ppn_decode.decode", [LaunchConfig({}, num_warps=32)])


@triton.jit
def _ppn_decode_kernel(heat_ptr, box_ptr, sizes_ptr, points_ptr, boxes_ptr, scores_ptr,
                       indices_ptr, count_ptr, H, W, k, stride, threshold,
                       BLOCK: tl.constexpr, K_BLOCK: tl.constexpr, HAS_SIZES: tl.constexpr):
    image = tl.program_id(0)
    cells = tl.arange(0, BLOCK)
    hw = H * W
    y = cells // W
    x = cells % W
    if HAS_SIZES:
        image_h = tl.load(sizes_ptr + image * 2).to(tl.float32)
        image_w = tl.load(sizes_ptr + image * 2 + 1).to(tl.float32)
    else:
        image_h = (H * stride).to(tl.float32)
        image_w = (W * stride).to(tl.float32)
    heat = heat_ptr + image.to(tl.int64) * hw
    inside = (cells < hw) & ((y.to(tl.float32) + 0.5) * stride < image_h) & ((x.to(tl.float32) + 0.5) * stride < image_w)
    logit = tl.load(heat + cells, mask=inside, other=float("-inf")).to(tl.float32)
    logit = tl.where(logit != logit, float("-inf"), logit)  # NaN is never a peak and never blocks one
    local_max = logit
    for dy in tl.static_range(-1, 2):
        for dx in tl.static_range(-1, 2):
            ny = y + dy
            nx = x + dx
            ok = (inside & (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
                  & ((ny.to(tl.float32) + 0.5) * stride < image_h) & ((nx.to(tl.float32) + 0.5) * stride < image_w))
            neighbour = tl.load(heat + ny * W + nx, mask=ok, other=float("-inf")).to(tl.float32)
            neighbour = tl.where(neighbour != neighbour, float("-inf"), neighbour)
            local_max = tl.maximum(local_max, neighbour)
    peak = inside & (logit == local_max) & (logit >= threshold) & (logit > float("-inf"))
    count = tl.sum(peak.to(tl.int32), axis=0)

    canonical = tl.where(logit == 0.0, 0.0, logit)  # -0.0 and +0.0 tie, like the comparison
    bits = canonical.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = (ordered.to(tl.int64) << 32) | (0xFFFFFFFF - cells.to(tl.int64))
    key = tl.where(peak, key, _NOT_A_PEAK)
    if K_BLOCK < BLOCK:
        top = tl.topk(key, K_BLOCK)
    else:
        top = tl.sort(key, descending=True)

    rank = tl.arange(0, K_BLOCK)
    valid = (rank < count) & (rank < k)
    cell = tl.where(valid, (0xFFFFFFFF - (top & 0xFFFFFFFF)).to(tl.int32), 0)
    cy = ((cell // W).to(tl.float32) + 0.5) * stride
    cx = ((cell % W).to(tl.float32) + 0.5) * stride
    score = 1.0 / (1.0 + tl.exp(-tl.load(heat + cell, mask=valid, other=0.0).to(tl.float32)))
    box = box_ptr + image.to(tl.int64) * 4 * hw + cell
    left = tl.load(box, mask=valid, other=0.0).to(tl.float32)
    top_d = tl.load(box + hw, mask=valid, other=0.0).to(tl.float32)
    right = tl.load(box + 2 * hw, mask=valid, other=0.0).to(tl.float32)
    bottom = tl.load(box + 3 * hw, mask=valid, other=0.0).to(tl.float32)
    x1 = tl.minimum(tl.maximum(cx - left * stride, 0.0), image_w)
    y1 = tl.minimum(tl.maximum(cy - top_d * stride, 0.0), image_h)
    x2 = tl.minimum(tl.maximum(cx + right * stride, 0.0), image_w)
    y2 = tl.minimum(tl.maximum(cy + bottom * stride, 0.0), image_h)

    out = image.to(tl.int64) * k + rank
    store = rank < k
    tl.store(points_ptr + out * 2, tl.where(valid, cx, 0.0), mask=store)
    tl.store(points_ptr + out * 2 + 1, tl.where(valid, cy, 0.0), mask=store)
    tl.store(boxes_ptr + out * 4, tl.where(valid, x1, 0.0), mask=store)
    tl.store(boxes_ptr + out * 4 + 1, tl.where(valid, y1, 0.0), mask=store)
    tl.store(boxes_ptr + out * 4 + 2, tl.where(valid, x2, 0.0), mask=store)
    tl.store(boxes_ptr + out * 4 + 3, tl.where(valid, y2, 0.0), mask=store)
    tl.store(scores_ptr + out, tl.where(valid, score, 0.0), mask=store)
    tl.store(indices_ptr + out, tl.where(valid, cell.to(tl.int64), -1), mask=store)
    tl.store(count_ptr + image, tl.minimum(count, k).to(tl.int64))


def sort_blocks(cells: int, k: int):
    """(BLOCK, K_BLOCK): the keys one program sorts for ``cells`` heatmap cells and the top ``k`` it keeps."""
    k_block = max(2, triton.next_power_of_2(k))  # tl.topk of 1 would reduce to a scalar
    return max(triton.next_power_of_2(cells), k_block), k_block


def ppn_decode_launch(heatmap_logits: torch.Tensor, box_regression: torch.Tensor, image_sizes, k: int,
                      logit_threshold: float, stride: float):
    """heatmap (B, 1, H, W) and boxes (B, 4, H, W) contiguous floating; image_sizes (B, 2) int64 or None.

    ``logit_threshold`` (float64) is passed as the smallest float32 >= it: for a float32 logit the two
    comparisons agree exactly, and no device buffer (no host-to-device copy) is needed."""
    b, _, h, w = heatmap_logits.shape
    device = heatmap_logits.device
    points = torch.empty(b, k, 2, dtype=torch.float32, device=device)
    boxes = torch.empty(b, k, 4, dtype=torch.float32, device=device)
    scores = torch.empty(b, k, dtype=torch.float32, device=device)
    indices = torch.empty(b, k, dtype=torch.int64, device=device)
    counts = torch.empty(b, dtype=torch.int64, device=device)
    block, k_block = sort_blocks(h * w, k)
    sizes = image_sizes if image_sizes is not None else counts  # any int64 pointer; unused

    def run(config):
        _ppn_decode_kernel[(b,)](
            heatmap_logits, box_regression, sizes, points, boxes, scores, indices, counts,
            h, w, k, float(stride), _float32_at_least(logit_threshold),
            BLOCK=block, K_BLOCK=k_block, HAS_SIZES=image_sizes is not None, enable_fp_fusion=False,
            **config.kwargs(),
        )

    DECODE_CONFIGS.launch((block, k_block), run)
    return points, boxes, scores, indices, counts


def _float32_at_least(value: float) -> float:
    rounded = np.float32(value)
    if rounded < value:
        rounded = np.nextafter(rounded, np.float32(np.inf))
    return float(rounded)


def _signature(dtype: str) -> dict:
    return {"heat_ptr": f"*{dtype}", "box_ptr": f"*{dtype}", "sizes_ptr": "*i64",
            "points_ptr": "*fp32", "boxes_ptr": "*fp32", "scores_ptr": "*fp32", "indices_ptr": "*i64",
            "count_ptr": "*i64", "H": "i32", "W": "i32", "k": "i32", "stride": "fp32", "threshold": "fp32",
            "BLOCK": "constexpr", "K_BLOCK": "constexpr", "HAS_SIZES": "constexpr"}


# For the sm_90a AOT check in CI: (kernel, signature, constexprs, options) for every launch configuration.
# 64x64 heatmaps, K = 256 (top-k) and a 32x32 heatmap with K = 1024 (the full-sort branch).
AOT_KERNELS = [
    entry
    for dtype, constexprs in (("fp32", {"BLOCK": 4096, "K_BLOCK": 256, "HAS_SIZES": True}),
                              ("bf16", {"BLOCK": 4096, "K_BLOCK": 256, "HAS_SIZES": False}),
                              ("fp16", {"BLOCK": 1024, "K_BLOCK": 1024, "HAS_SIZES": True}))
    for entry in DECODE_CONFIGS.aot_entries(_ppn_decode_kernel, _signature(dtype), constexprs,
                                            {"enable_fp_fusion": False})
]
