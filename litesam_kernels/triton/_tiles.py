"""Tile indexing shared by the channels-last kernels (jit helpers, not kernels: no AOT entries)."""
import triton
import triton.language as tl


@triton.jit
def nhwc_row_tile(H, W, C, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile of one image row of an NHWC tensor, grid (W blocks, B*H, C blocks).

    Returns (h, ws, cs, w_ok, c_ok, row_base): the row, column and channel indices, their bounds masks,
    and the int64 flat pixel index of (b, h, 0)."""
    bh = tl.program_id(1)
    ws = tl.program_id(0) * BLOCK_W + tl.arange(0, BLOCK_W)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    return bh % H, ws, cs, ws < W, cs < C, bh.to(tl.int64) * W


@triton.jit
def nhwc_row_program():
    """A flat int64 index of this (image row, W block) program, for per-program partial sums."""
    return (tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)).to(tl.int64)


@triton.jit
def matrix_row_tile(M, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's BLOCK_M rows of a row-major (M, C) matrix, all C columns in one block.

    Returns (rows, cs, r_ok, c_ok, mask, offs): indices, bounds masks, the 2-D mask and int64 offsets."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cs = tl.arange(0, BLOCK_C)
    r_ok = rows < M
    c_ok = cs < C
    return rows, cs, r_ok, c_ok, r_ok[:, None] & c_ok[None, :], rows.to(tl.int64)[:, None] * C + cs[None, :]
