"""Tile indexing shared by the channels-last kernels: jit helpers (not kernels: no AOT entries) and the plain
Python launch arithmetic (grids, size limits) that tests check for huge shapes without launching anything.

Addressing: a program of an NHWC kernel touches one image only, so it adds a 64-bit image base
(``b * H * W * C``) to its pointers once and indexes inside the image with 32-bit offsets
``(h * W + w) * C + c``: one 32-bit multiply-add per tap instead of 64-bit arithmetic on every tap, valid while
one image plus the widest stencil halo has fewer than 2**31 elements (:func:`check_image_size`, before launch).
Grids are 1-D: CUDA allows 2**31 - 1 programs on grid axis 0 but only 65535 on axes 1 and 2 (a B*H axis failed
at B*H >= 65536), so each kernel decomposes one program id into (W block, C block, row or row chunk, image),
W blocks fastest so that programs that share halo columns run side by side (L2 hits).
"""
import triton
import triton.language as tl

MAX_GRID_X = 2**31 - 1  # CUDA grid axis 0
MAX_INT32 = 2**31 - 1
STENCIL_HALO = 8  # the widest stencil radius (a 15 x 15 pool) + 1


# ------------------------------------------------------------------------------------- launch arithmetic
def check_image_size(name, shape, halo=STENCIL_HALO):
    """ValueError unless one (H, W, C) image of ``shape`` (B, H, W, C), with ``halo`` rows and columns on each
    side, is addressable with 32-bit offsets (taps outside the image are masked, but their offsets are formed)."""
    _, h, w, c = (int(s) for s in shape)
    elements = (h + 2 * halo) * (w + 2 * halo) * c
    if elements > MAX_INT32:
        raise ValueError(f"{name}: one image of (H, W, C) = ({h}, {w}, {c}) is too large for the Triton kernels, "
                         f"which index inside an image with 32-bit offsets ((H + {2 * halo}) * (W + {2 * halo}) * C "
                         f"= {elements} > {MAX_INT32}); split the image or use the reference backend")


def grid_1d(programs, what):
    """``(programs,)``, or ValueError when it exceeds CUDA's grid axis 0 (or when the kernel's own 32-bit
    program arithmetic would overflow, which is the same bound)."""
    programs = int(programs)
    if programs > MAX_GRID_X:
        raise ValueError(f"{what} needs {programs} programs, more than the {MAX_GRID_X} a launch allows")
    return (max(programs, 1),)


def row_tile_grid(shape, block_w, block_c):
    """1-D grid of :func:`nhwc_row_tile` programs: one per (W block, C block, image row)."""
    b, h, w, c = (int(s) for s in shape)
    return grid_1d(triton.cdiv(w, block_w) * triton.cdiv(c, block_c) * b * h,
                   f"an NHWC row-tile kernel on {tuple(shape)}")


def strip_counts(shape, block_w, block_c, rows):
    """(W strips, C blocks, row chunks, images) of :func:`nhwc_strip_tile` programs."""
    b, h, w, c = (int(s) for s in shape)
    return triton.cdiv(w, block_w), triton.cdiv(c, block_c), triton.cdiv(h, rows), b


def strip_grid(shape, block_w, block_c, rows):
    """1-D grid of :func:`nhwc_strip_tile` programs: one per (W strip, C block, chunk of ``rows`` rows, image)."""
    n_w, n_c, n_rows, b = strip_counts(shape, block_w, block_c, rows)
    return grid_1d(n_w * n_c * n_rows * b, f"an NHWC strip kernel on {tuple(shape)}")


def strip_partial_rows(shape, block_w, rows):
    """Rows of a per-program partial-sum buffer of a strip kernel: one per (W strip, row chunk, image)."""
    n_w, _, n_rows, b = strip_counts(shape, block_w, 1, rows)
    return n_w * n_rows * b


def aot_signature(types, aligned=("H", "W", "C")):
    """An ``AOT_KERNELS`` signature: pointers 16-byte aligned (every torch allocation is) and the integers
    ``aligned`` divisible by 16 (``":16"``, as the JIT specialises them at LiteViT's shapes: H, W in 64..256 and C
    in 32..256), so CI compiles the variant a GPU runs (unpredicated, 128-bit accesses)."""
    return {name: f"{kind}:16" if kind.startswith("*") or name in aligned else kind for name, kind in types.items()}


# ------------------------------------------------------------------------------------------- jit helpers
@triton.jit
def nhwc_row_tile(H, W, C, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile of one image row of an NHWC tensor, 1-D grid :func:`row_tile_grid`.

    Returns (h, ws, cs, w_ok, c_ok, image_base): the row, the column and channel indices (int32), their bounds
    masks, and the int64 element offset of this program's image (add it to the pointers once)."""
    pid = tl.program_id(0)
    n_w = tl.cdiv(W, BLOCK_W)
    n_c = tl.cdiv(C, BLOCK_C)
    row = pid // (n_w * n_c)  # b * H + h
    ws = (pid % n_w) * BLOCK_W + tl.arange(0, BLOCK_W)
    cs = ((pid // n_w) % n_c) * BLOCK_C + tl.arange(0, BLOCK_C)
    return row % H, ws, cs, ws < W, cs < C, (row // H).to(tl.int64) * H * W * C


@triton.jit
def nhwc_strip_tile(H, W, C, ROWS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's column strip of an NHWC tensor: BLOCK_W columns x BLOCK_C channels of the rows
    [h0, h_end) (ROWS rows, fewer at the bottom) of one image, 1-D grid :func:`strip_grid`.

    Returns (h0, h_end, ws, cs, w_ok, c_ok, image_base, partial_row): as :func:`nhwc_row_tile`, plus this
    program's row in a partial-sum buffer of :func:`strip_partial_rows` rows (shared by its C blocks)."""
    pid = tl.program_id(0)
    n_w = tl.cdiv(W, BLOCK_W)
    n_c = tl.cdiv(C, BLOCK_C)
    strip = pid % n_w
    chunk_and_image = pid // (n_w * n_c)  # b * n_chunks + chunk
    n_chunks = tl.cdiv(H, ROWS)
    h0 = (chunk_and_image % n_chunks) * ROWS
    ws = strip * BLOCK_W + tl.arange(0, BLOCK_W)
    cs = ((pid // n_w) % n_c) * BLOCK_C + tl.arange(0, BLOCK_C)
    image_base = (chunk_and_image // n_chunks).to(tl.int64) * H * W * C
    return h0, tl.minimum(h0 + ROWS, H), ws, cs, ws < W, cs < C, image_base, chunk_and_image * n_w + strip


@triton.jit
def matrix_row_tile(M, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's BLOCK_M rows of a row-major (M, C) matrix, all C columns in one block.

    Returns (rows, cs, r_ok, c_ok, mask, offs): indices, bounds masks, the 2-D mask and int64 offsets."""
    return matrix_block(tl.program_id(0), M, C, BLOCK_M, BLOCK_C)


@triton.jit
def matrix_block(block, M, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Row block ``block`` of a row-major (M, C) matrix, as :func:`matrix_row_tile` (for grid-stride loops)."""
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    cs = tl.arange(0, BLOCK_C)
    r_ok = rows < M
    c_ok = cs < C
    return rows, cs, r_ok, c_ok, r_ok[:, None] & c_ok[None, :], rows.to(tl.int64)[:, None] * C + cs[None, :]
