"""Multi-scale pooling mixer in Triton (channels-last), forward and backward.

Forward, per pixel q: y = x + sum_k avg_k(z)[q] / K - z[q], z = x * scale + shift, avg_k the stride-1
"same" average pool of size 2 R_k + 1 that counts only cells inside the image. Because each avg_k is a
mean over valid cells, avg_k(z) = scale * S_k(x) / n_k + shift, and the shift cancels:
y = x + scale * (mean_k S_k(x) / n_k - x). Each program owns a BLOCK_W x BLOCK_C tile of one image row and
reads the (2 RMAX + 1)^2 shifted tiles (cache hits; x is read from DRAM about once, y written once); each
tap is one masked load and one add into the ring accumulator of the smallest window containing it
(nested window sums S_k are the running sums of the rings).
The backward is the transposed stencil: the weight of a neighbour p is 1 / (K n_k(p)), the count at p
instead of at q; it also emits per-program partial sums of dscale and dshift (reduced by the launcher), so
no full-size intermediate is written.
"""
import torch
import triton
import triton.language as tl

from litesam_kernels.triton import _tiles as tiles

BLOCK_W = 32
MAX_POOLS = 3


@triton.jit
def _pool_mixer_fwd_kernel(x_ptr, scale_ptr, out_ptr, H, W, C,
                           R0: tl.constexpr, R1: tl.constexpr, R2: tl.constexpr, RMAX: tl.constexpr,
                           NUM_POOLS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    # radii ascending, unused ones -1 (after the used ones)
    ACC = scale_ptr.dtype.element_ty
    h, ws, cs, w_ok, c_ok, row_base = tiles.nhwc_row_tile(H, W, C, BLOCK_W, BLOCK_C)
    ring0 = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
    ring1 = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
    ring2 = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
    for i in tl.static_range(0, 2 * RMAX + 1):
        dy = i - RMAX
        hh = h + dy
        row_ok = (hh >= 0) & (hh < H)
        for j in tl.static_range(0, 2 * RMAX + 1):
            dx = j - RMAX
            ww = ws + dx
            ok = w_ok & (ww >= 0) & (ww < W) & row_ok
            offs = (row_base + dy * W + ww)[:, None] * C + cs[None, :]
            v = tl.load(x_ptr + offs, mask=ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
            if (dy <= R0) and (dy >= -R0) and (dx <= R0) and (dx >= -R0):
                ring0 += v
            elif (dy <= R1) and (dy >= -R1) and (dx <= R1) and (dx >= -R1):
                ring1 += v
            else:
                ring2 += v
    inv0 = 1.0 / tl.maximum((tl.minimum(h + R0, H - 1) - tl.maximum(h - R0, 0) + 1)
                            * (tl.minimum(ws + R0, W - 1) - tl.maximum(ws - R0, 0) + 1), 1).to(ACC)
    pooled = ring0 * inv0[:, None]
    if R1 >= 0:
        inv1 = 1.0 / tl.maximum((tl.minimum(h + R1, H - 1) - tl.maximum(h - R1, 0) + 1)
                                * (tl.minimum(ws + R1, W - 1) - tl.maximum(ws - R1, 0) + 1), 1).to(ACC)
        ring1 += ring0
        pooled += ring1 * inv1[:, None]
    if R2 >= 0:
        inv2 = 1.0 / tl.maximum((tl.minimum(h + R2, H - 1) - tl.maximum(h - R2, 0) + 1)
                                * (tl.minimum(ws + R2, W - 1) - tl.maximum(ws - R2, 0) + 1), 1).to(ACC)
        ring2 += ring1
        pooled += ring2 * inv2[:, None]
    m2 = w_ok[:, None] & c_ok[None, :]
    offs = (row_base + ws)[:, None] * C + cs[None, :]
    x = tl.load(x_ptr + offs, mask=m2, other=0.0).to(ACC)
    scale = tl.load(scale_ptr + cs, mask=c_ok, other=0.0)
    y = x + scale[None, :] * (pooled / NUM_POOLS - x)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _pool_mixer_bwd_kernel(g_ptr, x_ptr, scale_ptr, dx_ptr, partial_ptr, H, W, C,
                           R0: tl.constexpr, R1: tl.constexpr, R2: tl.constexpr, RMAX: tl.constexpr,
                           NUM_POOLS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC = scale_ptr.dtype.element_ty
    h, ws, cs, w_ok, c_ok, row_base = tiles.nhwc_row_tile(H, W, C, BLOCK_W, BLOCK_C)
    acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
    for i in tl.static_range(0, 2 * RMAX + 1):
        dy = i - RMAX
        hh = h + dy
        row_ok = (hh >= 0) & (hh < H)
        for j in tl.static_range(0, 2 * RMAX + 1):
            dx = j - RMAX
            ww = ws + dx
            ok = w_ok & (ww >= 0) & (ww < W) & row_ok
            offs = (row_base + dy * W + ww)[:, None] * C + cs[None, :]
            v = tl.load(g_ptr + offs, mask=ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
            # the neighbour's own window counts (clamped: out-of-image neighbours are masked to 0 above)
            weight = tl.zeros([BLOCK_W], dtype=ACC)
            if (dy <= R0) and (dy >= -R0) and (dx <= R0) and (dx >= -R0):
                weight += 1.0 / tl.maximum((tl.minimum(hh + R0, H - 1) - tl.maximum(hh - R0, 0) + 1)
                                           * (tl.minimum(ww + R0, W - 1) - tl.maximum(ww - R0, 0) + 1), 1).to(ACC)
            if (dy <= R1) and (dy >= -R1) and (dx <= R1) and (dx >= -R1):
                weight += 1.0 / tl.maximum((tl.minimum(hh + R1, H - 1) - tl.maximum(hh - R1, 0) + 1)
                                           * (tl.minimum(ww + R1, W - 1) - tl.maximum(ww - R1, 0) + 1), 1).to(ACC)
            if (dy <= R2) and (dy >= -R2) and (dx <= R2) and (dx >= -R2):
                weight += 1.0 / tl.maximum((tl.minimum(hh + R2, H - 1) - tl.maximum(hh - R2, 0) + 1)
                                           * (tl.minimum(ww + R2, W - 1) - tl.maximum(ww - R2, 0) + 1), 1).to(ACC)
            acc += v * weight[:, None]
    m2 = w_ok[:, None] & c_ok[None, :]
    offs = (row_base + ws)[:, None] * C + cs[None, :]
    x = tl.load(x_ptr + offs, mask=m2, other=0.0).to(ACC)
    g = tl.load(g_ptr + offs, mask=m2, other=0.0).to(ACC)
    scale = tl.load(scale_ptr + cs, mask=c_ok, other=0.0)
    dz = tl.where(m2, acc / NUM_POOLS - g, 0.0)
    tl.store(dx_ptr + offs, (g + scale[None, :] * dz).to(dx_ptr.dtype.element_ty), mask=m2)
    prog = tiles.nhwc_row_program()
    tl.store(partial_ptr + prog * 2 * C + cs, tl.sum(dz * x, axis=0), mask=c_ok)
    tl.store(partial_ptr + prog * 2 * C + C + cs, tl.sum(dz, axis=0), mask=c_ok)


def _radii(pool_sizes):
    radii = sorted(k // 2 for k in pool_sizes) + [-1] * (MAX_POOLS - len(pool_sizes))
    return dict(R0=radii[0], R1=radii[1], R2=radii[2], RMAX=max(radii), NUM_POOLS=len(pool_sizes))


def _grid_and_block(x):
    b, h, w, c = x.shape
    block_c = min(64, max(16, triton.next_power_of_2(c)))
    return (triton.cdiv(w, BLOCK_W), b * h, triton.cdiv(c, block_c)), block_c


def pool_mixer_forward(x, scale, pool_sizes):
    """x: (B, H, W, C) contiguous; scale: (C,) in the accumulation dtype (the shift cancels)."""
    out = torch.empty_like(x)
    grid, block_c = _grid_and_block(x)
    _pool_mixer_fwd_kernel[grid](x, scale, out, x.shape[1], x.shape[2], x.shape[3], **_radii(pool_sizes),
                                 BLOCK_W=BLOCK_W, BLOCK_C=block_c, num_warps=4)
    return out


def pool_mixer_backward(grad, x, scale, pool_sizes):
    """(dx, dscale, dshift) for the forward above; grad contiguous like x."""
    dx = torch.empty_like(x)
    grid, block_c = _grid_and_block(x)
    c = x.shape[3]
    partial = torch.zeros(grid[0] * grid[1], 2, c, dtype=scale.dtype, device=x.device)
    _pool_mixer_bwd_kernel[grid](grad, x, scale, dx, partial, x.shape[1], x.shape[2], c, **_radii(pool_sizes),
                                 BLOCK_W=BLOCK_W, BLOCK_C=block_c, num_warps=4)
    return dx, partial[:, 0].sum(0), partial[:, 1].sum(0)


def _aot(dtype, backward):
    if backward:
        kernel, sig = _pool_mixer_bwd_kernel, {"g_ptr": f"*{dtype}", "x_ptr": f"*{dtype}", "scale_ptr": "*fp32",
                                               "dx_ptr": f"*{dtype}", "partial_ptr": "*fp32"}
    else:
        kernel, sig = _pool_mixer_fwd_kernel, {"x_ptr": f"*{dtype}", "scale_ptr": "*fp32", "out_ptr": f"*{dtype}"}
    sig.update({"H": "i32", "W": "i32", "C": "i32"})
    const = dict(_radii((3, 5, 7)), BLOCK_W=BLOCK_W, BLOCK_C=64)
    sig.update({k: "constexpr" for k in const})
    return (kernel, sig, const, {"num_warps": 4})


# For the sm_90a AOT check in CI: (kernel, signature, constexprs, options).
AOT_KERNELS = [_aot(dt, bw) for dt in ("fp16", "bf16", "fp32") for bw in (False, True)]
