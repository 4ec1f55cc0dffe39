"""Depthwise k x k conv + bias (a folded BatchNorm) + optional GELU + optional residual, channels-last, in Triton.

Each program owns a BLOCK_W x BLOCK_C tile of one image row and reads the k^2 shifted tiles (cache hits):
x read about once, y written once. The backward is two stencil passes: (1) recompute the pre-activation
and write g * act'(u) (float32) plus partial dbias; (2) dx = [g +] the transposed stencil of it, and the
weight gradient as per-program partial sums of x[q] * gu[q - d] (reduced by the launcher).
"""
import torch
import triton
import triton.language as tl

from litesam_kernels.triton import _tiles as tiles

BLOCK_W = 32


@triton.jit
def _dwconv_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, H, W, C, K: tl.constexpr, ACT: tl.constexpr,
                       RESIDUAL: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC = w_ptr.dtype.element_ty
    R: tl.constexpr = K // 2
    h, ws, cs, w_ok, c_ok, row_base = tiles.nhwc_row_tile(H, W, C, BLOCK_W, BLOCK_C)
    acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
    for ky in tl.static_range(0, K):
        hh = h + ky - R
        row_ok = (hh >= 0) & (hh < H)
        for kx in tl.static_range(0, K):
            ww = ws + kx - R
            ok = w_ok & (ww >= 0) & (ww < W) & row_ok
            v = tl.load(x_ptr + ((row_base + (ky - R) * W + ww)[:, None] * C + cs[None, :]),
                        mask=ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
            wt = tl.load(w_ptr + (ky * K + kx) * C + cs, mask=c_ok, other=0.0)
            acc += v * wt[None, :]
    u = acc + tl.load(b_ptr + cs, mask=c_ok, other=0.0)[None, :]
    m2 = w_ok[:, None] & c_ok[None, :]
    offs = (row_base + ws)[:, None] * C + cs[None, :]
    if ACT:
        y = 0.5 * u * (1.0 + tl.erf(u * 0.7071067811865476))
    else:
        y = u
    if RESIDUAL:
        y += tl.load(x_ptr + offs, mask=m2, other=0.0).to(ACC)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _dwconv_grad_pre_kernel(x_ptr, w_ptr, b_ptr, g_ptr, gu_ptr, partial_ptr, H, W, C, K: tl.constexpr,
                            ACT: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC = w_ptr.dtype.element_ty
    R: tl.constexpr = K // 2
    h, ws, cs, w_ok, c_ok, row_base = tiles.nhwc_row_tile(H, W, C, BLOCK_W, BLOCK_C)
    m2 = w_ok[:, None] & c_ok[None, :]
    offs = (row_base + ws)[:, None] * C + cs[None, :]
    g = tl.load(g_ptr + offs, mask=m2, other=0.0).to(ACC)
    if ACT:
        acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
        for ky in tl.static_range(0, K):
            hh = h + ky - R
            row_ok = (hh >= 0) & (hh < H)
            for kx in tl.static_range(0, K):
                ww = ws + kx - R
                ok = w_ok & (ww >= 0) & (ww < W) & row_ok
                v = tl.load(x_ptr + ((row_base + (ky - R) * W + ww)[:, None] * C + cs[None, :]),
                            mask=ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
                wt = tl.load(w_ptr + (ky * K + kx) * C + cs, mask=c_ok, other=0.0)
                acc += v * wt[None, :]
        u = acc + tl.load(b_ptr + cs, mask=c_ok, other=0.0)[None, :]
        cdf = 0.5 * (1.0 + tl.erf(u * 0.7071067811865476))
        g = g * (cdf + u * tl.exp(-0.5 * u * u) * 0.3989422804014327)
    g = tl.where(m2, g, 0.0)
    tl.store(gu_ptr + offs, g, mask=m2)
    prog = tiles.nhwc_row_program()
    tl.store(partial_ptr + prog * C + cs, tl.sum(g, axis=0), mask=c_ok)


@triton.jit
def _dwconv_bwd_kernel(x_ptr, w_ptr, gu_ptr, g_ptr, dx_ptr, partial_ptr, H, W, C, K: tl.constexpr,
                       RESIDUAL: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC = w_ptr.dtype.element_ty
    R: tl.constexpr = K // 2
    h, ws, cs, w_ok, c_ok, row_base = tiles.nhwc_row_tile(H, W, C, BLOCK_W, BLOCK_C)
    m2 = w_ok[:, None] & c_ok[None, :]
    offs = (row_base + ws)[:, None] * C + cs[None, :]
    x = tl.load(x_ptr + offs, mask=m2, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
    prog = tiles.nhwc_row_program()
    for ky in tl.static_range(0, K):
        hh = h - (ky - R)
        row_ok = (hh >= 0) & (hh < H)
        for kx in tl.static_range(0, K):
            ww = ws - (kx - R)
            ok = w_ok & (ww >= 0) & (ww < W) & row_ok
            gu = tl.load(gu_ptr + ((row_base - (ky - R) * W + ww)[:, None] * C + cs[None, :]),
                         mask=ok[:, None] & c_ok[None, :], other=0.0)
            wt = tl.load(w_ptr + (ky * K + kx) * C + cs, mask=c_ok, other=0.0)
            acc += gu * wt[None, :]
            tl.store(partial_ptr + (prog * K * K + ky * K + kx) * C + cs, tl.sum(gu * x, axis=0), mask=c_ok)
    if RESIDUAL:
        acc += tl.load(g_ptr + offs, mask=m2, other=0.0).to(ACC)
    tl.store(dx_ptr + offs, acc.to(dx_ptr.dtype.element_ty), mask=m2)


def _grid(x):
    b, h, w, c = x.shape
    block_c = min(64, max(16, triton.next_power_of_2(c)))
    return (triton.cdiv(w, BLOCK_W), b * h, triton.cdiv(c, block_c)), block_c


def dwconv_forward(x, w_taps, bias, k, act, residual):
    """x: (B, H, W, C) contiguous; w_taps: (k*k, C) and bias (C,) in the accumulation dtype."""
    out = torch.empty_like(x)
    grid, block_c = _grid(x)
    _dwconv_fwd_kernel[grid](x, w_taps, bias, out, x.shape[1], x.shape[2], x.shape[3], K=k, ACT=act,
                             RESIDUAL=residual, BLOCK_W=BLOCK_W, BLOCK_C=block_c, num_warps=4)
    return out


def dwconv_backward(grad, x, w_taps, bias, k, act, residual):
    """(dx, dw_taps (k*k, C), dbias) for the forward above."""
    grid, block_c = _grid(x)
    b, h, w, c = x.shape
    nprog = grid[0] * grid[1]
    gu = torch.empty(x.shape, dtype=w_taps.dtype, device=x.device)
    dbias = torch.zeros(nprog, c, dtype=w_taps.dtype, device=x.device)
    _dwconv_grad_pre_kernel[grid](x, w_taps, bias, grad, gu, dbias, h, w, c, K=k, ACT=act,
                                  BLOCK_W=BLOCK_W, BLOCK_C=block_c, num_warps=4)
    dx = torch.empty_like(x)
    dw = torch.zeros(nprog, k * k, c, dtype=w_taps.dtype, device=x.device)
    _dwconv_bwd_kernel[grid](x, w_taps, gu, grad, dx, dw, h, w, c, K=k, RESIDUAL=residual,
                             BLOCK_W=BLOCK_W, BLOCK_C=block_c, num_warps=4)
    return dx, dw.sum(0), dbias.sum(0)


def _aot(dtype, k):
    base = {"H": "i32", "W": "i32", "C": "i32"}
    fwd = {"x_ptr": f"*{dtype}", "w_ptr": "*fp32", "b_ptr": "*fp32", "out_ptr": f"*{dtype}", **base,
           "K": "constexpr", "ACT": "constexpr", "RESIDUAL": "constexpr",
           "BLOCK_W": "constexpr", "BLOCK_C": "constexpr"}
    pre = {"x_ptr": f"*{dtype}", "w_ptr": "*fp32", "b_ptr": "*fp32", "g_ptr": f"*{dtype}", "gu_ptr": "*fp32",
           "partial_ptr": "*fp32", **base, "K": "constexpr", "ACT": "constexpr", "BLOCK_W": "constexpr",
           "BLOCK_C": "constexpr"}
    bwd = {"x_ptr": f"*{dtype}", "w_ptr": "*fp32", "gu_ptr": "*fp32", "g_ptr": f"*{dtype}", "dx_ptr": f"*{dtype}",
           "partial_ptr": "*fp32", **base, "K": "constexpr", "RESIDUAL": "constexpr", "BLOCK_W": "constexpr",
           "BLOCK_C": "constexpr"}
    blocks = {"BLOCK_W": BLOCK_W, "BLOCK_C": 64}
    return [
        (_dwconv_fwd_kernel, fwd, {"K": k, "ACT": True, "RESIDUAL": True, **blocks}, {"num_warps": 4}),
        (_dwconv_grad_pre_kernel, pre, {"K": k, "ACT": True, **blocks}, {"num_warps": 4}),
        (_dwconv_bwd_kernel, bwd, {"K": k, "RESIDUAL": True, **blocks}, {"num_warps": 4}),
    ]


# For the sm_90a AOT check in CI: (kernel, signature, constexprs, options).
AOT_KERNELS = [e for dt in ("fp16", "bf16", "fp32") for k in (3, 7) for e in _aot(dt, k)]
