"""@triton.jit helpers of the SegEvery post-processing kernels (mask post-processing, RLE, mask and box NMS),
inlined into them; not kernels themselves (the AOT check compiles them through their callers)."""
import triton
import triton.language as tl

from litesam_kernels.triton import _bits


@triton.jit
def fma(a, b, c, EMULATE_FMA: tl.constexpr):
    if EMULATE_FMA:
        return (a.to(tl.float64) * b.to(tl.float64) + c.to(tl.float64)).to(tl.float32)
    else:
        return tl.fma(a, b, c)


@triton.jit
def wrap_int16(count):
    # SAM sums each row into int16 (wraps past 32767), then the rows into int32.
    return ((count + 32768) & 0xFFFF) - 32768


@triton.jit
def mask_and_row_block(row_blocks):
    """(mask, row block) of this program on a 1-D grid of masks x row blocks (int64 mask index)."""
    program = tl.program_id(0).to(tl.int64)
    return program // row_blocks, (program % row_blocks).to(tl.int32)


@triton.jit
def store_box_partial(box_ptr, mask_id, row_block, row_blocks, rows, row_any, col_min, col_max, height, width):
    big = height + width + 1
    top = tl.min(tl.where(row_any, rows, big), axis=0)
    bottom = tl.max(tl.where(row_any, rows, -1), axis=0)
    out = box_ptr + (mask_id.to(tl.int64) * row_blocks + row_block) * 4
    tl.store(out, col_min)
    tl.store(out + 1, top)
    tl.store(out + 2, col_max)
    tl.store(out + 3, bottom)


@triton.jit
def stage1_taps(table_ptr, size, index):
    """Tap pair of the first resize along one axis at crop indices ``index``: (i0, i1, w0, w1) from a
    struct-of-arrays (4, size) table. Rows are loop-invariant in the fused kernel: loaded once per program."""
    i0 = tl.load(table_ptr + index).to(tl.int32)
    i1 = tl.load(table_ptr + size + index).to(tl.int32)
    return i0, i1, tl.load(table_ptr + 2 * size + index), tl.load(table_ptr + 3 * size + index)


@triton.jit
def stage1(logits_base, low_w, row_taps, col_taps, out_dtype: tl.constexpr, EMULATE_FMA: tl.constexpr):
    """Value of the 1024-grid (after the first bilinear resize) at the crop rows x crop columns whose taps
    are given (``stage1_taps``, broadcasting), rounded to the logits dtype as torch stores it between the
    resizes, back in float32."""
    r0, r1, rw0, rw1 = row_taps
    c0, c1, cw0, cw1 = col_taps
    a = tl.load(logits_base + r0 * low_w + c0).to(tl.float32)
    b = tl.load(logits_base + r0 * low_w + c1).to(tl.float32)
    c = tl.load(logits_base + r1 * low_w + c0).to(tl.float32)
    d = tl.load(logits_base + r1 * low_w + c1).to(tl.float32)
    return blend(a, b, c, d, rw0, rw1, cw0, cw1, EMULATE_FMA).to(out_dtype).to(tl.float32)


@triton.jit
def blend(a, b, c, d, rw0, rw1, cw0, cw1, EMULATE_FMA: tl.constexpr):
    # torch (CPU kernels built with FMA, and nvcc by default) contracts w0*a + w1*b into fma(a, w0, w1*b).
    top = fma(a, cw0, b * cw1, EMULATE_FMA)
    bottom = fma(c, cw0, d * cw1, EMULATE_FMA)
    return fma(top, rw0, bottom * rw1, EMULATE_FMA)


# ------------------------------------------------------------------------------ box NMS (triton/nms.py)
@triton.jit
def load_boxes(boxes_ptr, index, ok):
    """(x1, y1, x2, y2) of XYXY boxes ``index``."""
    x1 = tl.load(boxes_ptr + index * 4 + 0, mask=ok, other=0.0)
    y1 = tl.load(boxes_ptr + index * 4 + 1, mask=ok, other=0.0)
    x2 = tl.load(boxes_ptr + index * 4 + 2, mask=ok, other=0.0)
    y2 = tl.load(boxes_ptr + index * 4 + 3, mask=ok, other=0.0)
    return x1, y1, x2, y2


