"""Mask post-processing in Triton: stability counts, mask -> box partials, and the fused
upsample(256 -> 1024) + crop + upsample(-> original) + threshold + stability + box + area kernel.

Every kernel works on one (mask, block of rows) per program (a 1-D grid: any number of masks and rows)
and loops over the row in column blocks, so a program sees whole rows: SAM's int16 row sums are
reproduced exactly (a row count wraps like int16 before the int32 total). Inside the loop nothing crosses threads except the packing of 32 pixels into a
word (a reduction within one warp): counts, box extents and row occupancy accumulate per lane (per word:
popcounts, lowest and highest set bit) and are reduced once, after the loop. Programs write small
per-row-block partials (counts, first/last row and column); ``ops/mask_postprocess.py`` reduces them with
torch (no atomics, deterministic).

The bilinear weights come precomputed (and cached on the device) from the op layer (``bilinear_table``)
with torch's index arithmetic; the blends use torch's FMA form (``_mask_common.blend``). Under the
interpreter numpy has no fused multiply-add, so ``EMULATE_FMA`` computes it in float64 (exact product,
one rounding in practice). Thresholds come from a cached device tensor (``_constants``): no copy per call.
"""
import torch
import triton
import triton.language as tl

from litesam_kernels.triton import _bits
from litesam_kernels.triton import _mask_common as common
from litesam_kernels.triton._configs import LaunchConfig, LaunchConfigs
from litesam_kernels.triton._constants import device_constants

BITS = 32
# (BLOCK_H rows, BLOCK_WORDS 32-pixel words) per step; the stability kernel reads BLOCK_WORDS * 32 logits
# per row. Four pixels per thread keep the fused kernel's general case (four gathered blends per pixel)
# in registers without spills on sm_90a (eight spill); the default is also the interpreter's.
_CONFIGS = [
    LaunchConfig({"BLOCK_H": 8, "BLOCK_WORDS": 4}, num_warps=8),
    LaunchConfig({"BLOCK_H": 2, "BLOCK_WORDS": 16}, num_warps=8),
    LaunchConfig({"BLOCK_H": 2, "BLOCK_WORDS": 8}, num_warps=4),
    LaunchConfig({"BLOCK_H": 4, "BLOCK_WORDS": 16}, num_warps=16),
]
STABILITY_CONFIGS = LaunchConfigs("mask_postprocess.stability", _CONFIGS)
BOX_CONFIGS = LaunchConfigs("mask_postprocess.boxes", _CONFIGS)
POSTPROCESS_CONFIGS = LaunchConfigs("mask_postprocess.fused", _CONFIGS)


@triton.jit
def _stability_counts_kernel(logits_ptr, thresholds_ptr, partial_ptr, height, width, row_blocks,
                             BLOCK_H: tl.constexpr, BLOCK_WORDS: tl.constexpr):
    mask_id, row_block = common.mask_and_row_block(row_blocks)
    rows = row_block * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < height
    high = tl.load(thresholds_ptr)
    low = tl.load(thresholds_ptr + 1)
    row_starts = logits_ptr + mask_id.to(tl.int64) * height * width + rows[:, None].to(tl.int64) * width
    inter = tl.zeros([BLOCK_H, BLOCK_WORDS * 32], dtype=tl.int32)
    union = tl.zeros([BLOCK_H, BLOCK_WORDS * 32], dtype=tl.int32)
    for col_start in range(0, width, BLOCK_WORDS * 32):
        cols = col_start + tl.arange(0, BLOCK_WORDS * 32)
        ok = row_ok[:, None] & (cols < width)[None, :]
        values = tl.load(row_starts + cols[None, :], mask=ok, other=0.0)
        inter += ok & (values > high)
        union += ok & (values > low)
    out = partial_ptr + (mask_id.to(tl.int64) * row_blocks + row_block) * 2
    tl.store(out, tl.sum(common.wrap_int16(tl.sum(inter, axis=1)), axis=0))
    tl.store(out + 1, tl.sum(common.wrap_int16(tl.sum(union, axis=1)), axis=0))


