"""Mask post-processing in Triton: stability counts, mask -> box partials, and the fused
upsample(256 -> 1024) + crop + upsample(-> original) + threshold + stability + box + area kernel.

Every kernel works on one (mask, block of rows) per program and loops over the row in column blocks, so
a program sees whole rows: SAM's int16 row sums are reproduced exactly (a row count wraps like int16
before the int32 total). Programs write small per-row-block partials (counts, first/last row and
column); ``ops/mask_postprocess.py`` reduces them with torch (no atomics, deterministic).

The bilinear weights come precomputed from the op layer (``bilinear_table``) with torch's index
arithmetic; the blends use torch's FMA form (``_mask_common.blend``). Under the interpreter numpy has no fused
multiply-add, so ``EMULATE_FMA`` computes it in float64 (exact product, one rounding in practice).
"""
import torch
import triton
import triton.language as tl

from litesam_kernels.triton import _mask_common as common

BITS = 32
# (rows per program, 32-bit words per column block): big blocks under the interpreter (fewer numpy ops).
GPU_BLOCKS = (8, 4)
INTERPRETER_BLOCKS = (32, 8)


@triton.jit
def _stability_counts_kernel(logits_ptr, thresholds_ptr, partial_ptr, height, width, row_blocks,
                             BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    mask_id = tl.program_id(0)
    row_block = tl.program_id(1)
    rows = row_block * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < height
    high = tl.load(thresholds_ptr)
    low = tl.load(thresholds_ptr + 1)
    base = logits_ptr + mask_id.to(tl.int64) * height * width
    inter = tl.zeros([BLOCK_H], dtype=tl.int32)
    union = tl.zeros([BLOCK_H], dtype=tl.int32)
    for col_start in range(0, width, BLOCK_W):
        cols = col_start + tl.arange(0, BLOCK_W)
        ok = row_ok[:, None] & (cols < width)[None, :]
        values = tl.load(base + rows[:, None].to(tl.int64) * width + cols[None, :], mask=ok, other=0.0)
        inter += tl.sum((ok & (values > high)).to(tl.int32), axis=1)
        union += tl.sum((ok & (values > low)).to(tl.int32), axis=1)
    out = partial_ptr + (mask_id.to(tl.int64) * row_blocks + row_block) * 2
    tl.store(out, tl.sum(common.wrap_int16(inter), axis=0))
    tl.store(out + 1, tl.sum(common.wrap_int16(union), axis=0))


@triton.jit
def _mask_box_kernel(masks_ptr, box_ptr, height, width, words, row_blocks,
                     PACKED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_WORDS: tl.constexpr):
    """Per (mask, row block): first/last non-empty row and column (col min > col max when empty)."""
    mask_id = tl.program_id(0)
    row_block = tl.program_id(1)
    rows = row_block * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < height
    big = height + width + 1
    row_any = tl.zeros([BLOCK_H], dtype=tl.int1)
    col_min = big
    col_max = -1
    bits = tl.arange(0, 32)
    if PACKED:
        base = masks_ptr + mask_id.to(tl.int64) * height * words
        for word_start in range(0, words, BLOCK_WORDS):
            word_ids = word_start + tl.arange(0, BLOCK_WORDS)
            ok = row_ok[:, None] & (word_ids < words)[None, :]
            w = tl.load(base + rows[:, None].to(tl.int64) * words + word_ids[None, :], mask=ok, other=0)
            row_any = row_any | (tl.max((w != 0).to(tl.int32), axis=1) > 0)
            ored = common.or_rows(w)
            set_bits = ((ored[:, None] >> bits[None, :]) & 1) != 0
            x = word_ids[:, None] * 32 + bits[None, :]
            col_min = tl.minimum(col_min, tl.min(tl.min(tl.where(set_bits, x, big), axis=1), axis=0))
            col_max = tl.maximum(col_max, tl.max(tl.max(tl.where(set_bits, x, -1), axis=1), axis=0))
    else:
        base = masks_ptr + mask_id.to(tl.int64) * height * width
        for col_start in range(0, width, BLOCK_WORDS * 32):
            cols = col_start + tl.arange(0, BLOCK_WORDS * 32)
            ok = row_ok[:, None] & (cols < width)[None, :]
            m = tl.load(base + rows[:, None].to(tl.int64) * width + cols[None, :], mask=ok, other=0) != 0
            m = m & ok
            row_any = row_any | (tl.max(m.to(tl.int32), axis=1) > 0)
            col_any = tl.max(m.to(tl.int32), axis=0) > 0
            col_min = tl.minimum(col_min, tl.min(tl.where(col_any, cols, big), axis=0))
            col_max = tl.maximum(col_max, tl.max(tl.where(col_any, cols, -1), axis=0))
    common.store_box_partial(box_ptr, mask_id, row_block, row_blocks, rows, row_any & row_ok, col_min, col_max,
                             height, width)


@triton.jit
def _postprocess_kernel(logits_ptr, y1_ptr, x1_ptr, y2_ptr, x2_ptr, thresholds_ptr,
                        masks_ptr, partial_ptr, box_ptr,
                        low_h, low_w, height, width, words, row_blocks,
                        PACKED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_WORDS: tl.constexpr,
                        SAME_HEIGHT: tl.constexpr, SAME_WIDTH: tl.constexpr, EMULATE_FMA: tl.constexpr):
    mask_id = tl.program_id(0)
    row_block = tl.program_id(1)
    out_dtype = logits_ptr.dtype.element_ty
    rows = row_block * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < height
    safe_rows = tl.where(row_ok, rows, 0)
    # Second resize, rows: two crop-grid rows and their weights per output row.
    sr0 = tl.load(y2_ptr + safe_rows * 4 + 0).to(tl.int32)[:, None, None]
    sr1 = tl.load(y2_ptr + safe_rows * 4 + 1).to(tl.int32)[:, None, None]
    sw0 = tl.load(y2_ptr + safe_rows * 4 + 2)[:, None, None]
    sw1 = tl.load(y2_ptr + safe_rows * 4 + 3)[:, None, None]
    mask_threshold = tl.load(thresholds_ptr)
    high = tl.load(thresholds_ptr + 1)
    low = tl.load(thresholds_ptr + 2)
    logits_base = logits_ptr + mask_id.to(tl.int64) * low_h * low_w
    bits = tl.arange(0, 32)
    big = height + width + 1
    inter = tl.zeros([BLOCK_H], dtype=tl.int32)
    union = tl.zeros([BLOCK_H], dtype=tl.int32)
    area = tl.zeros([BLOCK_H], dtype=tl.int32)
    row_any = tl.zeros([BLOCK_H], dtype=tl.int1)
    col_min = big
    col_max = -1
    for word_start in range(0, words, BLOCK_WORDS):
        word_ids = word_start + tl.arange(0, BLOCK_WORDS)
        cols = word_ids[:, None] * 32 + bits[None, :]  # [W, 32]
        col_ok = cols < width
        safe_cols = tl.where(col_ok, cols, 0)[None, :, :]
        sc0 = tl.load(x2_ptr + safe_cols * 4 + 0).to(tl.int32)
        sc1 = tl.load(x2_ptr + safe_cols * 4 + 1).to(tl.int32)
        cw0 = tl.load(x2_ptr + safe_cols * 4 + 2)
        cw1 = tl.load(x2_ptr + safe_cols * 4 + 3)
        # The four 1024-grid values, rounded to the logits dtype as torch stores them between the resizes.
        # An axis the second resize keeps (crop size == output size) is a copy in torch: its weights are
        # (1, 0) with both taps on the same sample, so one stage-1 value serves both taps.
        v00 = common.stage1(logits_base, low_w, sr0, y1_ptr, x1_ptr, sc0, EMULATE_FMA).to(out_dtype).to(tl.float32)
        if SAME_WIDTH:
            v01 = v00
        else:
            v01 = common.stage1(logits_base, low_w, sr0, y1_ptr, x1_ptr, sc1, EMULATE_FMA).to(out_dtype).to(tl.float32)
        if SAME_HEIGHT:
            v10 = v00
            v11 = v01
        else:
            v10 = common.stage1(logits_base, low_w, sr1, y1_ptr, x1_ptr, sc0, EMULATE_FMA).to(out_dtype).to(tl.float32)
            if SAME_WIDTH:
                v11 = v10
            else:
                v11 = common.stage1(logits_base, low_w, sr1, y1_ptr, x1_ptr, sc1,
                                    EMULATE_FMA).to(out_dtype).to(tl.float32)
        if SAME_HEIGHT and SAME_WIDTH:
            value = v00
        else:
            value = common.blend(v00, v01, v10, v11, sw0, sw1, cw0, cw1, EMULATE_FMA).to(out_dtype).to(tl.float32)
        ok = row_ok[:, None, None] & col_ok[None, :, :]
        binary = ok & (value > mask_threshold)
        inter += tl.sum(tl.sum((ok & (value > high)).to(tl.int32), axis=2), axis=1)
        union += tl.sum(tl.sum((ok & (value > low)).to(tl.int32), axis=2), axis=1)
        per_row = tl.sum(tl.sum(binary.to(tl.int32), axis=2), axis=1)
        area += per_row
        row_any = row_any | (per_row > 0)
        col_any = tl.max(binary.to(tl.int32), axis=0) > 0  # [W, 32]
        col_min = tl.minimum(col_min, tl.min(tl.min(tl.where(col_any, cols, big), axis=1), axis=0))
        col_max = tl.maximum(col_max, tl.max(tl.max(tl.where(col_any, cols, -1), axis=1), axis=0))
        out_rows = rows[:, None].to(tl.int64)
        if PACKED:
            packed = tl.sum(binary.to(tl.int64) << bits[None, None, :].to(tl.int64), axis=2).to(tl.int32)
            word_ok = row_ok[:, None] & (word_ids < words)[None, :]
            out = masks_ptr + (mask_id.to(tl.int64) * height + out_rows) * words + word_ids[None, :]
            tl.store(out, packed, mask=word_ok)
        else:
            out = masks_ptr + (mask_id.to(tl.int64) * height + out_rows[:, :, None]) * width + cols[None, :, :]
            tl.store(out, binary.to(tl.int8), mask=ok)
    part = partial_ptr + (mask_id.to(tl.int64) * row_blocks + row_block) * 3
    tl.store(part, tl.sum(common.wrap_int16(inter), axis=0))
    tl.store(part + 1, tl.sum(common.wrap_int16(union), axis=0))
    tl.store(part + 2, tl.sum(area, axis=0))
    common.store_box_partial(box_ptr, mask_id, row_block, row_blocks, rows, row_any & row_ok, col_min, col_max,
                             height, width)


def _blocks(interpret: bool):
    return INTERPRETER_BLOCKS if interpret else GPU_BLOCKS


def stability_counts(logits: torch.Tensor, high: float, low: float, interpret: bool) -> torch.Tensor:
    """(M, row_blocks, 2) int32 partial [intersection, union] counts of contiguous (M, H, W) logits."""
    m, height, width = logits.shape
    block_h, block_words = _blocks(interpret)
    row_blocks = triton.cdiv(height, block_h)
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    thresholds = torch.tensor([high, low], dtype=compute, device=logits.device)
    partial = torch.empty((m, row_blocks, 2), dtype=torch.int32, device=logits.device)
    _stability_counts_kernel[(m, row_blocks)](logits, thresholds, partial, height, width, row_blocks,
                                              BLOCK_H=block_h, BLOCK_W=block_words * BITS, num_warps=4)
    return partial


def box_partials(masks: torch.Tensor, width: int, packed: bool, interpret: bool) -> torch.Tensor:
    """(M, row_blocks, 4) int32 partial [left, top, right, bottom] of contiguous (M, H, W|words) masks."""
    m, height, last = masks.shape
    block_h, block_words = _blocks(interpret)
    row_blocks = triton.cdiv(height, block_h)
    partial = torch.empty((m, row_blocks, 4), dtype=torch.int32, device=masks.device)
    source = masks if packed else masks.view(torch.int8)
    _mask_box_kernel[(m, row_blocks)](source, partial, height, width, last if packed else 0, row_blocks,
                                      PACKED=packed, BLOCK_H=block_h, BLOCK_WORDS=block_words, num_warps=4)
    return partial


def fused_postprocess(logits, y1, x1, y2, x2, thresholds, height: int, width: int, packed: bool, interpret: bool):
    """Run the fused kernel; returns (masks, count partials (N, RB, 3), box partials (N, RB, 4)).
    y1/x1: stage-1 tables (crop rows/cols -> low-res), y2/x2: stage-2 tables (output -> crop)."""
    n, low_h, low_w = logits.shape
    block_h, block_words = _blocks(interpret)
    row_blocks = triton.cdiv(height, block_h)
    words = triton.cdiv(width, BITS)
    device = logits.device
    if packed:
        masks = torch.empty((n, height, words), dtype=torch.int32, device=device)
        target = masks
    else:
        masks = torch.empty((n, height, width), dtype=torch.bool, device=device)
        target = masks.view(torch.int8)
    partial = torch.empty((n, row_blocks, 3), dtype=torch.int32, device=device)
    boxes = torch.empty((n, row_blocks, 4), dtype=torch.int32, device=device)
    if n > 0 and row_blocks > 0:
        _postprocess_kernel[(n, row_blocks)](
            logits, y1, x1, y2, x2, thresholds, target, partial, boxes,
            low_h, low_w, height, width, words, row_blocks,
            PACKED=packed, BLOCK_H=block_h, BLOCK_WORDS=block_words,
            SAME_HEIGHT=y1.shape[0] == height, SAME_WIDTH=x1.shape[0] == width, EMULATE_FMA=interpret,
            num_warps=4, enable_fp_fusion=False,
        )
    return masks, partial, boxes


_POST_SIG = {"logits_ptr": "*fp32", "y1_ptr": "*fp32", "x1_ptr": "*fp32", "y2_ptr": "*fp32", "x2_ptr": "*fp32",
             "thresholds_ptr": "*fp32", "masks_ptr": "*i8", "partial_ptr": "*i32", "box_ptr": "*i32",
             "low_h": "i32", "low_w": "i32", "height": "i32", "width": "i32", "words": "i32", "row_blocks": "i32",
             "PACKED": "constexpr", "BLOCK_H": "constexpr", "BLOCK_WORDS": "constexpr", "SAME_HEIGHT": "constexpr",
             "SAME_WIDTH": "constexpr", "EMULATE_FMA": "constexpr"}

# For the sm_90a AOT check in CI: (kernel, signature, constexprs, options).
AOT_KERNELS = [
    (_stability_counts_kernel,
     {"logits_ptr": "*fp32", "thresholds_ptr": "*fp32", "partial_ptr": "*i32", "height": "i32", "width": "i32",
      "row_blocks": "i32", "BLOCK_H": "constexpr", "BLOCK_W": "constexpr"},
     {"BLOCK_H": GPU_BLOCKS[0], "BLOCK_W": GPU_BLOCKS[1] * BITS}, {"num_warps": 4}),
    (_stability_counts_kernel,
     {"logits_ptr": "*bf16", "thresholds_ptr": "*fp32", "partial_ptr": "*i32", "height": "i32", "width": "i32",
      "row_blocks": "i32", "BLOCK_H": "constexpr", "BLOCK_W": "constexpr"},
     {"BLOCK_H": GPU_BLOCKS[0], "BLOCK_W": GPU_BLOCKS[1] * BITS}, {"num_warps": 4}),
    (_stability_counts_kernel,
     {"logits_ptr": "*fp64", "thresholds_ptr": "*fp64", "partial_ptr": "*i32", "height": "i32", "width": "i32",
      "row_blocks": "i32", "BLOCK_H": "constexpr", "BLOCK_W": "constexpr"},
     {"BLOCK_H": GPU_BLOCKS[0], "BLOCK_W": GPU_BLOCKS[1] * BITS}, {"num_warps": 4}),
    (_mask_box_kernel,
     {"masks_ptr": "*i8", "box_ptr": "*i32", "height": "i32", "width": "i32", "words": "i32", "row_blocks": "i32",
      "PACKED": "constexpr", "BLOCK_H": "constexpr", "BLOCK_WORDS": "constexpr"},
     {"PACKED": False, "BLOCK_H": GPU_BLOCKS[0], "BLOCK_WORDS": GPU_BLOCKS[1]}, {"num_warps": 4}),
    (_mask_box_kernel,
     {"masks_ptr": "*i32", "box_ptr": "*i32", "height": "i32", "width": "i32", "words": "i32", "row_blocks": "i32",
      "PACKED": "constexpr", "BLOCK_H": "constexpr", "BLOCK_WORDS": "constexpr"},
     {"PACKED": True, "BLOCK_H": GPU_BLOCKS[0], "BLOCK_WORDS": GPU_BLOCKS[1]}, {"num_warps": 4}),
    (_postprocess_kernel, _POST_SIG,
     {"PACKED": False, "BLOCK_H": GPU_BLOCKS[0], "BLOCK_WORDS": GPU_BLOCKS[1], "SAME_HEIGHT": False, "SAME_WIDTH": False,
      "EMULATE_FMA": False},
     {"num_warps": 4, "enable_fp_fusion": False}),
    (_postprocess_kernel, dict(_POST_SIG, logits_ptr="*fp16"),
     {"PACKED": False, "BLOCK_H": GPU_BLOCKS[0], "BLOCK_WORDS": GPU_BLOCKS[1], "SAME_HEIGHT": False, "SAME_WIDTH": False,
      "EMULATE_FMA": False},
     {"num_warps": 4, "enable_fp_fusion": False}),
    (_postprocess_kernel, dict(_POST_SIG, logits_ptr="*bf16", masks_ptr="*i32"),
     {"PACKED": True, "BLOCK_H": GPU_BLOCKS[0], "BLOCK_WORDS": GPU_BLOCKS[1], "SAME_HEIGHT": True, "SAME_WIDTH": True,
      "EMULATE_FMA": False},
     {"num_warps": 4, "enable_fp_fusion": False}),
]
