"""Multi-scale pooling mixer in Triton (channels-last), forward and backward, as separable window sums.

Math, per pixel q = (h, w): y = x + mean_k avg_k(z)[q] - z[q], z = x * scale + shift, avg_k the stride-1 "same"
average pool of radius r_k that counts only the cells inside the image (``count_include_pad=False``). Each
avg_k is a mean of valid cells, so the shift cancels: y = x + scale * (sum_k S_k(x)[q] / (K n_k(q)) - x), with
S_k the window sum. Both the count and the sum are separable: n_k(h, w) = nv_k(h) nh_k(w) (window rows and
columns inside the image) and S_k = a vertical sum over |dy| <= r_k of horizontal sums over |dx| <= r_k.

The walk: a program owns a strip of BLOCK_W columns x BLOCK_C channels and ROWS output rows of one image and
walks down its input rows once, h0 - RMAX .. h_end + RMAX - 1. Per incoming row it loads the 2 RMAX + 1
horizontally shifted tiles (one DRAM read, the shifts hit L1), forms the nested horizontal sums H_k (already
divided by K nh_k(w)), adds them into a ring of the 2 RMAX + 1 pending output rows held in registers (each
weighted by its row's 1 / nv_k), emits the row that just became complete and rotates the ring. Every input
element is read from DRAM about once (the strip's halo columns and the chunk's halo rows are re-read by the
neighbouring programs, (BLOCK_W + 2 RMAX) / BLOCK_W and (ROWS + 2 RMAX) / ROWS, mostly from L2) and every
output written once: 2 x itemsize bytes per element (4 for bf16), where the direct 7x7 stencil issued 49
loads per output. Every window sum is an exact sum of its cells (no running add-and-subtract), so an inf or a
NaN stays inside the windows that contain it, as in ``F.avg_pool2d``.

The backward is the transposed stencil, which is separable in the same way: the transpose of a mean over
valid cells divides by the count of the *neighbour* whose window contains the pixel,
dz[p] = sum_k sum_{q in win_k(p)} g[q] / (K nv_k(q_h) nh_k(q_w)) - g[p]: the horizontal pass weights each tap
by its own column's 1 / (K nh_k), the vertical pass each incoming row by its 1 / nv_k, the same ring
accumulates. dx = g + scale dz; dscale = sum dz x and dshift = sum dz come out as one partial row per program
(reduced by the launcher), never a full-size intermediate.
"""
import torch
import triton
import triton.language as tl

from litesam_kernels.triton import _tiles as tiles
from litesam_kernels.triton._configs import LaunchConfig, LaunchConfigs

MAX_POOLS = 3
MAX_BLOCK_C = 64

# TILE = BLOCK_W x BLOCK_C elements per program (BLOCK_C follows the channels, BLOCK_W = TILE // BLOCK_C), so the
# registers per thread do not depend on C: the ring holds 2 RMAX + 1 fp32 tiles of TILE / threads elements (8 per
# thread in every configuration below). The default is also the interpreter's (big tiles, few programs).
FWD_CONFIGS = LaunchConfigs("pool_mixer.fwd", [
    LaunchConfig({"TILE": 1024, "ROWS": 32}, num_warps=4),
    LaunchConfig({"TILE": 1024, "ROWS": 64}, num_warps=4),
    LaunchConfig({"TILE": 2048, "ROWS": 32}, num_warps=8),
])
BWD_CONFIGS = LaunchConfigs("pool_mixer.bwd", [
    LaunchConfig({"TILE": 1024, "ROWS": 32}, num_warps=4),
    LaunchConfig({"TILE": 2048, "ROWS": 64}, num_warps=8),
])


# ------------------------------------------------------------------------------------------- jit helpers
# The pools: NUM_POOLS distinct radii R0 < R1 < R2 (the unused ones 0), RMAX the largest, and their weights PW_k in
# the mean over the pools (multiplicity / K, so that repeated sizes count as often as they are given).
@triton.constexpr_function
def in_window(d, radius, used):
    """Whether offset d lies in a used window of this radius (a compile-time decision)."""
    return bool(used) and -radius <= d <= radius


