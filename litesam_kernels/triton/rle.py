"""RLE run boundaries in Triton, column-major (Fortran) order as SAM/COCO RLE.

A *change* after column-major pixel ``p = x * H + y`` means pixel p and p + 1 differ: ``(y, x)`` vs
``(y + 1, x)``, or for the last row the top of the next column ``(0, x + 1)``. Two passes over the masks:
``_rle_column_counts_kernel`` counts the changes of each (column, block of rows), the op layer turns the
counts into write offsets (one exclusive cumsum in column-major order), ``_rle_boundaries_kernel`` writes
each change's boundary ``p + 1`` at its rank. Both read bool masks or the packed int32 layout of
``ops/bitmask.py``.

One program owns ``BLOCK_X`` columns x ``row_block`` rows of one mask and walks the rows top to bottom
(``ROWS`` rows unrolled per step, so that many independent row loads are in flight), carrying the previous
row in registers: each row is read once, by one contiguous (vectorisable) load (bool: ``BLOCK_X`` bytes;
packed: ``BLOCK_X / 32`` words, unpacked in registers), with no per-pixel select of the successor's
address; a change is ``previous != row`` per lane, and the count and the write slot are per-lane running
sums: no scan, no reduction, no shared memory. The last row's change into the next column is one extra
load, once per program. Row blocks give the GPU ``masks x row blocks x column blocks`` programs (a single
1024^2 mask is otherwise one serial walk of 1024 rows).
"""
import torch
import triton
import triton.language as tl

from litesam_kernels.triton import _mask_common as common
from litesam_kernels.triton._configs import LaunchConfig, LaunchConfigs

# BLOCK_X: columns per program (a multiple of 32; bool: BLOCK_X / (32 * num_warps) bytes per thread and row,
# 64/128-bit loads); ROWS: rows unrolled per step (loads in flight). The row block is not a launch choice:
# the counts' layout depends on it, so both kernels take it from the shape (``rows_per_program``).
_CONFIGS = [
    LaunchConfig({"BLOCK_X": 1024, "ROWS": 4}, num_warps=4),
    LaunchConfig({"BLOCK_X": 1024, "ROWS": 8}, num_warps=4),
    LaunchConfig({"BLOCK_X": 2048, "ROWS": 8}, num_warps=4),
    LaunchConfig({"BLOCK_X": 512, "ROWS": 8}, num_warps=2),
]
# Boundaries scatter each change to its own slot: a store layout of one column per thread. Vectorised bool
# rows (several bytes per thread) then cross threads through shared memory once per row, so one byte per
# thread (BLOCK_X = 32 * num_warps: coalesced byte loads, no exchange) is a candidate too.
_BOUNDARY_CONFIGS = _CONFIGS[:2] + [
    LaunchConfig({"BLOCK_X": 128, "ROWS": 8}, num_warps=4),
    LaunchConfig({"BLOCK_X": 256, "ROWS": 8}, num_warps=8),
]
TARGET_PROGRAMS = 4096  # enough programs to fill an H100/H200 several times over
MIN_ROW_BLOCK = 64  # rows per program at the least (a program's fixed cost over enough rows)
COUNT_CONFIGS = LaunchConfigs("rle.counts", _CONFIGS)
BOUNDARY_CONFIGS = LaunchConfigs("rle.boundaries", _BOUNDARY_CONFIGS)