@triton.jit
def _mask_box_kernel(masks_ptr, box_ptr, height, width, words, row_blocks,
                     PACKED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_WORDS: tl.constexpr):
    """Per (mask, row block): first/last non-empty row and column (col min > col max when empty)."""
    mask_id, row_block = common.mask_and_row_block(row_blocks)
    rows = row_block * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < height
    big = height + width + 1
    row_any = tl.zeros([BLOCK_H, BLOCK_WORDS], dtype=tl.int1)
    col_lo = tl.full([BLOCK_H, BLOCK_WORDS], big, dtype=tl.int32)
    col_hi = tl.full([BLOCK_H, BLOCK_WORDS], -1, dtype=tl.int32)
    bits = tl.arange(0, 32)
    if PACKED:
        row_starts = masks_ptr + mask_id.to(tl.int64) * height * words + rows[:, None].to(tl.int64) * words
        for word_start in range(0, words, BLOCK_WORDS):
            word_ids = word_start + tl.arange(0, BLOCK_WORDS)
            ok = row_ok[:, None] & (word_ids < words)[None, :]
            w = tl.load(row_starts + word_ids[None, :], mask=ok, other=0)
            row_any = row_any | (w != 0)
            col_lo, col_hi = common.word_extent(w, word_ids[None, :], col_lo, col_hi, big)
    else:
        row_starts = (masks_ptr + mask_id.to(tl.int64) * height * width
                      + rows[:, None, None].to(tl.int64) * width)
        for word_start in range(0, tl.cdiv(width, 32), BLOCK_WORDS):
            word_ids = word_start + tl.arange(0, BLOCK_WORDS)
            cols = word_ids[:, None] * 32 + bits[None, :]  # [W, 32]
            ok = row_ok[:, None, None] & (cols < width)[None, :, :]
            w = common.pack_last_axis(tl.load(row_starts + cols[None, :, :], mask=ok, other=0) != 0, bits)
            row_any = row_any | (w != 0)
            col_lo, col_hi = common.word_extent(w, word_ids[None, :], col_lo, col_hi, big)
    common.store_box_partial(box_ptr, mask_id, row_block, row_blocks, rows,
                             (tl.max(row_any.to(tl.int32), axis=1) > 0) & row_ok,
                             tl.min(tl.min(col_lo, axis=1), axis=0), tl.max(tl.max(col_hi, axis=1), axis=0),
                             height, width)


