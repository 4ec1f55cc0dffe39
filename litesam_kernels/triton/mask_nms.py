"""Mask IoU on bit-packed masks in Triton (layout: ``ops/bitmask.py``), reading only what box overlap allows.

Work is split by what each pair needs, not by tiles of pairs: a pair of masks whose boxes (windows) do not
intersect cannot share a pixel, and a pair that can shares pixels only inside the intersection of its two
boxes. So:

1. ``_pair_count_kernel`` (one program per 32 x 32 tile of candidate pairs) counts the pairs whose windows
   intersect (upper triangle only for ranked NMS; same group only when groups are given) and their *items*:
   an item is ``ITEM_ROWS`` rows of one pair's intersection window;
2. the op layer turns the counts into offsets (one exclusive cumsum per pass) and reads the totals: the
   one host synchronisation;
3. ``_pair_emit_kernel`` writes the compacted pair list (mask indices and the pair's own window: first row,
   rows, first word, words) at those offsets;
4. ``_pair_popcount_kernel`` gives each program ``BLOCK_ITEMS`` items, so every program does the same work
   whatever the pairs' window sizes: AND the two masks' words over the item's rows x the pair's words,
   popcount (the hardware ``POPC`` on the GPU, SWAR under the interpreter: ``_bits.HW_POPC``), accumulate
   per lane, reduce once; one partial intersection per item, summed per pair by the op layer.

Pairs are processed in passes of bounded size (``MAX_PAIRS_PER_PASS`` / ``MAX_ITEMS_PER_PASS``, whole tile
rows at a time), so scratch memory stays bounded when most boxes overlap. ``_mask_area_kernel`` gives the
per-mask pixel counts for the unions.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
import triton
import triton.language as tl

from litesam_kernels.triton import _bits
from litesam_kernels.triton import _mask_common as common
from litesam_kernels.triton._configs import LaunchConfig, LaunchConfigs

PAIR_TILE = 32  # candidate pairs per tile side (count and emit use the same tiling: offsets are per tile)
ITEM_ROWS = 16  # rows of a pair's window per item (item counts depend on it, so it is not a launch choice)
MAX_PAIRS_PER_PASS = 2**22  # 28 bytes of scratch per pair
MAX_ITEMS_PER_PASS = 2**24  # 12 bytes of scratch per item

AREA_CONFIGS = LaunchConfigs("mask_nms.area", [
    LaunchConfig({"BLOCK_M": 16, "BLOCK": 256}, num_warps=4),
    LaunchConfig({"BLOCK_M": 4, "BLOCK": 1024}, num_warps=4),
    LaunchConfig({"BLOCK_M": 8, "BLOCK": 512}, num_warps=8),
])
COUNT_CONFIGS = LaunchConfigs("mask_nms.pair_count", [LaunchConfig(num_warps=4), LaunchConfig(num_warps=8)])
EMIT_CONFIGS = LaunchConfigs("mask_nms.pair_emit", [LaunchConfig(num_warps=4), LaunchConfig(num_warps=8)])
# BLOCK_ITEMS x ITEM_ROWS x BLOCK_W words per step: 8 words span a 256-wide mask's row. The default's 64
# items per program keep the interpreter's program count low (it pays per program, not per lane).
POPCOUNT_CONFIGS = LaunchConfigs("mask_nms.pair_popcount", [
    LaunchConfig({"BLOCK_ITEMS": 64, "BLOCK_W": 8}, num_warps=8),
    LaunchConfig({"BLOCK_ITEMS": 8, "BLOCK_W": 8}, num_warps=4),
    LaunchConfig({"BLOCK_ITEMS": 4, "BLOCK_W": 16}, num_warps=4),
    LaunchConfig({"BLOCK_ITEMS": 16, "BLOCK_W": 4}, num_warps=8),
    LaunchConfig({"BLOCK_ITEMS": 2, "BLOCK_W": 32}, num_warps=4),
])


@triton.jit
def _mask_area_kernel(packed_ptr, areas_ptr, n, mask_words, BLOCK_M: tl.constexpr, BLOCK: tl.constexpr,
                      HW_POPC: tl.constexpr):
    masks = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    base = masks.to(tl.int64) * mask_words
    total = tl.zeros([BLOCK_M, BLOCK], dtype=tl.int32)
    for start in range(0, mask_words, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        ok = (masks < n)[:, None] & (offsets < mask_words)[None, :]
        words = tl.load(packed_ptr + base[:, None] + offsets[None, :], mask=ok, other=0)
        total += _bits.popcount32(words, HW_POPC)
    tl.store(areas_ptr + masks, tl.sum(total, axis=1), mask=masks < n)




@triton.jit
def _pair_count_kernel(win_a_ptr, win_b_ptr, groups_a_ptr, groups_b_ptr, counts_ptr, na, nb, tile_cols,
                       UPPER: tl.constexpr, HAS_GROUPS: tl.constexpr, TILE: tl.constexpr,
                       ITEM_ROWS: tl.constexpr):
    """counts[tile row, tile col] = (pairs that can share a pixel, their items); zeros stay for skipped tiles."""
    if UPPER:
        if tl.program_id(0) < tl.program_id(1):
            return  # lower triangle of ranked masks: nothing to count, no window is read
    rows = tl.program_id(1) * TILE + tl.arange(0, TILE)
    cols = tl.program_id(0) * TILE + tl.arange(0, TILE)
    overlap, x0, y0, x1, y1 = common.pair_windows(win_a_ptr, win_b_ptr, groups_a_ptr, groups_b_ptr, na, nb,
                                                  rows, cols, UPPER, HAS_GROUPS)
    items = tl.where(overlap, (y1 - y0 + ITEM_ROWS) // ITEM_ROWS, 0)
    out = counts_ptr + (tl.program_id(1).to(tl.int64) * tile_cols + tl.program_id(0)) * 2
    tl.store(out, tl.sum(tl.sum(overlap.to(tl.int32), axis=1), axis=0))
    tl.store(out + 1, tl.sum(tl.sum(items, axis=1), axis=0))


@triton.jit
def _pair_emit_kernel(win_a_ptr, win_b_ptr, groups_a_ptr, groups_b_ptr, pair_offsets_ptr, item_offsets_ptr,
                      pairs_ptr, first_item_ptr, na, nb, tile_cols, tile_row_offset, pair_capacity,
                      UPPER: tl.constexpr, HAS_GROUPS: tl.constexpr, TILE: tl.constexpr, ITEM_ROWS: tl.constexpr):
    """Writes the tile's pairs at its offsets: pairs[k, p] for k = (a index, b index, first row, rows,
    first word, words) and first_item[p], in row-major order within the tile."""
    tile_row = tl.program_id(1) + tile_row_offset
    if UPPER:
        if tl.program_id(0) < tile_row:
            return
    rows = tile_row * TILE + tl.arange(0, TILE)
    cols = tl.program_id(0) * TILE + tl.arange(0, TILE)
    overlap, x0, y0, x1, y1 = common.pair_windows(win_a_ptr, win_b_ptr, groups_a_ptr, groups_b_ptr, na, nb,
                                                  rows, cols, UPPER, HAS_GROUPS)
    tile = tl.program_id(1).to(tl.int64) * tile_cols + tl.program_id(0)  # within this pass
    flat = tl.reshape(overlap, [TILE * TILE])
    items = tl.where(flat, tl.reshape((y1 - y0 + ITEM_ROWS) // ITEM_ROWS, [TILE * TILE]), 0)
    slot = tl.load(pair_offsets_ptr + tile) + tl.cumsum(flat.to(tl.int32), axis=0) - 1
    first_item = tl.load(item_offsets_ptr + tile) + tl.cumsum(items, axis=0) - items
    pairs = pairs_ptr + slot
    tl.store(pairs, tl.reshape(rows[:, None] + cols[None, :] * 0, [TILE * TILE]), mask=flat)
    tl.store(pairs + pair_capacity, tl.reshape(cols[None, :] + rows[:, None] * 0, [TILE * TILE]), mask=flat)
    tl.store(pairs + 2 * pair_capacity, tl.reshape(y0, [TILE * TILE]), mask=flat)
    tl.store(pairs + 3 * pair_capacity, tl.reshape(y1 - y0 + 1, [TILE * TILE]), mask=flat)
    tl.store(pairs + 4 * pair_capacity, tl.reshape(x0 >> 5, [TILE * TILE]), mask=flat)
    tl.store(pairs + 5 * pair_capacity, tl.reshape((x1 >> 5) - (x0 >> 5) + 1, [TILE * TILE]), mask=flat)
    tl.store(first_item_ptr + slot, first_item.to(tl.int32), mask=flat)


@triton.jit
def _pair_popcount_kernel(a_ptr, b_ptr, pairs_ptr, first_item_ptr, item_pair_ptr, partial_ptr, items,
                          pair_capacity, words, mask_words, ITEM_ROWS: tl.constexpr, BLOCK_ITEMS: tl.constexpr,
                          BLOCK_W: tl.constexpr, HW_POPC: tl.constexpr):
    """partial[item] = |a & b| over the item's rows x its pair's words."""
    item = tl.program_id(0) * BLOCK_ITEMS + tl.arange(0, BLOCK_ITEMS)
    item_ok = item < items
    pair = tl.load(item_pair_ptr + item, mask=item_ok, other=0)
    first = tl.load(pairs_ptr + pair, mask=item_ok, other=0).to(tl.int64) * mask_words
    second = tl.load(pairs_ptr + pair_capacity + pair, mask=item_ok, other=0).to(tl.int64) * mask_words
    row0 = tl.load(pairs_ptr + 2 * pair_capacity + pair, mask=item_ok, other=0)
    rows = tl.load(pairs_ptr + 3 * pair_capacity + pair, mask=item_ok, other=0)
    word0 = tl.load(pairs_ptr + 4 * pair_capacity + pair, mask=item_ok, other=0)
    span = tl.load(pairs_ptr + 5 * pair_capacity + pair, mask=item_ok, other=0)
    chunk_row = (item - tl.load(first_item_ptr + pair, mask=item_ok, other=0)) * ITEM_ROWS
    r = chunk_row[:, None] + tl.arange(0, ITEM_ROWS)[None, :]
    row_ok = (item_ok[:, None] & (r < rows[:, None]))[:, :, None]
    row_start = ((row0[:, None] + r) * words + word0[:, None])[:, :, None]
    a_rows = a_ptr + first[:, None, None] + row_start
    b_rows = b_ptr + second[:, None, None] + row_start
    inter = tl.zeros([BLOCK_ITEMS, ITEM_ROWS, BLOCK_W], dtype=tl.int32)
    for word_start in range(0, tl.max(tl.where(item_ok, span, 0), axis=0), BLOCK_W):
        w = word_start + tl.arange(0, BLOCK_W)
        ok = row_ok & (w[None, None, :] < span[:, None, None])
        both = (tl.load(a_rows + w[None, None, :], mask=ok, other=0)
                & tl.load(b_rows + w[None, None, :], mask=ok, other=0))
        inter += _bits.popcount32(both, HW_POPC)
    tl.store(partial_ptr + item, tl.sum(tl.sum(inter, axis=2), axis=1), mask=item_ok)


def mask_areas(packed: torch.Tensor) -> torch.Tensor:
    """Pixel count (int32) of each packed mask (N, H, ceil(W/32)) int32, contiguous."""
    n = packed.shape[0]
    areas = torch.empty(n, dtype=torch.int32, device=packed.device)
    if n:
        mask_words = packed.shape[1] * packed.shape[2]

        def run(config):
            _mask_area_kernel[(triton.cdiv(n, config.meta["BLOCK_M"]),)](
                packed, areas, n, mask_words, HW_POPC=_bits.hardware_popcount(), **config.kwargs())

        AREA_CONFIGS.launch(mask_words, run)
    return areas


def _pass_tile_rows(per_tile_row: torch.Tensor) -> Iterator[Tuple[int, int]]:
    """[first, end) tile rows of each pass: whole tile rows, at most the pair and item budgets per pass
    (a single tile row over budget is a pass of its own; rows without pairs join the next pass)."""
    first, pairs, items = 0, 0, 0
    for row, (row_pairs, row_items) in enumerate(per_tile_row.tolist()):
        if pairs and (pairs + row_pairs > MAX_PAIRS_PER_PASS or items + row_items > MAX_ITEMS_PER_PASS):
            yield first, row
            first, pairs, items = row, 0, 0
        pairs += row_pairs
        items += row_items
    if pairs:
        yield first, per_tile_row.shape[0]


def overlapping_pair_intersections(packed_a: torch.Tensor, windows_a: torch.Tensor, packed_b: torch.Tensor,
                                   windows_b: torch.Tensor, upper: bool, groups: Optional[torch.Tensor] = None
                                   ) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(a index, b index, |a & b|)`` (int64, int64, int32) of every pair whose windows intersect, in passes.

    packed_*: contiguous (N, H, words) int32 masks; windows_*: int32 (N, 4) inclusive (x0, y0, x1, y1)
    boxes clipped to the mask that enclose each mask; ``upper``: a and b are the same ranked stack and only
    pairs b index > a index are wanted; ``groups``: (N,) int64 of that stack, only equal groups are wanted.
    Pairs whose windows do not intersect have no common pixel and are not listed."""
    na, nb = packed_a.shape[0], packed_b.shape[0]
    words = packed_a.shape[2]
    mask_words = packed_a.shape[1] * words
    device = packed_a.device
    tile_rows, tile_cols = triton.cdiv(na, PAIR_TILE), triton.cdiv(nb, PAIR_TILE)
    groups_ptr = groups if groups is not None else windows_a  # any pointer; unused without groups
    flags = dict(UPPER=upper, HAS_GROUPS=groups is not None, TILE=PAIR_TILE, ITEM_ROWS=ITEM_ROWS)
    counts = torch.zeros((tile_rows, tile_cols, 2), dtype=torch.int32, device=device)

    def count(config):
        _pair_count_kernel[(tile_cols, tile_rows)](windows_a, windows_b, groups_ptr, groups_ptr, counts, na, nb,
                                                   tile_cols, **flags, **config.kwargs())

    COUNT_CONFIGS.launch((upper, groups is not None), count)
    per_tile_row = counts.sum(1, dtype=torch.int64).cpu()  # the one host synchronisation
    for first_row, end_row in _pass_tile_rows(per_tile_row):
        in_pass = counts[first_row:end_row].reshape(-1, 2).to(torch.int64)
        offsets = torch.cumsum(in_pass, 0) - in_pass
        pair_count, item_count = per_tile_row[first_row:end_row].sum(0).tolist()
        pairs = torch.empty((6, pair_count), dtype=torch.int32, device=device)
        first_item = torch.empty(pair_count, dtype=torch.int32, device=device)
        pair_offsets, item_offsets = offsets[:, 0].contiguous(), offsets[:, 1].contiguous()

        def emit(config):
            _pair_emit_kernel[(tile_cols, end_row - first_row)](
                windows_a, windows_b, groups_ptr, groups_ptr, pair_offsets, item_offsets, pairs, first_item,
                na, nb, tile_cols, first_row, pair_count, **flags, **config.kwargs())

        EMIT_CONFIGS.launch((upper, groups is not None), emit)
        items_per_pair = (pairs[3] + ITEM_ROWS - 1) // ITEM_ROWS
        item_pair = torch.repeat_interleave(torch.arange(pair_count, dtype=torch.int32, device=device),
                                            items_per_pair, output_size=item_count)
        partial = torch.empty(item_count, dtype=torch.int32, device=device)

        def popcount(config):
            _pair_popcount_kernel[(triton.cdiv(item_count, config.meta["BLOCK_ITEMS"]),)](
                packed_a, packed_b, pairs, first_item, item_pair, partial, item_count, pair_count, words,
                mask_words, ITEM_ROWS=ITEM_ROWS, HW_POPC=_bits.hardware_popcount(), **config.kwargs())

        POPCOUNT_CONFIGS.launch(words, popcount)
        inter = torch.zeros(pair_count, dtype=torch.int32, device=device).index_add_(0, item_pair, partial)
        yield pairs[0].to(torch.int64), pairs[1].to(torch.int64), inter