# The per-row steps below are written out in both kernels (no helper call per row: the interpreter pays
# a lot per call). Bool pixels are bytes 0/1 and compare as loaded; packed rows XOR into change bits.
@triton.jit
def _rle_column_counts_kernel(masks_ptr, counts_ptr, height, width, words, row_block, row_blocks,
                              PACKED: tl.constexpr, BLOCK_X: tl.constexpr, ROWS: tl.constexpr):
    """counts[mask, x, row block]: changes after the pixels (y, x) of the row block, column-major order."""
    row_ptrs, row_len, load_ok, cols, bits = common.block_pointers(masks_ptr, height, width, words, PACKED,
                                                                   BLOCK_X)
    first, end, unrolled_end = common.row_range(height, row_block, ROWS)
    previous = tl.load(row_ptrs + tl.minimum(first, height - 1) * row_len, mask=load_ok, other=0)
    if PACKED:
        changes = tl.zeros([BLOCK_X // 32, 32], dtype=tl.int32)
    else:
        changes = tl.zeros([BLOCK_X], dtype=tl.int32)
    for y_start in range(first + 1, unrolled_end + 1, ROWS):
        for r in tl.static_range(ROWS):
            row = tl.load(row_ptrs + (y_start + r) * row_len, mask=load_ok, other=0)
            if PACKED:
                changes += ((previous ^ row)[:, None] >> bits[None, :]) & 1
            else:
                changes += previous != row
            previous = row
    for y in range(unrolled_end + 1, end + 1):
        row = tl.load(row_ptrs + y * row_len, mask=load_ok, other=0)
        if PACKED:
            changes += ((previous ^ row)[:, None] >> bits[None, :]) & 1
        else:
            changes += previous != row
        previous = row
    if first + row_block >= height:  # this block holds the last row
        changes += common.last_row_change(row_ptrs, previous, cols, width, PACKED)
    out = (tl.program_id(0).to(tl.int64) * width + cols) * row_blocks + tl.program_id(1)
    tl.store(counts_ptr + out, changes, mask=cols < width)


@triton.jit
def _rle_boundaries_kernel(masks_ptr, offsets_ptr, boundaries_ptr, height, width, words, row_block, row_blocks,
                           PACKED: tl.constexpr, BLOCK_X: tl.constexpr, ROWS: tl.constexpr):
    """Boundary x * H + y + 1 of every change after (y, x) in this block, from slot offsets[mask, x, row block]."""
    row_ptrs, row_len, load_ok, cols, bits = common.block_pointers(masks_ptr, height, width, words, PACKED,
                                                                   BLOCK_X)
    col_ok = cols < width
    start = (tl.program_id(0).to(tl.int64) * width + cols) * row_blocks + tl.program_id(1)
    slots = boundaries_ptr + tl.load(offsets_ptr + start, mask=col_ok, other=0)  # each column's next slot
    column_start = cols.to(tl.int64) * height  # boundary of the change after (y, x) = column_start + y + 1
    first, end, unrolled_end = common.row_range(height, row_block, ROWS)
    previous = tl.load(row_ptrs + tl.minimum(first, height - 1) * row_len, mask=load_ok, other=0)
    for y_start in range(first + 1, unrolled_end + 1, ROWS):
        for r in tl.static_range(ROWS):
            row = tl.load(row_ptrs + (y_start + r) * row_len, mask=load_ok, other=0)
            if PACKED:
                change = (((previous ^ row)[:, None] >> bits[None, :]) & 1) != 0
            else:
                change = previous != row
            tl.store(slots, column_start + (y_start + r), mask=change)
            slots += change.to(tl.int32)
            previous = row
    for y in range(unrolled_end + 1, end + 1):
        row = tl.load(row_ptrs + y * row_len, mask=load_ok, other=0)
        if PACKED:
            change = (((previous ^ row)[:, None] >> bits[None, :]) & 1) != 0
        else:
            change = previous != row
        tl.store(slots, column_start + y, mask=change)
        slots += change.to(tl.int32)
        previous = row
    if first + row_block >= height:
        change = col_ok & common.last_row_change(row_ptrs, previous, cols, width, PACKED)
        tl.store(slots, column_start + height, mask=change)


def rows_per_program(n: int, height: int, width: int) -> int:
    """Rows per program: the whole height, or blocks of at least MIN_ROW_BLOCK rows when that gives more than
    TARGET_PROGRAMS programs (columns in the smallest configured block)."""
    column_blocks = triton.cdiv(width, max(c.meta["BLOCK_X"] for c in _CONFIGS + _BOUNDARY_CONFIGS))
    wanted_blocks = max(1, TARGET_PROGRAMS // max(1, n * column_blocks))
    return max(MIN_ROW_BLOCK, triton.cdiv(height, wanted_blocks))


def _launch(family, kernel, masks, width, packed, args, row_block):
    n, height, last = masks.shape
    source = masks if packed else masks.view(torch.int8)
    blocks = triton.cdiv(height, row_block)

    def run(config):
        grid = (n, blocks, triton.cdiv(width, config.meta["BLOCK_X"]))
        kernel[grid](source, *args, height, width, last if packed else 0, row_block, blocks, PACKED=packed,
                     **config.kwargs())

    family.launch((packed, height, width, row_block), run)


def column_change_counts(masks: torch.Tensor, width: int, packed: bool, row_block: int) -> torch.Tensor:
    """(N, W, ceil(H / row_block)) int32: changes after each (column, row block)'s pixels (column-major
    order) of contiguous masks; flattened in this order, its exclusive cumsum is the offsets
    ``change_boundaries`` takes with the same ``row_block``."""
    n, height = masks.shape[:2]
    counts = torch.empty((n, width, triton.cdiv(height, row_block)), dtype=torch.int32, device=masks.device)
    _launch(COUNT_CONFIGS, _rle_column_counts_kernel, masks, width, packed, (counts,), row_block)
    return counts


def change_boundaries(masks: torch.Tensor, width: int, packed: bool, offsets: torch.Tensor, total: int,
                      row_block: int) -> torch.Tensor:
    """(total,) int64 boundaries (pixel index after each change), per mask in column-major order.
    ``offsets``: (N, W, row blocks) int64, the exclusive start of each (column, row block)'s changes."""
    boundaries = torch.empty(total, dtype=torch.int64, device=masks.device)
    if total > 0:
        _launch(BOUNDARY_CONFIGS, _rle_boundaries_kernel, masks, width, packed, (offsets, boundaries), row_block)
    return boundaries


_COUNTS_SIG = {"masks_ptr": "*i8", "counts_ptr": "*i32", "height": "i32", "width": "i32", "words": "i32",
               "row_block": "i32", "row_blocks": "i32", "PACKED": "constexpr", "BLOCK_X": "constexpr",
               "ROWS": "constexpr"}
_BOUNDS_SIG = {"masks_ptr": "*i8", "offsets_ptr": "*i64", "boundaries_ptr": "*i64", "height": "i32",
               "width": "i32", "words": "i32", "row_block": "i32", "row_blocks": "i32", "PACKED": "constexpr",
               "BLOCK_X": "constexpr", "ROWS": "constexpr"}

# For the sm_90a AOT check in CI: (kernel, signature, constexprs, options), every launch configuration.
AOT_KERNELS = [
    entry
    for family, kernel, signature in ((COUNT_CONFIGS, _rle_column_counts_kernel, _COUNTS_SIG),
                                      (BOUNDARY_CONFIGS, _rle_boundaries_kernel, _BOUNDS_SIG))
    for packed in (False, True)
    for entry in family.aot_entries(kernel, dict(signature, masks_ptr="*i32" if packed else "*i8"), {"PACKED": packed})
]