@triton.jit
def _postprocess_kernel(logits_ptr, y1_ptr, x1_ptr, y2_ptr, x2_ptr, thresholds_ptr,
                        masks_ptr, partial_ptr, box_ptr,
                        low_h, low_w, crop_h, crop_w, height, width, words, row_blocks,
                        PACKED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_WORDS: tl.constexpr,
                        SAME_HEIGHT: tl.constexpr, SAME_WIDTH: tl.constexpr, EMULATE_FMA: tl.constexpr,
                        HW_POPC: tl.constexpr):
    """Tables: struct-of-arrays float32 (4, size) rows i0, i1, w0, w1: y1 (crop_h), x1 (crop_w) map the
    crop to the low-res logits, y2 (height), x2 (width) the output to the crop.

    A step is a [32, BLOCK_WORDS, BLOCK_H] tile: (bit, word, row), the bit axis first. The layout Triton
    gives the gathered logits puts lanes on the first axis, so the 32 pixels of a word sit in one warp and
    packing them is a warp reduction, with no shared memory (checked in the sm_90a TTGIR/SASS)."""
    mask_id, row_block = common.mask_and_row_block(row_blocks)
    out_dtype = logits_ptr.dtype.element_ty
    rows = row_block * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < height
    # Second resize, rows: two crop-grid rows and their weights per output row.
    sr0 = tl.load(y2_ptr + rows, mask=row_ok, other=0).to(tl.int32)[None, None, :]
    sr1 = tl.load(y2_ptr + height + rows, mask=row_ok, other=0).to(tl.int32)[None, None, :]
    sw0 = tl.load(y2_ptr + 2 * height + rows, mask=row_ok, other=0.0)[None, None, :]
    sw1 = tl.load(y2_ptr + 3 * height + rows, mask=row_ok, other=0.0)[None, None, :]
    # First resize, rows: the taps of both crop rows, loaded once (loop-invariant).
    row_taps0 = common.stage1_taps(y1_ptr, crop_h, sr0)
    if SAME_HEIGHT:
        row_taps1 = row_taps0
    else:
        row_taps1 = common.stage1_taps(y1_ptr, crop_h, sr1)
    mask_threshold = tl.load(thresholds_ptr)
    high = tl.load(thresholds_ptr + 1)
    low = tl.load(thresholds_ptr + 2)
    logits_base = logits_ptr + mask_id.to(tl.int64) * low_h * low_w
    bits = tl.arange(0, 32)[:, None]
    big = height + width + 1
    # Per lane (one word of one row): popcounts of the three thresholded words, and the box extent.
    inter = tl.zeros([BLOCK_WORDS, BLOCK_H], dtype=tl.int32)
    union = tl.zeros([BLOCK_WORDS, BLOCK_H], dtype=tl.int32)
    area = tl.zeros([BLOCK_WORDS, BLOCK_H], dtype=tl.int32)
    col_lo = tl.full([BLOCK_WORDS, BLOCK_H], big, dtype=tl.int32)
    col_hi = tl.full([BLOCK_WORDS, BLOCK_H], -1, dtype=tl.int32)
    out_rows = mask_id.to(tl.int64) * height + rows[None, :].to(tl.int64)  # [1, H]
    for word_start in range(0, words, BLOCK_WORDS):
        word_ids = word_start + tl.arange(0, BLOCK_WORDS)
        cols = word_ids[None, :] * 32 + bits  # [32, W]
        col_ok = cols < width
        if SAME_WIDTH:  # the table is the identity (i, i, 1, 0): no need to read it
            sc0 = tl.where(col_ok, cols, 0)[:, :, None]
            sc1 = sc0
            cw0 = tl.full([32, BLOCK_WORDS, 1], 1.0, tl.float32)
            cw1 = tl.zeros([32, BLOCK_WORDS, 1], tl.float32)
        else:
            sc0 = tl.load(x2_ptr + cols, mask=col_ok, other=0).to(tl.int32)[:, :, None]
            sc1 = tl.load(x2_ptr + width + cols, mask=col_ok, other=0).to(tl.int32)[:, :, None]
            cw0 = tl.load(x2_ptr + 2 * width + cols, mask=col_ok, other=0.0)[:, :, None]
            cw1 = tl.load(x2_ptr + 3 * width + cols, mask=col_ok, other=0.0)[:, :, None]
        # The four 1024-grid values, rounded to the logits dtype as torch stores them between the resizes.
        # An axis the second resize keeps (crop size == output size) is a copy in torch: its weights are
        # (1, 0) with both taps on the same sample, so one stage-1 value serves both taps.
        col_taps0 = common.stage1_taps(x1_ptr, crop_w, sc0)
        v00 = common.stage1(logits_base, low_w, row_taps0, col_taps0, out_dtype, EMULATE_FMA)
        if SAME_WIDTH:
            col_taps1 = col_taps0
            v01 = v00
        else:
            col_taps1 = common.stage1_taps(x1_ptr, crop_w, sc1)
            v01 = common.stage1(logits_base, low_w, row_taps0, col_taps1, out_dtype, EMULATE_FMA)
        if SAME_HEIGHT:
            v10 = v00
            v11 = v01
        else:
            v10 = common.stage1(logits_base, low_w, row_taps1, col_taps0, out_dtype, EMULATE_FMA)
            if SAME_WIDTH:
                v11 = v10
            else:
                v11 = common.stage1(logits_base, low_w, row_taps1, col_taps1, out_dtype, EMULATE_FMA)
        if SAME_HEIGHT and SAME_WIDTH:
            value = v00
        else:
            value = common.blend(v00, v01, v10, v11, sw0, sw1, cw0, cw1, EMULATE_FMA).to(out_dtype).to(tl.float32)
        ok = col_ok[:, :, None] & row_ok[None, None, :]
        binary = ok & (value > mask_threshold)
        packed = common.pack_bits_first(binary)  # [W, H]
        inter += _bits.popcount32(common.pack_bits_first(ok & (value > high)), HW_POPC)
        union += _bits.popcount32(common.pack_bits_first(ok & (value > low)), HW_POPC)
        area += _bits.popcount32(packed, HW_POPC)
        col_lo, col_hi = common.word_extent(packed, word_ids[:, None], col_lo, col_hi, big)
        if PACKED:
            word_ok = (word_ids < words)[:, None] & row_ok[None, :]
            tl.store(masks_ptr + out_rows * words + word_ids[:, None], packed, mask=word_ok)
        else:
            tl.store(masks_ptr + out_rows[None, :, :] * width + cols[:, :, None], binary.to(tl.int8), mask=ok)
    row_area = tl.sum(area, axis=0)
    part = partial_ptr + (mask_id.to(tl.int64) * row_blocks + row_block) * 3
    tl.store(part, tl.sum(common.wrap_int16(tl.sum(inter, axis=0)), axis=0))
    tl.store(part + 1, tl.sum(common.wrap_int16(tl.sum(union, axis=0)), axis=0))
    tl.store(part + 2, tl.sum(row_area, axis=0))
    common.store_box_partial(box_ptr, mask_id, row_block, row_blocks, rows, (row_area > 0) & row_ok,
                             tl.min(tl.min(col_lo, axis=1), axis=0), tl.max(tl.max(col_hi, axis=1), axis=0),
                             height, width)


