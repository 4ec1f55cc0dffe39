"""Depthwise k x k conv + bias (a folded BatchNorm) + optional GELU + optional residual, channels-last, in Triton.

Forward: each program owns a BLOCK_W x BLOCK_C tile of one image row and reads the k^2 shifted tiles (cache
hits): x read about once, y written once. GELU is ``_activations.gelu`` (exact erf for fp32/fp64, the tanh
form for fp16/bf16, whose output rounding hides the difference).
Backward, three kernels: (1) with the activation, recompute the pre-activation u and write gu = g act'(u)
(float32; without the activation gu is g itself and nothing runs); (2) dx = [g +] the transposed stencil of gu;
(3) the weight and bias gradients, dW[d, c] = sum_q x[q + d, c] gu[q, c] and db[c] = sum_q gu[q, c], by a fixed
number of grid-stride programs (at most WGRAD_PARTIALS per channel block, whatever the image size), each
reducing many row tiles with all k^2 taps as one tensor dimension (a gather of the shifted x tiles), then one
deterministic sum over the programs' partial rows. The partials are (programs, k^2 + 1, C) floats, every
entry written once (no zero fill): 3.3 MB for 7x7 at C = 64, where one partial row per row tile grew with
the image (about 200 MB at 8 x 64 x 256^2).
"""
import torch
import triton
import triton.language as tl

from litesam_kernels.triton import _tiles as tiles
from litesam_kernels.triton._activations import fast_gelu_for, gelu, gelu_and_grad
from litesam_kernels.triton._configs import LaunchConfig, LaunchConfigs

MAX_BLOCK_C = 64
WGRAD_PARTIALS = 256  # partial rows of the weight gradient per channel block: the GPU's parallelism, not the image's

# Row-tile kernels: TILE = BLOCK_W pixels x BLOCK_C channels (BLOCK_C follows C, BLOCK_W = TILE // BLOCK_C), so the
# elements per thread (8 below) and with them the registers do not depend on C; the default is the interpreter's.
FWD_CONFIGS = LaunchConfigs("conv_block.fwd", [
    LaunchConfig({"TILE": 1024}, num_warps=4),
    LaunchConfig({"TILE": 2048}, num_warps=8),
])
GRAD_PRE_CONFIGS = LaunchConfigs("conv_block.grad_pre", [
    LaunchConfig({"TILE": 1024}, num_warps=4),
    LaunchConfig({"TILE": 2048}, num_warps=8),
])
DX_CONFIGS = LaunchConfigs("conv_block.dx", [
    LaunchConfig({"TILE": 1024}, num_warps=4),
    LaunchConfig({"TILE": 2048}, num_warps=8),
])
# Weight gradient: accumulators of TAPS x BLOCK_W x BLOCK_C floats (TAPS = k^2 rounded up to a power of 2).
WGRAD_CONFIGS = LaunchConfigs("conv_block.wgrad", [
    LaunchConfig({"BLOCK_W": 4, "BLOCK_C": 32}, num_warps=4),
    LaunchConfig({"BLOCK_W": 8, "BLOCK_C": 32}, num_warps=8),
])


