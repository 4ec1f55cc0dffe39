"""LayerNorm over the channels of a channels-last tensor in Triton: rows of C contiguous values.

Forward writes y only. The backward reads whole rows of x anyway, so it recomputes the statistics itself (no
saved state) and writes dx; dweight and dbias come from a fixed number of grid-stride programs (at most
PARTIALS, whatever the number of rows), each accumulating many row blocks, then one deterministic sum over
their partial rows: (programs, 2, C) floats, every entry written once, never a full-size temporary.
"""
import torch
import triton
import triton.language as tl

from litesam_kernels.triton import _tiles as tiles
from litesam_kernels.triton._configs import LaunchConfig, LaunchConfigs

PARTIALS = 512
TILE_ELEMENTS = 8192  # at most BLOCK_M x BLOCK_C values per program: wide rows get fewer of them

FWD_CONFIGS = LaunchConfigs("layer_norm.fwd", [
    LaunchConfig({"BLOCK_M": 16}, num_warps=4),
    LaunchConfig({"BLOCK_M": 32}, num_warps=8),
])
BWD_CONFIGS = LaunchConfigs("layer_norm.bwd", [
    LaunchConfig({"BLOCK_M": 16}, num_warps=4),
    LaunchConfig({"BLOCK_M": 32}, num_warps=8),
])


@triton.jit
def _normalized(x_ptr, offs, m2, C, eps, ACC: tl.constexpr):
    """(xhat, rstd) of a block of rows: (x - mean) / sqrt(var + eps), zero outside the mask."""
    x = tl.load(x_ptr + offs, mask=m2, other=0.0).to(ACC)
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(m2, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / C + eps)
    return xc * rstd[:, None], rstd


@triton.jit
def _layer_norm_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, C, eps, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC: tl.constexpr = w_ptr.dtype.element_ty
    rows, cs, r_ok, c_ok, m2, offs = tiles.matrix_row_tile(M, C, BLOCK_M, BLOCK_C)
    xhat, _ = _normalized(x_ptr, offs, m2, C, eps, ACC)
    w = tl.load(w_ptr + cs, mask=c_ok, other=0.0)
    b = tl.load(b_ptr + cs, mask=c_ok, other=0.0)
    tl.store(y_ptr + offs, (xhat * w[None, :] + b[None, :]).to(y_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _layer_norm_bwd_kernel(g_ptr, x_ptr, w_ptr, dx_ptr, partial_ptr, M, C, eps,
                           BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC: tl.constexpr = partial_ptr.dtype.element_ty
    cs = tl.arange(0, BLOCK_C)
    w = tl.load(w_ptr + cs, mask=cs < C, other=0.0).to(ACC)
    dweight = tl.zeros([BLOCK_M, BLOCK_C], dtype=ACC)
    dbias = tl.zeros([BLOCK_M, BLOCK_C], dtype=ACC)
    for block in range(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.num_programs(0)):  # grid-stride over row blocks
        rows, cs, r_ok, c_ok, m2, offs = tiles.matrix_block(block, M, C, BLOCK_M, BLOCK_C)
        xhat, rstd = _normalized(x_ptr, offs, m2, C, eps, ACC)
        g = tl.load(g_ptr + offs, mask=m2, other=0.0).to(ACC)
        gw = g * w[None, :]
        c1 = tl.sum(gw * xhat, axis=1) / C
        c2 = tl.sum(gw, axis=1) / C
        dx = (gw - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=m2)
        dweight += g * xhat
        dbias += g
    first = tl.program_id(0).to(tl.int64) * 2 * C
    tl.store(partial_ptr + first + cs, tl.sum(dweight, axis=0), mask=cs < C)
    tl.store(partial_ptr + first + C + cs, tl.sum(dbias, axis=0), mask=cs < C)


def _blocks(config, channels):
    """(BLOCK_M, BLOCK_C) of a configuration for rows of ``channels`` values."""
    block_c = max(16, triton.next_power_of_2(channels))
    return min(config.meta["BLOCK_M"], max(1, TILE_ELEMENTS // block_c)), block_c


def layer_norm_forward(x2d, weight, bias, eps):
    """x2d: (M, C) contiguous; weight, bias in the accumulation dtype -> y."""
    m, c = x2d.shape
    y = torch.empty_like(x2d)

    def run(config):
        block_m, block_c = _blocks(config, c)
        _layer_norm_fwd_kernel[tiles.grid_1d(triton.cdiv(m, block_m), f"layer_norm2d of {m} rows")](
            x2d, weight, bias, y, m, c, eps, **dict(config.kwargs(), BLOCK_M=block_m), BLOCK_C=block_c)
        return y

    return FWD_CONFIGS.launch((m, c, x2d.dtype), run)


def layer_norm_backward(g2d, x2d, weight, eps, max_partials=PARTIALS):
    """(dx, dweight, dbias) with dweight/dbias in the dtype of weight (the accumulation dtype); ``max_partials``
    bounds the programs of the parameter gradients (tests lower it to exercise the grid-stride loop)."""
    m, c = x2d.shape
    dx = torch.empty_like(x2d)

    def run(config):
        block_m, block_c = _blocks(config, c)
        programs = min(max_partials, max(1, triton.cdiv(m, block_m)))
        partial = torch.empty(programs, 2, c, dtype=weight.dtype, device=x2d.device)  # all written once
        _layer_norm_bwd_kernel[(programs,)](g2d, x2d, weight, dx, partial, m, c, eps,
                                            **dict(config.kwargs(), BLOCK_M=block_m), BLOCK_C=block_c)
        sums = partial.sum(0)  # deterministic: a fixed reduction order over the programs
        return dx, sums[0], sums[1].clone()  # separate tensors: a custom op's outputs may not alias

    return BWD_CONFIGS.launch((m, c, x2d.dtype), run)


def _aot_entries(dtype, channels):
    fwd = {"x_ptr": f"*{dtype}", "w_ptr": "*fp32", "b_ptr": "*fp32", "y_ptr": f"*{dtype}", "M": "i32", "C": "i32",
           "eps": "fp32", "BLOCK_M": "constexpr", "BLOCK_C": "constexpr"}
    bwd = {"g_ptr": f"*{dtype}", "x_ptr": f"*{dtype}", "w_ptr": "*fp32", "dx_ptr": f"*{dtype}",
           "partial_ptr": "*fp32", "M": "i32", "C": "i32", "eps": "fp32",
           "BLOCK_M": "constexpr", "BLOCK_C": "constexpr"}
    const = {"BLOCK_C": channels}
    sig = lambda s: tiles.aot_signature(s, ("M", "C"))  # noqa: E731
    return (FWD_CONFIGS.aot_entries(_layer_norm_fwd_kernel, sig(fwd), const)
            + BWD_CONFIGS.aot_entries(_layer_norm_bwd_kernel, sig(bwd), const))


# For the sm_90a AOT check in CI: every launch configuration at LiteViT's widths (stage 3: 128; neck: 256).
AOT_KERNELS = [e for dt in ("fp16", "bf16", "fp32") for c in (128, 256) for e in _aot_entries(dt, c)]