@triton.jit
def inv_count(i, R: tl.constexpr, N, ACC: tl.constexpr):
    """1 / the number of positions i - R .. i + R inside [0, N) (1 for lanes beyond N, which are masked)."""
    return 1.0 / tl.maximum(tl.minimum(i + R, N - 1) - tl.maximum(i - R, 0) + 1, 1).to(ACC)


@triton.jit
def row_tap(img_ptr, t, dx: tl.constexpr, H, W, C, ws, cs, c_ok, ACC: tl.constexpr):
    """Row t of the strip shifted by dx columns, zero outside the image, in the accumulation dtype."""
    ww = ws + dx
    ok = (ww >= 0) & (ww < W) & (t >= 0) & (t < H)
    offs = (t * W + ww)[:, None] * C + cs[None, :]
    return tl.load(img_ptr + offs, mask=ok[:, None] & c_ok[None, :], other=0.0).to(ACC)


@triton.jit
def _span(img_ptr, t, LO: tl.constexpr, HI: tl.constexpr, H, W, C, ws, cs, c_ok, ACC: tl.constexpr):
    """Sum of the taps LO..HI of row t (LO <= HI)."""
    total = row_tap(img_ptr, t, LO, H, W, C, ws, cs, c_ok, ACC)
    for dx in tl.static_range(LO + 1, HI + 1):
        total += row_tap(img_ptr, t, dx, H, W, C, ws, cs, c_ok, ACC)
    return total


@triton.jit
def horizontal_sums(img_ptr, t, H, W, C, ws, cs, c_ok, R0: tl.constexpr, R1: tl.constexpr, R2: tl.constexpr,
                    NUM_POOLS: tl.constexpr, ACC: tl.constexpr):
    """The nested window sums of row t, (sum_{|dx| <= R_k} tap_dx for k = 0, 1, 2): every tap loaded and added
    once (unused pools repeat the last used one)."""
    s0 = _span(img_ptr, t, -R0, R0, H, W, C, ws, cs, c_ok, ACC)
    s1 = s0
    s2 = s0
    if NUM_POOLS > 1:
        s1 = s0 + (_span(img_ptr, t, -R1, -R0 - 1, H, W, C, ws, cs, c_ok, ACC)
                   + _span(img_ptr, t, R0 + 1, R1, H, W, C, ws, cs, c_ok, ACC))
        s2 = s1
    if NUM_POOLS > 2:
        s2 = s1 + (_span(img_ptr, t, -R2, -R1 - 1, H, W, C, ws, cs, c_ok, ACC)
                   + _span(img_ptr, t, R1 + 1, R2, H, W, C, ws, cs, c_ok, ACC))
    return s0, s1, s2


@triton.jit
def column_weights(ws, W, R0: tl.constexpr, R1: tl.constexpr, R2: tl.constexpr, PW0: tl.constexpr,
                   PW1: tl.constexpr, PW2: tl.constexpr, ACC: tl.constexpr):
    """(PW_k / nh_k(w) for k = 0, 1, 2): each pool's weight in the mean over the horizontal count of columns ws."""
    return (inv_count(ws, R0, W, ACC) * PW0, inv_count(ws, R1, W, ACC) * PW1, inv_count(ws, R2, W, ACC) * PW2)


@triton.jit
def empty_ring(LENGTH: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """LENGTH zero accumulators (the pending rows of a walk)."""
    ring = ()
    for _ in tl.static_range(LENGTH):
        ring = ring + (tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC),)
    return ring


@triton.jit
def row_weight_ring(t_first, H, R: tl.constexpr, RMAX: tl.constexpr, ACC: tl.constexpr):
    """1 / nv_R of the rows t_first .. t_first + 2 RMAX - 1: the pending rows of a forward walk's ring at step
    t_first + RMAX."""
    weights = ()
    for j in tl.static_range(2 * RMAX):
        weights = weights + (inv_count(t_first + j, R, H, ACC),)
    return weights