@triton.jit
def _stencil(src_img, h, ws, cs, w_ok, c_ok, w_ptr, H, W, C, K: tl.constexpr, SIGN: tl.constexpr,
             ACC: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """sum_d w[d] src[(h, w) + SIGN d] over the k x k taps d, zero outside the image (SIGN -1: the transpose)."""
    R: tl.constexpr = K // 2
    acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
    for ky in tl.static_range(0, K):
        hh = h + SIGN * (ky - R)
        row_ok = (hh >= 0) & (hh < H)
        for kx in tl.static_range(0, K):
            ww = ws + SIGN * (kx - R)
            ok = w_ok & (ww >= 0) & (ww < W) & row_ok
            v = tl.load(src_img + ((hh * W + ww)[:, None] * C + cs[None, :]), mask=ok[:, None] & c_ok[None, :],
                        other=0.0).to(ACC)
            acc += v * tl.load(w_ptr + (ky * K + kx) * C + cs, mask=c_ok, other=0.0)[None, :]
    return acc


@triton.jit
def _dwconv_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, H, W, C, K: tl.constexpr, ACT: tl.constexpr,
                       FAST: tl.constexpr, RESIDUAL: tl.constexpr, TILE: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC: tl.constexpr = w_ptr.dtype.element_ty
    BLOCK_W: tl.constexpr = TILE // BLOCK_C
    h, ws, cs, w_ok, c_ok, image_base = tiles.nhwc_row_tile(H, W, C, BLOCK_W, BLOCK_C)
    x_img = x_ptr + image_base
    u = _stencil(x_img, h, ws, cs, w_ok, c_ok, w_ptr, H, W, C, K, 1, ACC, BLOCK_W, BLOCK_C)
    u += tl.load(b_ptr + cs, mask=c_ok, other=0.0)[None, :]
    m2 = w_ok[:, None] & c_ok[None, :]
    offs = (h * W + ws)[:, None] * C + cs[None, :]
    if ACT:
        y = gelu(u, FAST)
    else:
        y = u
    if RESIDUAL:
        y += tl.load(x_img + offs, mask=m2, other=0.0).to(ACC)
    tl.store(out_ptr + image_base + offs, y.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _dwconv_grad_pre_kernel(x_ptr, w_ptr, b_ptr, g_ptr, gu_ptr, H, W, C, K: tl.constexpr, FAST: tl.constexpr,
                            TILE: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC: tl.constexpr = w_ptr.dtype.element_ty
    BLOCK_W: tl.constexpr = TILE // BLOCK_C
    h, ws, cs, w_ok, c_ok, image_base = tiles.nhwc_row_tile(H, W, C, BLOCK_W, BLOCK_C)
    m2 = w_ok[:, None] & c_ok[None, :]
    offs = (h * W + ws)[:, None] * C + cs[None, :]
    u = _stencil(x_ptr + image_base, h, ws, cs, w_ok, c_ok, w_ptr, H, W, C, K, 1, ACC, BLOCK_W, BLOCK_C)
    u += tl.load(b_ptr + cs, mask=c_ok, other=0.0)[None, :]
    _, slope = gelu_and_grad(u, FAST)
    g = tl.load(g_ptr + image_base + offs, mask=m2, other=0.0).to(ACC)
    tl.store(gu_ptr + image_base + offs, g * slope, mask=m2)


@triton.jit
def _dwconv_dx_kernel(gu_ptr, w_ptr, g_ptr, dx_ptr, H, W, C, K: tl.constexpr, RESIDUAL: tl.constexpr,
                      TILE: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC: tl.constexpr = w_ptr.dtype.element_ty
    BLOCK_W: tl.constexpr = TILE // BLOCK_C
    h, ws, cs, w_ok, c_ok, image_base = tiles.nhwc_row_tile(H, W, C, BLOCK_W, BLOCK_C)
    m2 = w_ok[:, None] & c_ok[None, :]
    offs = (h * W + ws)[:, None] * C + cs[None, :]
    dx = _stencil(gu_ptr + image_base, h, ws, cs, w_ok, c_ok, w_ptr, H, W, C, K, -1, ACC, BLOCK_W, BLOCK_C)
    if RESIDUAL:
        dx += tl.load(g_ptr + image_base + offs, mask=m2, other=0.0).to(ACC)
    tl.store(dx_ptr + image_base + offs, dx.to(dx_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _dwconv_wgrad_kernel(x_ptr, gu_ptr, partial_ptr, H, W, C, n_tiles, K: tl.constexpr, TAPS: tl.constexpr,
                         BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC: tl.constexpr = partial_ptr.dtype.element_ty
    R: tl.constexpr = K // 2
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    taps = tl.arange(0, TAPS)
    tap_ok = taps < K * K
    dy = taps // K - R
    dx = taps % K - R
    n_w = tl.cdiv(W, BLOCK_W)
    dweight = tl.zeros([TAPS, BLOCK_W, BLOCK_C], dtype=ACC)
    dbias = tl.zeros([BLOCK_W, BLOCK_C], dtype=ACC)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):  # grid-stride over (image row, W block)
        row = tile // n_w
        h = row % H
        image_base = (row // H).to(tl.int64) * H * W * C
        ws = (tile % n_w) * BLOCK_W + tl.arange(0, BLOCK_W)
        w_ok = ws < W
        gu = tl.load(gu_ptr + image_base + ((h * W + ws)[:, None] * C + cs[None, :]),
                     mask=w_ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
        hh = h + dy
        ww = ws[None, :] + dx[:, None]  # (TAPS, BLOCK_W): the column of each tap of each pixel
        ok = (tap_ok & (hh >= 0) & (hh < H))[:, None] & (ww >= 0) & (ww < W) & w_ok[None, :]
        offs = (hh[:, None] * W + ww)[:, :, None] * C + cs[None, None, :]
        xs = tl.load(x_ptr + image_base + offs, mask=ok[:, :, None] & c_ok[None, None, :], other=0.0).to(ACC)
        dweight += xs * gu[None, :, :]
        dbias += gu
    first = tl.program_id(0).to(tl.int64) * (K * K + 1)  # this program's partial rows: k^2 taps, then the bias
    tl.store(partial_ptr + (first + taps)[:, None] * C + cs[None, :], tl.sum(dweight, axis=1),
             mask=tap_ok[:, None] & c_ok[None, :])
    tl.store(partial_ptr + (first + K * K) * C + cs, tl.sum(dbias, axis=0), mask=c_ok)


# --------------------------------------------------------------------------------------------- launchers
def _block_c(channels):
    return min(MAX_BLOCK_C, max(16, triton.next_power_of_2(channels)))


def _launch_row_tiles(family, kernel, shape, key, *args, **meta):
    """Launch a row-tile kernel over an NHWC ``shape`` with the family's chosen configuration."""
    block_c = _block_c(shape[3])

    def run(config):
        grid = tiles.row_tile_grid(shape, config.meta["TILE"] // block_c, block_c)
        kernel[grid](*args, BLOCK_C=block_c, **meta, **config.kwargs())

    family.launch(key, run)


def dwconv_forward(x, w_taps, bias, k, act, residual, fast=None):
    """x: (B, H, W, C) contiguous; w_taps: (k*k, C) and bias (C,) in the accumulation dtype; ``fast``: the GELU
    form (default: the tanh form for 16-bit x, ``_activations.fast_gelu_for``)."""
    fast = fast_gelu_for(x.dtype) if fast is None else fast
    tiles.check_image_size("x", x.shape)
    out = torch.empty_like(x)
    b, h, w, c = x.shape
    _launch_row_tiles(FWD_CONFIGS, _dwconv_fwd_kernel, x.shape, (tuple(x.shape), x.dtype, k), x, w_taps, bias,
                      out, h, w, c, K=k, ACT=act, FAST=fast, RESIDUAL=residual)
    return out


def wgrad_programs(shape, block_w, max_partials=WGRAD_PARTIALS):
    """(programs per channel block, row tiles): the weight gradient's fixed grid and the work it strides over."""
    b, h, w, _ = (int(s) for s in shape)
    n_tiles = b * h * triton.cdiv(w, block_w)
    if n_tiles > tiles.MAX_INT32:
        raise ValueError(f"x of shape {tuple(shape)} has {n_tiles} row tiles, more than 32-bit tile indices allow")
    return min(max_partials, n_tiles), n_tiles


def dwconv_backward(grad, x, w_taps, bias, k, act, residual, fast=None, max_partials=WGRAD_PARTIALS):
    """(dx, dw_taps (k*k, C), dbias) for the forward above; ``max_partials`` bounds the weight gradient's
    partial rows per channel block (tests lower it to exercise the grid-stride loop)."""
    fast = fast_gelu_for(x.dtype) if fast is None else fast
    tiles.check_image_size("x", x.shape)
    b, h, w, c = x.shape
    key = (tuple(x.shape), x.dtype, k)
    if act:
        gu = torch.empty(x.shape, dtype=w_taps.dtype, device=x.device)
        _launch_row_tiles(GRAD_PRE_CONFIGS, _dwconv_grad_pre_kernel, x.shape, key, x, w_taps, bias, grad, gu,
                          h, w, c, K=k, FAST=fast)
    else:
        gu = grad  # the pre-activation's gradient is the output's
    dx = torch.empty_like(x)
    _launch_row_tiles(DX_CONFIGS, _dwconv_dx_kernel, x.shape, key, gu, w_taps, grad, dx, h, w, c, K=k,
                      RESIDUAL=residual)

    def run(config):
        block_w, block_c = config.meta["BLOCK_W"], config.meta["BLOCK_C"]
        programs, n_tiles = wgrad_programs(x.shape, block_w, max_partials)
        partial = torch.empty(programs, k * k + 1, c, dtype=w_taps.dtype, device=x.device)  # all written once
        _dwconv_wgrad_kernel[(programs, triton.cdiv(c, block_c))](
            x, gu, partial, h, w, c, n_tiles, K=k, TAPS=triton.next_power_of_2(k * k), **config.kwargs())
        return partial.sum(0)  # deterministic: a fixed reduction order over the programs

    sums = WGRAD_CONFIGS.launch(key, run)
    return dx, sums[:k * k], sums[k * k].clone()  # separate tensors: a custom op's outputs may not alias


def _aot_entries(dtype, k):
    io = {"H": "i32", "W": "i32", "C": "i32"}
    meta = {"K": "constexpr", "TILE": "constexpr", "BLOCK_C": "constexpr"}
    fwd = {"x_ptr": f"*{dtype}", "w_ptr": "*fp32", "b_ptr": "*fp32", "out_ptr": f"*{dtype}", **io, **meta,
           "ACT": "constexpr", "FAST": "constexpr", "RESIDUAL": "constexpr"}
    pre = {"x_ptr": f"*{dtype}", "w_ptr": "*fp32", "b_ptr": "*fp32", "g_ptr": f"*{dtype}", "gu_ptr": "*fp32",
           **io, **meta, "FAST": "constexpr"}
    dx = {"gu_ptr": "*fp32", "w_ptr": "*fp32", "g_ptr": f"*{dtype}", "dx_ptr": f"*{dtype}", **io, **meta,
          "RESIDUAL": "constexpr"}
    wgrad = {"x_ptr": f"*{dtype}", "gu_ptr": "*fp32", "partial_ptr": "*fp32", **io, "n_tiles": "i32", "K": "constexpr",
             "TAPS": "constexpr", "BLOCK_W": "constexpr", "BLOCK_C": "constexpr"}
    fast = dtype != "fp32"
    block_c = {"BLOCK_C": 64}
    sig = tiles.aot_signature
    return (FWD_CONFIGS.aot_entries(_dwconv_fwd_kernel, sig(fwd), dict(K=k, ACT=True, FAST=fast, RESIDUAL=True,
                                                                       **block_c))
            + GRAD_PRE_CONFIGS.aot_entries(_dwconv_grad_pre_kernel, sig(pre), dict(K=k, FAST=fast, **block_c))
            + DX_CONFIGS.aot_entries(_dwconv_dx_kernel, sig(dx), dict(K=k, RESIDUAL=True, **block_c))
            + WGRAD_CONFIGS.aot_entries(_dwconv_wgrad_kernel, sig(wgrad),
                                        dict(K=k, TAPS=triton.next_power_of_2(k * k))))


# For the sm_90a AOT check in CI: every launch configuration, 3x3 (LiteViT's positional encoding and neck) and 7x7.
AOT_KERNELS = [e for dt in ("fp16", "bf16", "fp32") for k in (3, 7) for e in _aot_entries(dt, k)]
