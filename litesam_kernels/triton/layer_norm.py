"""LayerNorm over the channels of a channels-last tensor in Triton: rows of C contiguous values.

Forward writes y only. The backward reads whole rows of x
anyway, so it recomputes the statistics itself (no saved state) and writes dx plus per-program partial sums
of dweight and dbias (reduced by the launcher), never a full-size temporary.
"""
import torch
import triton
import triton.language as tl

from litesam_kernels.triton import _tiles as tiles

BLOCK_M = 16


@triton.jit
def _layer_norm_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, C, eps, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC = w_ptr.dtype.element_ty
    rows, cs, r_ok, c_ok, m2, offs = tiles.matrix_row_tile(M, C, BLOCK_M, BLOCK_C)
    x = tl.load(x_ptr + offs, mask=m2, other=0.0).to(ACC)
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(m2, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / C
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + cs, mask=c_ok, other=0.0).to(ACC)
    b = tl.load(b_ptr + cs, mask=c_ok, other=0.0).to(ACC)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _layer_norm_bwd_kernel(g_ptr, x_ptr, w_ptr, dx_ptr, partial_ptr, M, C, eps,
                           BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC = partial_ptr.dtype.element_ty
    pid = tl.program_id(0)
    rows, cs, r_ok, c_ok, m2, offs = tiles.matrix_row_tile(M, C, BLOCK_M, BLOCK_C)
    x = tl.load(x_ptr + offs, mask=m2, other=0.0).to(ACC)
    g = tl.load(g_ptr + offs, mask=m2, other=0.0).to(ACC)
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(m2, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / C + eps)
    w = tl.load(w_ptr + cs, mask=c_ok, other=0.0).to(ACC)
    xhat = xc * rstd[:, None]
    gw = g * w[None, :]
    c1 = tl.sum(gw * xhat, axis=1) / C
    c2 = tl.sum(gw, axis=1) / C
    dx = (gw - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=m2)
    base = pid.to(tl.int64) * 2 * C
    tl.store(partial_ptr + base + cs, tl.sum(g * xhat, axis=0), mask=c_ok)
    tl.store(partial_ptr + base + C + cs, tl.sum(g, axis=0), mask=c_ok)


def _block_c(c):
    return max(16, triton.next_power_of_2(c))


def layer_norm_forward(x2d, weight, bias, eps):
    """x2d: (M, C) contiguous; weight, bias in the accumulation dtype -> y."""
    m, c = x2d.shape
    y = torch.empty_like(x2d)
    _layer_norm_fwd_kernel[(triton.cdiv(m, BLOCK_M),)](x2d, weight, bias, y, m, c, eps,
                                                     BLOCK_M=BLOCK_M, BLOCK_C=_block_c(c), num_warps=4)
    return y


def layer_norm_backward(g2d, x2d, weight, eps):
    """(dx, dweight, dbias) with dweight/dbias in the dtype of weight (the accumulation dtype)."""
    m, c = x2d.shape
    dx = torch.empty_like(x2d)
    grid = triton.cdiv(m, BLOCK_M)
    partial = torch.empty(grid, 2, c, dtype=weight.dtype, device=x2d.device)
    _layer_norm_bwd_kernel[(grid,)](g2d, x2d, weight, dx, partial, m, c, eps,
                                    BLOCK_M=BLOCK_M, BLOCK_C=_block_c(c), num_warps=4)
    return dx, partial[:, 0].sum(0), partial[:, 1].sum(0)


def _aot(dtype, c):
    fwd = {"x_ptr": f"*{dtype}", "w_ptr": "*fp32", "b_ptr": "*fp32", "y_ptr": f"*{dtype}", "M": "i32", "C": "i32",
           "eps": "fp32", "BLOCK_M": "constexpr", "BLOCK_C": "constexpr"}
    bwd = {"g_ptr": f"*{dtype}", "x_ptr": f"*{dtype}", "w_ptr": "*fp32", "dx_ptr": f"*{dtype}",
           "partial_ptr": "*fp32", "M": "i32", "C": "i32", "eps": "fp32",
           "BLOCK_M": "constexpr", "BLOCK_C": "constexpr"}
    const = {"BLOCK_M": BLOCK_M, "BLOCK_C": c}
    return [(_layer_norm_fwd_kernel, fwd, const, {"num_warps": 4}),
            (_layer_norm_bwd_kernel, bwd, const, {"num_warps": 4})]


# For the sm_90a AOT check in CI: (kernel, signature, constexprs, options).
AOT_KERNELS = [e for dt in ("fp16", "bf16", "fp32") for c in (128, 256) for e in _aot(dt, c)]