@triton.jit
def upper_triangle_tile(tile, col_blocks):
    """(row block, column block) of upper-triangle tile ``tile`` (row-major, row r holds col_blocks - r
    tiles): r from the closed form of start(r) = r * (2 * col_blocks - r + 1) / 2 <= tile, then one
    correction step each way for the float32 square root."""
    tile = tile.to(tl.int64)
    span = 2 * col_blocks.to(tl.int64) + 1
    disc = (span * span - 8 * tile).to(tl.float32)
    r = ((span.to(tl.float32) - tl.sqrt(disc)) * 0.5).to(tl.int64)
    r = tl.where(r * (span - r) // 2 > tile, r - 1, r)
    r = tl.where((r + 1) * (span - r - 1) // 2 <= tile, r + 1, r)
    return r.to(tl.int32), (r + tile - r * (span - r) // 2).to(tl.int32)


# ------------------------------------------------------------------------------ RLE (triton/rle.py)
@triton.jit
def block_pointers(masks_ptr, height, width, words, PACKED: tl.constexpr, BLOCK_X: tl.constexpr):
    """Loop-invariant pieces of a program: (pointers to row 0 of its columns/words, int64 row length,
    load mask, column indices [BLOCK_X] or [BLOCK_X / 32, 32], bit positions)."""
    row_len = tl.program_id(0).to(tl.int64) * 0 + (words if PACKED else width)
    base = masks_ptr + tl.program_id(0).to(tl.int64) * height * row_len
    bits = tl.arange(0, 32)
    if PACKED:
        word_ids = tl.program_id(2) * (BLOCK_X // 32) + tl.arange(0, BLOCK_X // 32)
        return base + word_ids, row_len, word_ids < words, word_ids[:, None] * 32 + bits[None, :], bits
    else:
        cols = tl.program_id(2) * BLOCK_X + tl.arange(0, BLOCK_X)
        return base + cols, row_len, cols < width, cols, bits


@triton.jit
def last_row_change(row_ptrs, last_row, cols, width, PACKED: tl.constexpr):
    """1 where the last row's pixel (H - 1, x) differs from (0, x + 1), the next pixel in column-major
    order (0 for the last column). ``last_row``: row H - 1 as loaded by the walk (bool values or words)."""
    ok = cols + 1 < width
    if PACKED:
        row0 = row_ptrs[:, None] - (cols >> 5)  # row 0, word 0 (per lane)
        here = (last_row[:, None] >> (cols & 31)) & 1
        top = (tl.load(row0 + ((cols + 1) >> 5), mask=ok, other=0) >> ((cols + 1) & 31)) & 1
    else:
        row0 = row_ptrs - cols  # row 0, column 0 (per lane)
        here = last_row != 0
        top = tl.load(row0 + cols + 1, mask=ok, other=0) != 0
    return ok & (here != top)


@triton.jit
def row_range(height, row_block, ROWS: tl.constexpr):
    """This program's rows [first, end) whose successor below it compares, and where the unrolled steps end."""
    first = tl.program_id(1) * row_block
    end = tl.minimum(first + row_block, height - 1)  # the last row's successor is the next column's top
    return first, end, first + (end - first) // ROWS * ROWS


# ------------------------------------------------------------------------------ mask IoU (triton/mask_nms.py)
@triton.jit
def pair_windows(win_a_ptr, win_b_ptr, groups_a_ptr, groups_b_ptr, na, nb, rows, cols,
                 UPPER: tl.constexpr, HAS_GROUPS: tl.constexpr):
    """For the [TILE, TILE] candidate pairs (rows of a, cols of b): whether they can share a pixel, and the
    intersection of their windows (int32 inclusive x0, y0, x1, y1; windows are clipped to the mask)."""
    row_ok = rows < na
    col_ok = cols < nb
    x0 = tl.maximum(tl.load(win_a_ptr + rows * 4 + 0, mask=row_ok, other=0)[:, None],
                    tl.load(win_b_ptr + cols * 4 + 0, mask=col_ok, other=0)[None, :])
    y0 = tl.maximum(tl.load(win_a_ptr + rows * 4 + 1, mask=row_ok, other=0)[:, None],
                    tl.load(win_b_ptr + cols * 4 + 1, mask=col_ok, other=0)[None, :])
    x1 = tl.minimum(tl.load(win_a_ptr + rows * 4 + 2, mask=row_ok, other=-1)[:, None],
                    tl.load(win_b_ptr + cols * 4 + 2, mask=col_ok, other=-1)[None, :])
    y1 = tl.minimum(tl.load(win_a_ptr + rows * 4 + 3, mask=row_ok, other=-1)[:, None],
                    tl.load(win_b_ptr + cols * 4 + 3, mask=col_ok, other=-1)[None, :])
    overlap = row_ok[:, None] & col_ok[None, :] & (x0 <= x1) & (y0 <= y1)
    if UPPER:
        overlap = overlap & (cols[None, :] > rows[:, None])
    if HAS_GROUPS:
        overlap = overlap & (tl.load(groups_a_ptr + rows, mask=row_ok, other=0)[:, None]
                             == tl.load(groups_b_ptr + cols, mask=col_ok, other=0)[None, :])
    return overlap, x0, y0, x1, y1


# ------------------------------------------------------------------------------ packing (triton/mask_postprocess.py)
@triton.jit
def pack_last_axis(pixels, bits):
    """[H, W, 32] 0/1 pixels -> [H, W] int32 words, LSB first (disjoint bits: the sum is their OR)."""
    return tl.sum(pixels.to(tl.uint32) << bits, axis=2).to(tl.int32, bitcast=True)


@triton.jit
def pack_bits_first(pixels):
    """[32, W, H] 0/1 pixels -> [W, H] int32 words, LSB first (disjoint bits: the sum is their OR)."""
    shifts = tl.arange(0, 32)[:, None, None]
    return tl.sum(pixels.to(tl.uint32) << shifts, axis=0).to(tl.int32, bitcast=True)


@triton.jit
def word_extent(words, word_ids, col_lo, col_hi, big):
    """Per lane: the lowest and highest set column so far, from packed words [.., W] at word_ids."""
    occupied = words != 0
    col_lo = tl.minimum(col_lo, tl.where(occupied, word_ids * 32 + _bits.lowest_bit(words), big))
    col_hi = tl.maximum(col_hi, tl.where(occupied, word_ids * 32 + _bits.highest_bit(words), -1))
    return col_lo, col_hi