@triton.jit
def forward_step(img_ptr, t, H, W, C, ws, cs, c_ok, iw0, iw1, iw2, ring, wv0, wv1, wv2,
                 R0: tl.constexpr, R1: tl.constexpr, R2: tl.constexpr, RMAX: tl.constexpr,
                 NUM_POOLS: tl.constexpr, ACC: tl.constexpr):
    """Feed input row t to the forward walk, any rows (the image's top and bottom included).

    ``ring[j]`` (2 RMAX entries) accumulates output row t - RMAX + j, ``wv_k[j]`` is that row's 1 / nv_k; ``iw_k``
    the column weights. Returns (sum_k PW_k S_k / n_k of row t - RMAX, now complete; the ring and weights of the
    next step)."""
    s0, s1, s2 = horizontal_sums(img_ptr, t, H, W, C, ws, cs, c_ok, R0, R1, R2, NUM_POOLS, ACC)
    h0 = s0 * iw0[:, None]
    h1 = s1 * iw1[:, None]
    h2 = s2 * iw2[:, None]
    wv0 = wv0 + (inv_count(t + RMAX, R0, H, ACC),)
    wv1 = wv1 + (inv_count(t + RMAX, R1, H, ACC),)
    wv2 = wv2 + (inv_count(t + RMAX, R2, H, ACC),)
    # the new row t + RMAX is reached only by the largest pool
    if NUM_POOLS == 1:
        newest = h0 * wv0[2 * RMAX]
    elif NUM_POOLS == 2:
        newest = h1 * wv1[2 * RMAX]
    else:
        newest = h2 * wv2[2 * RMAX]
    ring = ring + (newest,)
    new = ()
    for j in tl.static_range(2 * RMAX):  # output row t - RMAX + j lies RMAX - j rows above row t
        acc = ring[j]
        if in_window(RMAX - j, R0, True):
            acc += h0 * wv0[j]
        if in_window(RMAX - j, R1, NUM_POOLS > 1):
            acc += h1 * wv1[j]
        if in_window(RMAX - j, R2, NUM_POOLS > 2):
            acc += h2 * wv2[j]
        new = new + (acc,)
    new = new + (ring[2 * RMAX],)
    return new[0], new[1:], wv0[1:], wv1[1:], wv2[1:]


@triton.jit
def forward_step_interior(img_ptr, t, H, W, C, ws, cs, c_ok, iw0, iw1, iw2, ring,
                          R0: tl.constexpr, R1: tl.constexpr, R2: tl.constexpr, RMAX: tl.constexpr,
                          NUM_POOLS: tl.constexpr, ACC: tl.constexpr):
    """:func:`forward_step` where every pending row is at least RMAX rows inside the image, so nv_k = 2 R_k + 1 is
    a constant (folded into ``iw_k``): one suffix sum over the pools per distance class instead of a weighted
    add per (row, pool)."""
    s0, s1, s2 = horizontal_sums(img_ptr, t, H, W, C, ws, cs, c_ok, R0, R1, R2, NUM_POOLS, ACC)
    reach0 = s0 * iw0[:, None]  # reach_k: what row t adds to the output rows within R_k of it
    reach1 = reach0  # (unused pools: placeholders)
    reach2 = reach0
    if NUM_POOLS > 1:
        reach1 = s1 * iw1[:, None]
        if NUM_POOLS > 2:
            reach2 = s2 * iw2[:, None]
            reach1 += reach2
        reach0 += reach1
    return push_reach(ring, reach0, reach1, reach2, R0, R1, RMAX, NUM_POOLS)