def stability_counts(logits: torch.Tensor, high: float, low: float) -> torch.Tensor:
    """(M, row_blocks, 2) int32 partial [intersection, union] counts of contiguous (M, H, W) logits."""
    m, height, width = logits.shape
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    thresholds = device_constants((high, low), compute, logits.device)

    def run(config):
        row_blocks = triton.cdiv(height, config.meta["BLOCK_H"])
        partial = torch.empty((m, row_blocks, 2), dtype=torch.int32, device=logits.device)
        _stability_counts_kernel[(m * row_blocks,)](logits, thresholds, partial, height, width, row_blocks,
                                                  **config.kwargs())
        return partial

    return STABILITY_CONFIGS.launch((logits.dtype, height, width), run)


def box_partials(masks: torch.Tensor, width: int, packed: bool) -> torch.Tensor:
    """(M, row_blocks, 4) int32 partial [left, top, right, bottom] of contiguous (M, H, W|words) masks."""
    m, height, last = masks.shape
    source = masks if packed else masks.view(torch.int8)

    def run(config):
        row_blocks = triton.cdiv(height, config.meta["BLOCK_H"])
        partial = torch.empty((m, row_blocks, 4), dtype=torch.int32, device=masks.device)
        _mask_box_kernel[(m * row_blocks,)](source, partial, height, width, last if packed else 0, row_blocks,
                                          PACKED=packed, **config.kwargs())
        return partial

    return BOX_CONFIGS.launch((packed, height, width), run)


