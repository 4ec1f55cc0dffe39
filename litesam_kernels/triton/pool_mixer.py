"""Multi-scale pooling mixer in Triton (channels-last): one kernel for the forward and the backward.

Forward, per pixel q: y = x + sum_k avg_k(z)[q] / K - z[q], z = x * scale + shift, avg_k the stride-1
"same" average pool of size 2 R_k + 1 that counts only cells inside the image. Each program owns a
BLOCK_W x BLOCK_C tile of one image row and reads the (2 RMAX + 1)^2 shifted tiles (cache hits), so x is
read from DRAM about once and y written once. The backward is the transposed stencil: the weight of a
neighbour p is 1 / (K n_k(p)), the count at p instead of at q; it also emits per-program partial sums of
dscale and dshift (reduced by the launcher) so no full-size intermediate is written.
"""
import torch
import triton
import triton.language as tl

BLOCK_W = 32
MAX_POOLS = 3


@triton.jit
def _pool_mixer_kernel(src_ptr, x_ptr, scale_ptr, shift_ptr, out_ptr, partial_ptr, H, W, C,
                       R0: tl.constexpr, R1: tl.constexpr, R2: tl.constexpr, RMAX: tl.constexpr,
                       NUM_POOLS: tl.constexpr, BACKWARD: tl.constexpr,
                       BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC = scale_ptr.dtype.element_ty
    pid_w = tl.program_id(0)
    bh = tl.program_id(1)
    pid_c = tl.program_id(2)
    h = bh % H
    ws = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    cs = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    w_ok = ws < W
    c_ok = cs < C
    scale = tl.load(scale_ptr + cs, mask=c_ok, other=0.0)
    shift = tl.load(shift_ptr + cs, mask=c_ok, other=0.0)
    row_base = bh.to(tl.int64) * W
    acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
    # counts at the centre (forward); the backward recomputes them at each neighbour
    inv0 = 1.0 / tl.maximum((tl.minimum(h + R0, H - 1) - tl.maximum(h - R0, 0) + 1)
                  * (tl.minimum(ws + R0, W - 1) - tl.maximum(ws - R0, 0) + 1), 1).to(ACC)
    inv1 = 1.0 / tl.maximum((tl.minimum(h + R1, H - 1) - tl.maximum(h - R1, 0) + 1)
                  * (tl.minimum(ws + R1, W - 1) - tl.maximum(ws - R1, 0) + 1), 1).to(ACC)
    inv2 = 1.0 / tl.maximum((tl.minimum(h + R2, H - 1) - tl.maximum(h - R2, 0) + 1)
                  * (tl.minimum(ws + R2, W - 1) - tl.maximum(ws - R2, 0) + 1), 1).to(ACC)
    for i in tl.static_range(0, 2 * RMAX + 1):
        dy = i - RMAX
        hh = h + dy
        row_ok = (hh >= 0) & (hh < H)
        for j in tl.static_range(0, 2 * RMAX + 1):
            dx = j - RMAX
            ww = ws + dx
            ok = w_ok & (ww >= 0) & (ww < W) & row_ok
            m2 = ok[:, None] & c_ok[None, :]
            offs = (row_base + dy * W + ww)[:, None] * C + cs[None, :]
            v = tl.load(src_ptr + offs, mask=m2, other=0.0).to(ACC)
            if BACKWARD:
                n0 = 1.0 / tl.maximum((tl.minimum(hh + R0, H - 1) - tl.maximum(hh - R0, 0) + 1)
                            * (tl.minimum(ww + R0, W - 1) - tl.maximum(ww - R0, 0) + 1), 1).to(ACC)
                n1 = 1.0 / tl.maximum((tl.minimum(hh + R1, H - 1) - tl.maximum(hh - R1, 0) + 1)
                            * (tl.minimum(ww + R1, W - 1) - tl.maximum(ww - R1, 0) + 1), 1).to(ACC)
                n2 = 1.0 / tl.maximum((tl.minimum(hh + R2, H - 1) - tl.maximum(hh - R2, 0) + 1)
                            * (tl.minimum(ww + R2, W - 1) - tl.maximum(ww - R2, 0) + 1), 1).to(ACC)
            else:
                v = tl.where(m2, v * scale[None, :] + shift[None, :], 0.0)
                n0 = inv0
                n1 = inv1
                n2 = inv2
            weight = tl.zeros([BLOCK_W], dtype=ACC)
            if (dy <= R0) and (dy >= -R0) and (dx <= R0) and (dx >= -R0):
                weight += n0
            if (dy <= R1) and (dy >= -R1) and (dx <= R1) and (dx >= -R1):
                weight += n1
            if (dy <= R2) and (dy >= -R2) and (dx <= R2) and (dx >= -R2):
                weight += n2
            acc += v * weight[:, None]
    acc = acc / NUM_POOLS
    m2 = w_ok[:, None] & c_ok[None, :]
    offs = (row_base + ws)[:, None] * C + cs[None, :]
    x = tl.load(x_ptr + offs, mask=m2, other=0.0).to(ACC)
    if BACKWARD:
        g = tl.load(src_ptr + offs, mask=m2, other=0.0).to(ACC)
        dz = tl.where(m2, acc - g, 0.0)
        tl.store(out_ptr + offs, (g + scale[None, :] * dz).to(out_ptr.dtype.element_ty), mask=m2)
        prog = (bh * tl.num_programs(0) + pid_w).to(tl.int64)
        tl.store(partial_ptr + prog * 2 * C + cs, tl.sum(dz * x, axis=0), mask=c_ok)
        tl.store(partial_ptr + prog * 2 * C + C + cs, tl.sum(dz, axis=0), mask=c_ok)
    else:
        z = x * scale[None, :] + shift[None, :]
        tl.store(out_ptr + offs, (x + acc - z).to(out_ptr.dtype.element_ty), mask=m2)


def _radii(pool_sizes):
    radii = [k // 2 for k in pool_sizes] + [-1] * (MAX_POOLS - len(pool_sizes))
    return dict(R0=radii[0], R1=radii[1], R2=radii[2], RMAX=max(radii), NUM_POOLS=len(pool_sizes))


def _grid_and_block(x):
    b, h, w, c = x.shape
    block_c = min(64, max(16, triton.next_power_of_2(c)))
    return (triton.cdiv(w, BLOCK_W), b * h, triton.cdiv(c, block_c)), block_c


def pool_mixer_forward(x, scale, shift, pool_sizes):
    """x: (B, H, W, C) contiguous; scale, shift: (C,) in the accumulation dtype."""
    out = torch.empty_like(x)
    grid, block_c = _grid_and_block(x)
    _pool_mixer_kernel[grid](x, x, scale, shift, out, scale, x.shape[1], x.shape[2], x.shape[3],
                             **_radii(pool_sizes), BACKWARD=False, BLOCK_W=BLOCK_W, BLOCK_C=block_c, num_warps=4)
    return out


def pool_mixer_backward(grad, x, scale, shift, pool_sizes):
    """(dx, dscale, dshift) for the forward above; grad contiguous like x."""
    dx = torch.empty_like(x)
    grid, block_c = _grid_and_block(x)
    c = x.shape[3]
    partial = torch.zeros(grid[0] * grid[1], 2, c, dtype=scale.dtype, device=x.device)
    _pool_mixer_kernel[grid](grad, x, scale, shift, dx, partial, x.shape[1], x.shape[2], c,
                             **_radii(pool_sizes), BACKWARD=True, BLOCK_W=BLOCK_W, BLOCK_C=block_c, num_warps=4)
    return dx, partial[:, 0].sum(0), partial[:, 1].sum(0)


def _aot(dtype, backward):
    sig = {"src_ptr": f"*{dtype}", "x_ptr": f"*{dtype}", "scale_ptr": "*fp32", "shift_ptr": "*fp32",
           "out_ptr": f"*{dtype}", "partial_ptr": "*fp32", "H": "i32", "W": "i32", "C": "i32"}
    const = dict(_radii((3, 5, 7)), BACKWARD=backward, BLOCK_W=BLOCK_W, BLOCK_C=64)
    sig.update({k: "constexpr" for k in const})
    return (_pool_mixer_kernel, sig, const, {"num_warps": 4})


# For the sm_90a AOT check in CI: (kernel, signature, constexprs, options).
AOT_KERNELS = [_aot(dt, bw) for dt in ("fp16", "bf16", "fp32") for bw in (False, True)]