@triton.jit
def push_reach(ring, reach0, reach1, reach2, R0: tl.constexpr, R1: tl.constexpr, RMAX: tl.constexpr,
               NUM_POOLS: tl.constexpr):
    """Add one row's contribution to the pending rows of a walk by distance class (``reach_k`` for the rows
    within R_k but not R_{k-1} of it; unused classes may be anything) and return (the completed oldest row, the
    ring of the next step)."""
    if NUM_POOLS == 1:
        newest = reach0
    elif NUM_POOLS == 2:
        newest = reach1
    else:
        newest = reach2
    new = ()
    for j in tl.static_range(2 * RMAX):
        acc = ring[j]
        if in_window(RMAX - j, R0, True):
            acc += reach0
        elif in_window(RMAX - j, R1, NUM_POOLS > 1):
            acc += reach1
        else:
            acc += reach2
        new = new + (acc,)
    new = new + (newest,)
    return new[0], new[1:]


@triton.jit
def backward_step(img_ptr, t, H, W, C, ws, cs, c_ok, tap_w, ring,
                  R0: tl.constexpr, R1: tl.constexpr, R2: tl.constexpr, RMAX: tl.constexpr,
                  NUM_POOLS: tl.constexpr, ACC: tl.constexpr):
    """Feed gradient row t to the transposed walk; ``tap_w[3 (dx + RMAX) + k]`` = PW_k / nh_k(w + dx).
    Returns (sum_k PW_k sum_{q in win_k(p)} g[q] / n_k(q) for pixel row p = t - RMAX, now complete; the ring)."""
    for dx in tl.static_range(-RMAX, RMAX + 1):  # each pool's window sum starts at its first tap
        tap = row_tap(img_ptr, t, dx, H, W, C, ws, cs, c_ok, ACC)
        if dx == -R0:
            g0 = tap * tap_w[3 * (dx + RMAX)][:, None]
        elif in_window(dx, R0, True):
            g0 += tap * tap_w[3 * (dx + RMAX)][:, None]
        if NUM_POOLS > 1:
            if dx == -R1:
                g1 = tap * tap_w[3 * (dx + RMAX) + 1][:, None]
            elif in_window(dx, R1, True):
                g1 += tap * tap_w[3 * (dx + RMAX) + 1][:, None]
        if NUM_POOLS > 2:
            if dx == -R2:
                g2 = tap * tap_w[3 * (dx + RMAX) + 2][:, None]
            elif in_window(dx, R2, True):
                g2 += tap * tap_w[3 * (dx + RMAX) + 2][:, None]
    # row t reaches the pixel rows within R_k of it: suffix sums over the pools, one per distance class
    reach0 = g0 * inv_count(t, R0, H, ACC)
    reach1 = reach0  # (unused pools: placeholders)
    reach2 = reach0
    if NUM_POOLS > 1:
        reach1 = g1 * inv_count(t, R1, H, ACC)
        if NUM_POOLS > 2:
            reach2 = g2 * inv_count(t, R2, H, ACC)
            reach1 += reach2
        reach0 += reach1
    return push_reach(ring, reach0, reach1, reach2, R0, R1, RMAX, NUM_POOLS)


@triton.jit
def interior_rows(h0, h_end, H, RMAX: tl.constexpr):
    """Split the emitting steps t in [h0 + RMAX, h_end + RMAX) of a walk into [start, lo) (top rows), [lo, hi)
    (every pending row at least RMAX rows inside the image) and [hi, end) (bottom rows)."""
    start = h0 + RMAX
    end = h_end + RMAX
    lo = tl.minimum(tl.maximum(start, 2 * RMAX), end)
    hi = tl.maximum(tl.minimum(end, H - 2 * RMAX), lo)
    return start, lo, hi, end


