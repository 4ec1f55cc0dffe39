"""RLE run boundaries in Triton, column-major (Fortran) order as SAM/COCO RLE.

One program per (mask, block of columns) walks the rows in blocks. A *change* after column-major pixel
``p = x * H + y`` means pixel p and p + 1 differ: ``(y, x)`` vs ``(y + 1, x)``, or for the last row the
top of the next column ``(0, x + 1)``. Two passes: ``_rle_column_counts_kernel`` counts changes per column,
the op layer turns the counts into write offsets (one exclusive cumsum), ``_rle_boundaries_kernel``
writes each change's boundary ``p + 1`` at its rank. Both read bool masks or the packed int32 layout
of ``ops/bitmask.py``.
"""
import torch
import triton
import triton.language as tl

from litesam_kernels.triton import _mask_common as common

GPU_BLOCKS = (32, 64)  # (rows per step, columns per program)
INTERPRETER_BLOCKS = (64, 128)


@triton.jit
def _rle_column_counts_kernel(masks_ptr, counts_ptr, height, width, words,
                              PACKED: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    mask_id = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_X + tl.arange(0, BLOCK_X)
    row_len = words if PACKED else width
    base = masks_ptr + mask_id.to(tl.int64) * height * row_len
    total = tl.zeros([BLOCK_X], dtype=tl.int32)
    for y_start in range(0, height, BLOCK_Y):
        change, ys, xs = common.rle_changes(base, y_start, cols, height, width, words, BLOCK_Y, PACKED)
        total += tl.sum(change, axis=0)
    tl.store(counts_ptr + mask_id.to(tl.int64) * width + cols, total, mask=cols < width)


@triton.jit
def _rle_boundaries_kernel(masks_ptr, offsets_ptr, boundaries_ptr, height, width, words,
                           PACKED: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    mask_id = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_X + tl.arange(0, BLOCK_X)
    row_len = words if PACKED else width
    base = masks_ptr + mask_id.to(tl.int64) * height * row_len
    next_slot = tl.load(offsets_ptr + mask_id.to(tl.int64) * width + cols, mask=cols < width, other=0)
    for y_start in range(0, height, BLOCK_Y):
        change, ys, xs = common.rle_changes(base, y_start, cols, height, width, words, BLOCK_Y, PACKED)
        rank = tl.cumsum(change, axis=0) - 1
        boundary = xs.to(tl.int64) * height + ys + 1
        tl.store(boundaries_ptr + next_slot[None, :] + rank, boundary, mask=change != 0)
        next_slot += tl.sum(change, axis=0)


def _blocks(interpret: bool):
    return INTERPRETER_BLOCKS if interpret else GPU_BLOCKS


def column_change_counts(masks: torch.Tensor, width: int, packed: bool, interpret: bool) -> torch.Tensor:
    """(N, W) int32: changes after each column's pixels (column-major order) of contiguous masks."""
    n, height, last = masks.shape
    block_y, block_x = _blocks(interpret)
    counts = torch.empty((n, width), dtype=torch.int32, device=masks.device)
    source = masks if packed else masks.view(torch.int8)
    _rle_column_counts_kernel[(n, triton.cdiv(width, block_x))](
        source, counts, height, width, last if packed else 0,
        PACKED=packed, BLOCK_Y=block_y, BLOCK_X=block_x, num_warps=4)
    return counts


def change_boundaries(masks: torch.Tensor, width: int, packed: bool, offsets: torch.Tensor, total: int,
                      interpret: bool) -> torch.Tensor:
    """(total,) int64 boundaries (pixel index after each change), per mask in column-major order.
    ``offsets``: (N, W) int64 exclusive start of each column's changes in the output."""
    n, height, last = masks.shape
    block_y, block_x = _blocks(interpret)
    boundaries = torch.empty(total, dtype=torch.int64, device=masks.device)
    source = masks if packed else masks.view(torch.int8)
    if total > 0:
        _rle_boundaries_kernel[(n, triton.cdiv(width, block_x))](
            source, offsets, boundaries, height, width, last if packed else 0,
            PACKED=packed, BLOCK_Y=block_y, BLOCK_X=block_x, num_warps=4)
    return boundaries


_COUNTS_SIG = {"masks_ptr": "*i8", "counts_ptr": "*i32", "height": "i32", "width": "i32", "words": "i32",
               "PACKED": "constexpr", "BLOCK_Y": "constexpr", "BLOCK_X": "constexpr"}
_BOUNDS_SIG = {"masks_ptr": "*i8", "offsets_ptr": "*i64", "boundaries_ptr": "*i64", "height": "i32",
               "width": "i32", "words": "i32", "PACKED": "constexpr", "BLOCK_Y": "constexpr", "BLOCK_X": "constexpr"}
_GPU = {"BLOCK_Y": GPU_BLOCKS[0], "BLOCK_X": GPU_BLOCKS[1]}

# For the sm_90a AOT check in CI: (kernel, signature, constexprs, options).
AOT_KERNELS = [
    (_rle_column_counts_kernel, _COUNTS_SIG, dict(_GPU, PACKED=False), {"num_warps": 4}),
    (_rle_column_counts_kernel, dict(_COUNTS_SIG, masks_ptr="*i32"), dict(_GPU, PACKED=True), {"num_warps": 4}),
    (_rle_boundaries_kernel, _BOUNDS_SIG, dict(_GPU, PACKED=False), {"num_warps": 4}),
    (_rle_boundaries_kernel, dict(_BOUNDS_SIG, masks_ptr="*i32"), dict(_GPU, PACKED=True), {"num_warps": 4}),
]
