"""Mask IoU on bit-packed masks in Triton (layout: ``ops/bitmask.py``): per-mask areas, and one program
per tile of BLOCK_I x BLOCK_J mask pairs that ANDs and popcounts only the rows and words where some pair's
boxes intersect (a tile whose boxes meet nowhere reads no mask word). Popcount is SWAR bit arithmetic:
libdevice ``popc`` does not run in the CPU interpreter. Mask NMS in Triton thresholds this IoU and reuses
box NMS's greedy walk (``triton/nms.py``); see ``ops/mask_nms.py``."""
import torch
import triton
import triton.language as tl

from litesam_kernels.triton import _bits

AREA_BLOCK_M = 16
AREA_BLOCK = 256
# Big tiles: the CPU interpreter pays per program instance, the GPU gets 16K lanes of work per step.
BLOCK_I = 32
BLOCK_J = 32
BLOCK_K = 16
NUM_WARPS = 8


@triton.jit
def _mask_area_kernel(packed_ptr, areas_ptr, n, mask_words, BLOCK_M: tl.constexpr, BLOCK: tl.constexpr):
    masks = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    base = masks.to(tl.int64) * mask_words
    total = tl.zeros([BLOCK_M, BLOCK], dtype=tl.int32)
    for start in range(0, mask_words, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        ok = (masks < n)[:, None] & (offsets < mask_words)[None, :]
        words = tl.load(packed_ptr + base[:, None] + offsets[None, :], mask=ok, other=0)
        total += _bits.popcount32(words.to(tl.uint32, bitcast=True))
    tl.store(areas_ptr + masks, tl.sum(total, axis=1), mask=masks < n)


@triton.jit
def _mask_iou_kernel(a_ptr, b_ptr, win_a_ptr, win_b_ptr, area_a_ptr, area_b_ptr, iou_ptr, na, nb, words,
                     mask_words, UPPER: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    rows = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    cols = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    row_ok = rows < na
    col_ok = cols < nb
    # Windows: int32 inclusive (x0, y0, x1, y1), already clipped to the mask.
    ax0 = tl.load(win_a_ptr + rows * 4 + 0, mask=row_ok, other=0)
    ay0 = tl.load(win_a_ptr + rows * 4 + 1, mask=row_ok, other=0)
    ax1 = tl.load(win_a_ptr + rows * 4 + 2, mask=row_ok, other=-1)
    ay1 = tl.load(win_a_ptr + rows * 4 + 3, mask=row_ok, other=-1)
    bx0 = tl.load(win_b_ptr + cols * 4 + 0, mask=col_ok, other=0)
    by0 = tl.load(win_b_ptr + cols * 4 + 1, mask=col_ok, other=0)
    bx1 = tl.load(win_b_ptr + cols * 4 + 2, mask=col_ok, other=-1)
    by1 = tl.load(win_b_ptr + cols * 4 + 3, mask=col_ok, other=-1)
    x0 = tl.maximum(ax0[:, None], bx0[None, :])
    y0 = tl.maximum(ay0[:, None], by0[None, :])
    x1 = tl.minimum(ax1[:, None], bx1[None, :])
    y1 = tl.minimum(ay1[:, None], by1[None, :])
    wanted = row_ok[:, None] & col_ok[None, :]
    if UPPER:
        wanted = wanted & (cols[None, :] > rows[:, None])
    overlap = wanted & (x0 <= x1) & (y0 <= y1)
    big = 2147483647
    # The smallest window holding every overlapping pair's intersection (empty when none overlap).
    row_lo = tl.min(tl.min(tl.where(overlap, y0, big), axis=1), axis=0)
    row_hi = tl.max(tl.max(tl.where(overlap, y1, -1), axis=1), axis=0)
    word_lo = tl.min(tl.min(tl.where(overlap, x0 // 32, big), axis=1), axis=0)
    word_hi = tl.max(tl.max(tl.where(overlap, x1 // 32, -1), axis=1), axis=0)
    span = tl.maximum(word_hi - word_lo + 1, 1)
    positions = tl.maximum(row_hi - row_lo + 1, 0) * span

    a_base = rows.to(tl.int64) * mask_words
    b_base = cols.to(tl.int64) * mask_words
    inter = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.int32)
    for start in range(0, positions, BLOCK_K):
        p = start + tl.arange(0, BLOCK_K)
        p_ok = p < positions
        offsets = ((row_lo + p // span) * words + word_lo + p % span).to(tl.int64)
        a = tl.load(a_ptr + a_base[:, None] + offsets[None, :], mask=row_ok[:, None] & p_ok[None, :], other=0)
        b = tl.load(b_ptr + b_base[:, None] + offsets[None, :], mask=col_ok[:, None] & p_ok[None, :], other=0)
        both = a.to(tl.uint32, bitcast=True)[:, None, :] & b.to(tl.uint32, bitcast=True)[None, :, :]
        inter += tl.sum(_bits.popcount32(both), axis=2)

    area_a = tl.load(area_a_ptr + rows, mask=row_ok, other=0)
    area_b = tl.load(area_b_ptr + cols, mask=col_ok, other=0)
    union = area_a[:, None] + area_b[None, :] - inter
    # Exact counts divided in float64 and rounded once to float32: the same value as every backend.
    iou = (inter.to(tl.float64) / tl.maximum(union, 1).to(tl.float64)).to(tl.float32)
    iou = tl.where(union > 0, iou, 0.0)
    out = rows.to(tl.int64)[:, None] * nb + cols[None, :]
    tl.store(iou_ptr + out, iou, mask=wanted)


def mask_areas(packed: torch.Tensor) -> torch.Tensor:
    """Pixel count (int32) of each packed mask (N, H, ceil(W/32)) int32, contiguous."""
    n = packed.shape[0]
    areas = torch.empty(n, dtype=torch.int32, device=packed.device)
    if n:
        _mask_area_kernel[(triton.cdiv(n, AREA_BLOCK_M),)](
            packed, areas, n, packed.shape[1] * packed.shape[2], BLOCK_M=AREA_BLOCK_M, BLOCK=AREA_BLOCK, num_warps=4)
    return areas


def mask_iou(packed_a: torch.Tensor, windows_a: torch.Tensor, packed_b: torch.Tensor, windows_b: torch.Tensor,
             upper: bool) -> torch.Tensor:
    """float32 (Na, Nb) IoU of contiguous packed masks; windows are int32 (N, 4) inclusive boxes clipped to
    the mask that enclose each mask. With ``upper``, only entries j > i are computed (the rest are 0)."""
    na, nb = packed_a.shape[0], packed_b.shape[0]
    iou = torch.zeros(na, nb, dtype=torch.float32, device=packed_a.device)
    if na == 0 or nb == 0:
        return iou
    area_a = mask_areas(packed_a)
    area_b = area_a if packed_b is packed_a else mask_areas(packed_b)
    words = packed_a.shape[2]
    grid = (triton.cdiv(nb, BLOCK_J), triton.cdiv(na, BLOCK_I))
    _mask_iou_kernel[grid](
        packed_a, packed_b, windows_a, windows_b, area_a, area_b, iou, na, nb, words, packed_a.shape[1] * words,
        UPPER=upper, BLOCK_I=BLOCK_I, BLOCK_J=BLOCK_J, BLOCK_K=BLOCK_K, num_warps=NUM_WARPS,
    )
    return iou


# For the sm_90a AOT check in CI: (kernel, signature, constexprs, options).
_IOU_SIGNATURE = {
    "a_ptr": "*i32", "b_ptr": "*i32", "win_a_ptr": "*i32", "win_b_ptr": "*i32", "area_a_ptr": "*i32",
    "area_b_ptr": "*i32", "iou_ptr": "*fp32", "na": "i32", "nb": "i32", "words": "i32", "mask_words": "i32",
    "UPPER": "constexpr", "BLOCK_I": "constexpr", "BLOCK_J": "constexpr", "BLOCK_K": "constexpr",
}
AOT_KERNELS = [
    (_mask_area_kernel, {"packed_ptr": "*i32", "areas_ptr": "*i32", "n": "i32", "mask_words": "i32",
                         "BLOCK_M": "constexpr", "BLOCK": "constexpr"},
     {"BLOCK_M": AREA_BLOCK_M, "BLOCK": AREA_BLOCK}, {"num_warps": 4}),
] + [
    (_mask_iou_kernel, _IOU_SIGNATURE,
     {"UPPER": upper, "BLOCK_I": BLOCK_I, "BLOCK_J": BLOCK_J, "BLOCK_K": BLOCK_K}, {"num_warps": NUM_WARPS})
    for upper in (True, False)
]