@triton.jit
def forward_walk(x_img, H, W, C, h0, h_end, ws, cs, c_ok, EMIT: tl.constexpr, emit_args, EMIT_OPTS: tl.constexpr,
                 R0: tl.constexpr, R1: tl.constexpr, R2: tl.constexpr, RMAX: tl.constexpr, NUM_POOLS: tl.constexpr,
                 PW0: tl.constexpr, PW1: tl.constexpr, PW2: tl.constexpr, BLOCK_W: tl.constexpr,
                 BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """Walk the strip's rows [h0 - RMAX, h_end + RMAX) once and call ``EMIT(emit_args, h, pooled, EMIT_OPTS)``
    for each output row h in [h0, h_end), pooled = sum_k PW_k S_k / n_k (BLOCK_W x BLOCK_C, accumulation dtype);
    ``EMIT_OPTS`` is a tuple of the emit's compile-time options."""
    iw0, iw1, iw2 = column_weights(ws, W, R0, R1, R2, PW0, PW1, PW2, ACC)
    ring = empty_ring(2 * RMAX, BLOCK_W, BLOCK_C, ACC)
    wv0 = row_weight_ring(h0 - 2 * RMAX, H, R0, RMAX, ACC)  # the rows pending at step h0 - RMAX
    wv1 = row_weight_ring(h0 - 2 * RMAX, H, R1, RMAX, ACC)
    wv2 = row_weight_ring(h0 - 2 * RMAX, H, R2, RMAX, ACC)
    for t in range(h0 - RMAX, h0 + RMAX):  # the halo rows above the chunk fill the ring
        _unused, ring, wv0, wv1, wv2 = forward_step(x_img, t, H, W, C, ws, cs, c_ok, iw0, iw1, iw2, ring,
                                                    wv0, wv1, wv2, R0, R1, R2, RMAX, NUM_POOLS, ACC)
    start, lo, hi, end = interior_rows(h0, h_end, H, RMAX)
    for t in range(start, lo):
        pooled, ring, wv0, wv1, wv2 = forward_step(x_img, t, H, W, C, ws, cs, c_ok, iw0, iw1, iw2, ring,
                                                   wv0, wv1, wv2, R0, R1, R2, RMAX, NUM_POOLS, ACC)
        EMIT(emit_args, t - RMAX, pooled, EMIT_OPTS)
    fw0 = iw0 / (2 * R0 + 1)  # inside the image the vertical counts are the constants 2 R_k + 1
    fw1 = iw1 / (2 * R1 + 1)
    fw2 = iw2 / (2 * R2 + 1)
    for t in range(lo, hi):
        pooled, ring = forward_step_interior(x_img, t, H, W, C, ws, cs, c_ok, fw0, fw1, fw2, ring,
                                             R0, R1, R2, RMAX, NUM_POOLS, ACC)
        EMIT(emit_args, t - RMAX, pooled, EMIT_OPTS)
    wv0 = row_weight_ring(hi - RMAX, H, R0, RMAX, ACC)  # the rows pending at step hi
    wv1 = row_weight_ring(hi - RMAX, H, R1, RMAX, ACC)
    wv2 = row_weight_ring(hi - RMAX, H, R2, RMAX, ACC)
    for t in range(hi, end):
        pooled, ring, wv0, wv1, wv2 = forward_step(x_img, t, H, W, C, ws, cs, c_ok, iw0, iw1, iw2, ring,
                                                   wv0, wv1, wv2, R0, R1, R2, RMAX, NUM_POOLS, ACC)
        EMIT(emit_args, t - RMAX, pooled, EMIT_OPTS)


# ---------------------------------------------------------------------------------------------- kernels
@triton.jit
def _pool_mixer_emit(args, h, pooled, OPTS: tl.constexpr):
    """y = x + scale (pooled - x) for row h (the shift cancels, see the module docstring)."""
    x_img, out_img, W, C, ws, cs, m2, scale = args
    offs = (h * W + ws)[:, None] * C + cs[None, :]
    x = tl.load(x_img + offs, mask=m2, other=0.0).to(pooled.dtype)
    tl.store(out_img + offs, (x + scale * (pooled - x)).to(out_img.dtype.element_ty), mask=m2)


@triton.jit
def _pool_mixer_fwd_kernel(x_ptr, scale_ptr, out_ptr, H, W, C,
                           R0: tl.constexpr, R1: tl.constexpr, R2: tl.constexpr, RMAX: tl.constexpr,
                           NUM_POOLS: tl.constexpr, PW0: tl.constexpr, PW1: tl.constexpr, PW2: tl.constexpr,
                           ROWS: tl.constexpr, TILE: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC: tl.constexpr = scale_ptr.dtype.element_ty
    BLOCK_W: tl.constexpr = TILE // BLOCK_C
    h0, h_end, ws, cs, w_ok, c_ok, image_base, _partial_row = tiles.nhwc_strip_tile(H, W, C, ROWS, BLOCK_W, BLOCK_C)
    x_img = x_ptr + image_base
    scale = tl.load(scale_ptr + cs, mask=c_ok, other=0.0)[None, :]
    emit_args = (x_img, out_ptr + image_base, W, C, ws, cs, w_ok[:, None] & c_ok[None, :], scale)
    forward_walk(x_img, H, W, C, h0, h_end, ws, cs, c_ok, _pool_mixer_emit, emit_args, (),
                 R0, R1, R2, RMAX, NUM_POOLS, PW0, PW1, PW2, BLOCK_W, BLOCK_C, ACC)


@triton.jit
def _pool_mixer_bwd_kernel(g_ptr, x_ptr, scale_ptr, dx_ptr, partial_ptr, H, W, C,
                           R0: tl.constexpr, R1: tl.constexpr, R2: tl.constexpr, RMAX: tl.constexpr,
                           NUM_POOLS: tl.constexpr, PW0: tl.constexpr, PW1: tl.constexpr, PW2: tl.constexpr,
                           ROWS: tl.constexpr, TILE: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC: tl.constexpr = scale_ptr.dtype.element_ty
    BLOCK_W: tl.constexpr = TILE // BLOCK_C
    h0, h_end, ws, cs, w_ok, c_ok, image_base, partial_row = tiles.nhwc_strip_tile(H, W, C, ROWS, BLOCK_W, BLOCK_C)
    g_img = g_ptr + image_base
    x_img = x_ptr + image_base
    dx_img = dx_ptr + image_base
    tap_w = ()
    for dx in tl.static_range(-RMAX, RMAX + 1):  # each tap's own column weights, fixed for the whole walk
        tap_w = tap_w + column_weights(ws + dx, W, R0, R1, R2, PW0, PW1, PW2, ACC)
    scale = tl.load(scale_ptr + cs, mask=c_ok, other=0.0)[None, :]
    m2 = w_ok[:, None] & c_ok[None, :]
    ring = empty_ring(2 * RMAX, BLOCK_W, BLOCK_C, ACC)
    dscale = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
    dshift = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
    for t in range(h0 - RMAX, h0 + RMAX):
        _unused, ring = backward_step(g_img, t, H, W, C, ws, cs, c_ok, tap_w, ring, R0, R1, R2, RMAX, NUM_POOLS, ACC)
    for t in range(h0 + RMAX, h_end + RMAX):
        pooled, ring = backward_step(g_img, t, H, W, C, ws, cs, c_ok, tap_w, ring, R0, R1, R2, RMAX, NUM_POOLS, ACC)
        offs = ((t - RMAX) * W + ws)[:, None] * C + cs[None, :]
        g = tl.load(g_img + offs, mask=m2, other=0.0).to(ACC)
        x = tl.load(x_img + offs, mask=m2, other=0.0).to(ACC)
        dz = tl.where(m2, pooled - g, 0.0)
        tl.store(dx_img + offs, (g + scale * dz).to(dx_ptr.dtype.element_ty), mask=m2)
        dscale += dz * x
        dshift += dz
    row = partial_row.to(tl.int64) * 2 * C
    tl.store(partial_ptr + row + cs, tl.sum(dscale, axis=0), mask=c_ok)
    tl.store(partial_ptr + row + C + cs, tl.sum(dshift, axis=0), mask=c_ok)


# --------------------------------------------------------------------------------------------- launchers
def pools(pool_sizes):
    """Constexpr pool parameters of the kernels: the distinct radii ascending (unused 0), RMAX, NUM_POOLS, and
    each radius's weight in the mean over ``pool_sizes`` (multiplicity / K)."""
    distinct = sorted(set(k // 2 for k in pool_sizes))
    weights = [sum(1 for k in pool_sizes if k // 2 == r) / len(pool_sizes) for r in distinct]
    pad = MAX_POOLS - len(distinct)
    rs, ws = distinct + [0] * pad, weights + [0.0] * pad
    return dict(R0=rs[0], R1=rs[1], R2=rs[2], RMAX=max(rs), NUM_POOLS=len(distinct), PW0=ws[0], PW1=ws[1], PW2=ws[2])


def block_c(channels):
    return min(MAX_BLOCK_C, max(16, triton.next_power_of_2(channels)))


def strip_shape(config, channels):
    """(BLOCK_W, BLOCK_C, ROWS) of a configuration for this many channels."""
    bc = block_c(channels)
    return config.meta["TILE"] // bc, bc, config.meta["ROWS"]


def pool_mixer_forward(x, scale, pool_sizes):
    """x: (B, H, W, C) contiguous; scale: (C,) in the accumulation dtype (the shift cancels)."""
    tiles.check_image_size("x", x.shape)
    out = torch.empty_like(x)
    b, h, w, c = x.shape

    def run(config):
        block_w, bc, rows = strip_shape(config, c)
        _pool_mixer_fwd_kernel[tiles.strip_grid(x.shape, block_w, bc, rows)](
            x, scale, out, h, w, c, **pools(pool_sizes), BLOCK_C=bc, **config.kwargs())
        return out

    return FWD_CONFIGS.launch((tuple(x.shape), x.dtype, tuple(pool_sizes)), run)


def pool_mixer_backward(grad, x, scale, pool_sizes):
    """(dx, dscale, dshift) for the forward above; grad contiguous like x."""
    tiles.check_image_size("x", x.shape)
    dx = torch.empty_like(x)
    b, h, w, c = x.shape

    def run(config):
        block_w, bc, rows = strip_shape(config, c)
        # every (program, channel) entry is written by exactly one program: no zero fill
        partial = torch.empty(tiles.strip_partial_rows(x.shape, block_w, rows), 2, c, dtype=scale.dtype,
                              device=x.device)
        _pool_mixer_bwd_kernel[tiles.strip_grid(x.shape, block_w, bc, rows)](
            grad, x, scale, dx, partial, h, w, c, **pools(pool_sizes), BLOCK_C=bc, **config.kwargs())
        return dx, partial[:, 0].sum(0), partial[:, 1].sum(0)

    return BWD_CONFIGS.launch((tuple(x.shape), x.dtype, tuple(pool_sizes)), run)


def _aot_entries(dtype, channels):
    io = {"H": "i32", "W": "i32", "C": "i32"}
    fwd = {"x_ptr": f"*{dtype}", "scale_ptr": "*fp32", "out_ptr": f"*{dtype}", **io}
    bwd = {"g_ptr": f"*{dtype}", "x_ptr": f"*{dtype}", "scale_ptr": "*fp32", "dx_ptr": f"*{dtype}",
           "partial_ptr": "*fp32", **io}
    const = dict(pools((3, 5, 7)), BLOCK_C=block_c(channels))
    meta = {k: "constexpr" for k in (*const, "ROWS", "TILE")}
    return (FWD_CONFIGS.aot_entries(_pool_mixer_fwd_kernel, tiles.aot_signature({**fwd, **meta}), const)
            + BWD_CONFIGS.aot_entries(_pool_mixer_bwd_kernel, tiles.aot_signature({**bwd, **meta}), const))


# For the sm_90a AOT check in CI: every launch configuration at the model's channel counts (stages 1-2).
AOT_KERNELS = [e for dt in ("fp16", "bf16", "fp32") for c in (32, 64) for e in _aot_entries(dt, c)]