def fused_postprocess(logits, y1, x1, y2, x2, thresholds, height: int, width: int, packed: bool, interpret: bool):
    """Run the fused kernel; returns (masks, count partials (N, RB, 3), box partials (N, RB, 4)).
    y1/x1: stage-1 tables (crop rows/cols -> low-res), y2/x2: stage-2 tables (output -> crop), each
    struct-of-arrays (4, size) float32 contiguous;
    thresholds: (mask threshold, high, low) already rounded to the logits dtype (so exact in float32)."""
    n, low_h, low_w = logits.shape
    thresholds = device_constants(thresholds, torch.float32, logits.device)
    words = triton.cdiv(width, BITS)
    device = logits.device
    if packed:
        masks = torch.empty((n, height, words), dtype=torch.int32, device=device)
        target = masks
    else:
        masks = torch.empty((n, height, width), dtype=torch.bool, device=device)
        target = masks.view(torch.int8)

    def run(config):
        row_blocks = triton.cdiv(height, config.meta["BLOCK_H"])
        partial = torch.empty((n, row_blocks, 3), dtype=torch.int32, device=device)
        boxes = torch.empty((n, row_blocks, 4), dtype=torch.int32, device=device)
        if n > 0 and row_blocks > 0:
            _postprocess_kernel[(n * row_blocks,)](
                logits, y1, x1, y2, x2, thresholds, target, partial, boxes,
                low_h, low_w, y1.shape[1], x1.shape[1], height, width, words, row_blocks,
                PACKED=packed, SAME_HEIGHT=y1.shape[1] == height, SAME_WIDTH=x1.shape[1] == width,
                EMULATE_FMA=interpret, HW_POPC=_bits.hardware_popcount(), enable_fp_fusion=False,
                **config.kwargs(),
            )
        return partial, boxes

    partial, boxes = POSTPROCESS_CONFIGS.launch((logits.dtype, packed, low_h, low_w, y1.shape[1], x1.shape[1],
                                                 height, width), run)
    return masks, partial, boxes


_POST_SIG = {"logits_ptr": "*fp32", "y1_ptr": "*fp32", "x1_ptr": "*fp32", "y2_ptr": "*fp32", "x2_ptr": "*fp32",
             "thresholds_ptr": "*fp32", "masks_ptr": "*i8", "partial_ptr": "*i32", "box_ptr": "*i32",
             "low_h": "i32", "low_w": "i32", "crop_h": "i32", "crop_w": "i32", "height": "i32", "width": "i32",
             "words": "i32", "row_blocks": "i32",
             "PACKED": "constexpr", "BLOCK_H": "constexpr", "BLOCK_WORDS": "constexpr", "SAME_HEIGHT": "constexpr",
             "SAME_WIDTH": "constexpr", "EMULATE_FMA": "constexpr", "HW_POPC": "constexpr"}

_STABILITY_SIG = {"logits_ptr": "*fp32", "thresholds_ptr": "*fp32", "partial_ptr": "*i32", "height": "i32",
                  "width": "i32", "row_blocks": "i32", "BLOCK_H": "constexpr", "BLOCK_WORDS": "constexpr"}
_BOX_SIG = {"masks_ptr": "*i8", "box_ptr": "*i32", "height": "i32", "width": "i32", "words": "i32",
            "row_blocks": "i32", "PACKED": "constexpr", "BLOCK_H": "constexpr", "BLOCK_WORDS": "constexpr"}
_FUSED = {"EMULATE_FMA": False, "HW_POPC": True}

# For the sm_90a AOT check in CI: (kernel, signature, constexprs, options) for every launch configuration.
AOT_KERNELS = [
    entry for logits, thresholds in (("*fp32", "*fp32"), ("*bf16", "*fp32"), ("*fp16", "*fp32"), ("*fp64", "*fp64"))
    for entry in STABILITY_CONFIGS.aot_entries(
        _stability_counts_kernel, dict(_STABILITY_SIG, logits_ptr=logits, thresholds_ptr=thresholds), {})
] + [
    entry for packed in (False, True)
    for entry in BOX_CONFIGS.aot_entries(_mask_box_kernel, dict(_BOX_SIG, masks_ptr="*i32" if packed else "*i8"),
                                         {"PACKED": packed})
] + [
    entry for logits, packed, same in (("*fp32", False, False), ("*fp16", False, False), ("*bf16", True, True),
                                       ("*bf16", True, False), ("*fp16", True, False))
    for entry in POSTPROCESS_CONFIGS.aot_entries(
        _postprocess_kernel, dict(_POST_SIG, logits_ptr=logits, masks_ptr="*i32" if packed else "*i8"),
        dict(_FUSED, PACKED=packed, SAME_HEIGHT=same, SAME_WIDTH=same), {"enable_fp_fusion": False})
]
