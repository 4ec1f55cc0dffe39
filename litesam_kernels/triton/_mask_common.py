"""@triton.jit helpers shared by the mask kernels (inlined into them; not kernels themselves)."""
import triton
import triton.language as tl


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
def or_rows(words):
    # OR over axis 0 of int32 words, bit by bit through max (no bitwise reduction needed).
    bits = tl.arange(0, 32)
    per_bit = tl.max((words[:, :, None] >> bits[None, None, :]) & 1, axis=0)  # [W, 32]
    return tl.sum(per_bit << bits[None, :], axis=1)


@triton.jit
def stage1(logits_base, low_w, crop_rows, y1_ptr, x1_ptr, crop_cols, EMULATE_FMA: tl.constexpr):
    """Value of the 1024-grid (after the first bilinear resize) at crop_rows [BH,1,1] x crop_cols [1,W,32]."""
    r0 = tl.load(y1_ptr + crop_rows * 4 + 0).to(tl.int32)
    r1 = tl.load(y1_ptr + crop_rows * 4 + 1).to(tl.int32)
    rw0 = tl.load(y1_ptr + crop_rows * 4 + 2)
    rw1 = tl.load(y1_ptr + crop_rows * 4 + 3)
    c0 = tl.load(x1_ptr + crop_cols * 4 + 0).to(tl.int32)
    c1 = tl.load(x1_ptr + crop_cols * 4 + 1).to(tl.int32)
    cw0 = tl.load(x1_ptr + crop_cols * 4 + 2)
    cw1 = tl.load(x1_ptr + crop_cols * 4 + 3)
    a = tl.load(logits_base + r0 * low_w + c0).to(tl.float32)
    b = tl.load(logits_base + r0 * low_w + c1).to(tl.float32)
    c = tl.load(logits_base + r1 * low_w + c0).to(tl.float32)
    d = tl.load(logits_base + r1 * low_w + c1).to(tl.float32)
    return blend(a, b, c, d, rw0, rw1, cw0, cw1, EMULATE_FMA)


@triton.jit
def blend(a, b, c, d, rw0, rw1, cw0, cw1, EMULATE_FMA: tl.constexpr):
    # torch (CPU kernels built with FMA, and nvcc by default) contracts w0*a + w1*b into fma(a, w0, w1*b).
    top = fma(a, cw0, b * cw1, EMULATE_FMA)
    bottom = fma(c, cw0, d * cw1, EMULATE_FMA)
    return fma(top, rw0, bottom * rw1, EMULATE_FMA)