# For the sm_90a AOT check in CI: (kernel, signature, constexprs, options) for every launch configuration,
# and both popcount forms (HW_POPC: the GPU's; SWAR: the interpreter's, compiled to show it builds too).
_WINDOW_SIG = {"win_a_ptr": "*i32", "win_b_ptr": "*i32", "groups_a_ptr": "*i64", "groups_b_ptr": "*i64"}
_FLAGS = {"TILE": PAIR_TILE, "ITEM_ROWS": ITEM_ROWS}
AOT_KERNELS = [
    entry for hw in (True, False) for entry in AREA_CONFIGS.aot_entries(
        _mask_area_kernel, {"packed_ptr": "*i32", "areas_ptr": "*i32", "n": "i32", "mask_words": "i32",
                            "BLOCK_M": "constexpr", "BLOCK": "constexpr", "HW_POPC": "constexpr"}, {"HW_POPC": hw})
] + [
    entry for upper, groups in ((True, True), (True, False), (False, False)) for entry in COUNT_CONFIGS.aot_entries(
        _pair_count_kernel, dict(_WINDOW_SIG, counts_ptr="*i32", na="i32", nb="i32", tile_cols="i32", UPPER="constexpr",
                                 HAS_GROUPS="constexpr", TILE="constexpr", ITEM_ROWS="constexpr"),
        dict(_FLAGS, UPPER=upper, HAS_GROUPS=groups))
] + [
    entry for upper, groups in ((True, True), (True, False), (False, False)) for entry in EMIT_CONFIGS.aot_entries(
        _pair_emit_kernel, dict(_WINDOW_SIG, pair_offsets_ptr="*i64", item_offsets_ptr="*i64", pairs_ptr="*i32",
                                first_item_ptr="*i32", na="i32", nb="i32", tile_cols="i32", tile_row_offset="i32",
                                pair_capacity="i32", UPPER="constexpr", HAS_GROUPS="constexpr", TILE="constexpr",
                                ITEM_ROWS="constexpr"),
        dict(_FLAGS, UPPER=upper, HAS_GROUPS=groups))
] + [
    entry for hw in (True, False) for entry in POPCOUNT_CONFIGS.aot_entries(
        _pair_popcount_kernel, {"a_ptr": "*i32", "b_ptr": "*i32", "pairs_ptr": "*i32", "first_item_ptr": "*i32",
                                "item_pair_ptr": "*i32", "partial_ptr": "*i32", "items": "i32", "pair_capacity": "i32",
                                "words": "i32", "mask_words": "i32", "ITEM_ROWS": "constexpr",
                                "BLOCK_ITEMS": "constexpr", "BLOCK_W": "constexpr", "HW_POPC": "constexpr"},
        {"ITEM_ROWS": ITEM_ROWS, "HW_POPC": hw})
]
