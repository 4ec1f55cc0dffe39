"""ConvMLP ([LayerNorm ->] 1x1 expand -> GELU -> 1x1 project [+ residual]) over channels-last tokens, in Triton.

Forward: each program owns BLOCK_M tokens with all C channels on chip and walks the hidden dim in chunks of
BLOCK_H: a = t W1_chunk^T + b1 (tl.dot), h = GELU(a), acc += h W2_chunk^T (tl.dot), where t is the token
tile, or its LayerNorm computed in the prologue (``NORM``: the attention block's ``x + MLP(LN(x))`` reads x
once). The hidden activation (4-5x the size of x) never reaches memory: x is read once and y written once;
a residual that is the input itself (``RESIDUAL=2``) is the tile already loaded, not a second read.
Backward (recompute): the same walk recomputes a, then dh = g W2_chunk, da = dh * GELU'(a),
dt += da W1_chunk on chip, and with ``NORM`` the LayerNorm backward of dt in the epilogue (plus per-program
partial sums of its weight/bias gradients); h, da (M x HID) and t are written out for the weight-gradient
GEMMs, which the launcher leaves to cuBLAS.

GELU: exact erf for fp32/fp64, the tanh-from-exp2 form for fp16/bf16 (``_activations``; the hidden value is
rounded to 16 bits before the second dot anyway). fp32 dots follow ``torch.backends.cudnn.allow_tf32`` (the
switch of the eager 1x1 convs this replaces, on by default): TF32 tensor cores, about 1e-3 relative error
per product (``_precision``). Launch configurations per row-size class (``_sized_configs``): larger token
tiles re-stream the weights fewer times (stage 3: C=128, HID=640 is 320 KB of 16-bit weights per tile).
"""
import torch
import triton
import triton.language as tl

from litesam_kernels.triton import _tiles as tiles
from litesam_kernels.triton._activations import fast_gelu_for, gelu, gelu_and_grad
from litesam_kernels.triton._configs import LaunchConfig, size_bucket
from litesam_kernels.triton._norms import layer_norm_rows, layer_norm_rows_backward
from litesam_kernels.triton._precision import dot_precision
from litesam_kernels.triton._sized_configs import AOT_DTYPES, SizedConfigs, row_bytes

NO_RESIDUAL, SEPARATE_RESIDUAL, INPUT_RESIDUAL = 0, 1, 2


def _config(block_m, block_h, warps, stages):
    return LaunchConfig({"BLOCK_M": block_m, "BLOCK_H": block_h}, num_warps=warps, num_stages=stages)


# Row bytes = element size x padded C; the first entry of a class is its default (what the interpreter runs).
# 128: the pool-mixer stages (16-bit C <= 64), memory-bound: large token tiles. 256: the attention stage
# (16-bit C = 128, HID = 640), compute-bound: a 128-token tile re-streams the 320 KB of weights half as often
# as a 64-token one. 512 / 2048: float32 C = 128 / 256 (and float64), smaller tiles to fit shared memory.
# Each configuration was compiled for sm_90a at its class's widest rows (16-bit and float32, with the fused
# LayerNorm): shared memory <= 164 KB, and no register spills except bwd row256[1] at float32 C = 64 with the
# LayerNorm (not a model shape: 22 spill instructions). The model's shapes are in AOT_KERNELS, spill-free.
FWD_CONFIGS = SizedConfigs("conv_mlp.fwd", [
    (128, [_config(128, 64, 8, 3), _config(256, 32, 8, 3), _config(64, 64, 4, 3), _config(128, 128, 8, 2)]),
    (256, [_config(128, 64, 8, 3), _config(128, 128, 8, 2), _config(64, 64, 4, 3)]),
    (512, [_config(64, 64, 8, 2), _config(64, 32, 8, 3), _config(32, 128, 8, 2)]),
    (2048, [_config(32, 32, 4, 1), _config(32, 16, 8, 1)]),
])
BWD_CONFIGS = SizedConfigs("conv_mlp.bwd", [
    (128, [_config(128, 64, 8, 2), _config(64, 64, 4, 2), _config(128, 32, 8, 3)]),
    (256, [_config(64, 64, 8, 2), _config(128, 64, 8, 2)]),
    (512, [_config(32, 64, 8, 2), _config(32, 32, 8, 2), _config(32, 32, 4, 3)]),
    (2048, [_config(16, 32, 8, 1), _config(16, 16, 8, 1)]),
])


@triton.jit
def _token_tile(x_ptr, nw_ptr, nb_ptr, M, C, eps, NORM: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_C: tl.constexpr):
    """The program's token rows: (x, t, ...tile indices), t = LN(x) in x's dtype, or x itself."""
    ACC = nw_ptr.dtype.element_ty
    rows, cs, r_ok, c_ok, m2, offs = tiles.matrix_row_tile(M, C, BLOCK_M, BLOCK_C)
    x = tl.load(x_ptr + offs, mask=m2, other=0.0)
    if NORM:
        xhat, _ = layer_norm_rows(x.to(ACC), m2, C, eps)
        nw = tl.load(nw_ptr + cs, mask=c_ok, other=0.0)
        nb = tl.load(nb_ptr + cs, mask=c_ok, other=0.0)
        t = (xhat * nw[None, :] + nb[None, :]).to(x_ptr.dtype.element_ty)
    else:
        t = x
    return x, t, rows, cs, r_ok, c_ok, m2, offs


@triton.jit
def _preactivation(t, w1_ptr, b1_ptr, hs, h_ok, cs, c_ok, C, PREC: tl.constexpr):
    """(a, W1 chunk^T [BLOCK_C, BLOCK_H]): a = t W1_chunk^T + b1 for the hidden units hs, accumulation dtype."""
    ACC = b1_ptr.dtype.element_ty
    w1t = tl.load(w1_ptr + hs[None, :] * C + cs[:, None], mask=c_ok[:, None] & h_ok[None, :], other=0.0)
    a = tl.dot(t, w1t, input_precision=PREC, out_dtype=ACC)
    return a + tl.load(b1_ptr + hs, mask=h_ok, other=0.0)[None, :], w1t


@triton.jit
def _conv_mlp_fwd_kernel(x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, res_ptr, nw_ptr, nb_ptr, y_ptr, M, C, HID, eps,
                         NORM: tl.constexpr, RESIDUAL: tl.constexpr, FAST_GELU: tl.constexpr, PREC: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr):
    ACC = b1_ptr.dtype.element_ty
    DT = x_ptr.dtype.element_ty
    x, t, rows, cs, r_ok, c_ok, m2, offs = _token_tile(x_ptr, nw_ptr, nb_ptr, M, C, eps, NORM, BLOCK_M, BLOCK_C)
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=ACC)
    for h0 in range(0, HID, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        h_ok = hs < HID
        a, w1t = _preactivation(t, w1_ptr, b1_ptr, hs, h_ok, cs, c_ok, C, PREC)
        w2t = tl.load(w2_ptr + cs[None, :] * HID + hs[:, None], mask=h_ok[:, None] & c_ok[None, :], other=0.0)
        acc += tl.dot(gelu(a, FAST_GELU).to(DT), w2t, input_precision=PREC, out_dtype=ACC)
    acc += tl.load(b2_ptr + cs, mask=c_ok, other=0.0)[None, :]
    if RESIDUAL == 1:
        acc += tl.load(res_ptr + offs, mask=m2, other=0.0).to(ACC)
    elif RESIDUAL == 2:
        acc += x.to(ACC)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _conv_mlp_bwd_kernel(x_ptr, g_ptr, w1_ptr, b1_ptr, w2_ptr, nw_ptr, nb_ptr, dx_ptr, h_ptr, da_ptr, t_ptr,
                         partial_ptr, M, C, HID, eps, NORM: tl.constexpr, FAST_GELU: tl.constexpr,
                         PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr):
    ACC = b1_ptr.dtype.element_ty
    DT = x_ptr.dtype.element_ty
    x, t, rows, cs, r_ok, c_ok, m2, offs = _token_tile(x_ptr, nw_ptr, nb_ptr, M, C, eps, NORM, BLOCK_M, BLOCK_C)
    if NORM:
        tl.store(t_ptr + offs, t, mask=m2)  # for the W1 gradient GEMM
    g = tl.load(g_ptr + offs, mask=m2, other=0.0)
    dt = tl.zeros([BLOCK_M, BLOCK_C], dtype=ACC)
    for h0 in range(0, HID, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        h_ok = hs < HID
        a, w1t = _preactivation(t, w1_ptr, b1_ptr, hs, h_ok, cs, c_ok, C, PREC)
        h, dgelu = gelu_and_grad(a, FAST_GELU)
        w2 = tl.load(w2_ptr + cs[:, None] * HID + hs[None, :], mask=c_ok[:, None] & h_ok[None, :], other=0.0)
        da = tl.dot(g, w2, input_precision=PREC, out_dtype=ACC) * dgelu
        dt += tl.dot(da.to(DT), tl.trans(w1t), input_precision=PREC, out_dtype=ACC)
        hoffs = rows.to(tl.int64)[:, None] * HID + hs[None, :]
        hm = r_ok[:, None] & h_ok[None, :]
        tl.store(h_ptr + hoffs, h.to(DT), mask=hm)
        tl.store(da_ptr + hoffs, da.to(DT), mask=hm)
    if NORM:
        # the statistics again from x re-read (an L2 hit) rather than held in registers across the walk
        xhat, rstd = layer_norm_rows(tl.load(x_ptr + offs, mask=m2, other=0.0).to(ACC), m2, C, eps)
        dx = layer_norm_rows_backward(dt, xhat, rstd, tl.load(nw_ptr + cs, mask=c_ok, other=0.0), C)
        base = tl.program_id(0).to(tl.int64) * 2 * C
        tl.store(partial_ptr + base + cs, tl.sum(dt * xhat, axis=0), mask=c_ok)
        tl.store(partial_ptr + base + C + cs, tl.sum(dt, axis=0), mask=c_ok)
    else:
        dx = dt
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=m2)


def _block_c(c):
    return max(16, triton.next_power_of_2(c))


def _residual_mode(x2d, res2d, norm):
    if res2d is None:
        return NO_RESIDUAL
    if norm is None and res2d.data_ptr() == x2d.data_ptr() and res2d.stride() == x2d.stride():
        return INPUT_RESIDUAL  # x + MLP(x): x is the first dot's operand, on chip for the whole walk anyway
    return SEPARATE_RESIDUAL  # x + MLP(LN(x)) re-reads x in the epilogue (an L2 hit), freeing registers


def _tune_key(x2d, hid, *flags):
    return (size_bucket(x2d.shape[0]), x2d.shape[1], hid, x2d.dtype, *flags)


def _norm_args(x2d, norm, acc):
    """(weight, bias, eps) pointers for the kernel: the LayerNorm's, or placeholders when there is none."""
    if norm is None:
        return acc, acc, 0.0
    return norm


def conv_mlp_forward(x2d, w1, b1, w2, b2, res2d=None, norm=None):
    """y = [res2d +] W2 GELU(W1 t + b1) + b2 with t = x2d, or LN(x2d) when ``norm = (weight, bias, eps)``.

    x2d (M, C), w1 (HID, C), w2 (C, HID), res2d (M, C) or None: contiguous, in x's dtype; b1, b2 and the
    LayerNorm weight/bias contiguous in the accumulation dtype."""
    m, c = x2d.shape
    hid = w1.shape[0]
    y = torch.empty_like(x2d)
    residual = _residual_mode(x2d, res2d, norm)
    norm_weight, norm_bias, eps = _norm_args(x2d, norm, b1)
    prec = dot_precision(x2d.dtype, "conv")
    block_c = _block_c(c)

    def run(config):
        _conv_mlp_fwd_kernel[(triton.cdiv(m, config.meta["BLOCK_M"]),)](
            x2d, w1, b1, w2, b2, x2d if res2d is None else res2d, norm_weight, norm_bias, y, m, c, hid, eps,
            NORM=norm is not None, RESIDUAL=residual, FAST_GELU=fast_gelu_for(x2d.dtype), PREC=prec,
            BLOCK_C=block_c, **config.kwargs())

    FWD_CONFIGS.launch(row_bytes(x2d.dtype, block_c), _tune_key(x2d, hid, norm is not None, residual, prec), run)
    return y


def conv_mlp_backward(g2d, x2d, w1, b1, w2, norm=None):
    """(dx, h, da, t, norm_partials): dx (M, C) = dL/dx without the residual's share; h = GELU(a) and
    da = dL/da (M, HID) and t = LN(x) (M, C, only with ``norm``) in x's dtype; norm_partials
    (programs, 2, C) in the accumulation dtype: per-program sums of dL/dt * xhat and dL/dt (None without
    ``norm``)."""
    m, c = x2d.shape
    hid = w1.shape[0]
    dx = torch.empty_like(x2d)
    h = torch.empty(m, hid, dtype=x2d.dtype, device=x2d.device)
    da = torch.empty_like(h)
    t = torch.empty_like(x2d) if norm is not None else x2d
    norm_weight, norm_bias, eps = _norm_args(x2d, norm, b1)
    prec = dot_precision(x2d.dtype, "conv")
    block_c = _block_c(c)
    family = BWD_CONFIGS.family(row_bytes(x2d.dtype, block_c))
    outputs = {}

    def run(config):
        programs = triton.cdiv(m, config.meta["BLOCK_M"])
        partial = torch.empty(programs, 2, c, dtype=b1.dtype, device=x2d.device) if norm is not None else b1
        _conv_mlp_bwd_kernel[(programs,)](
            x2d, g2d, w1, b1, w2, norm_weight, norm_bias, dx, h, da, t, partial, m, c, hid, eps,
            NORM=norm is not None, FAST_GELU=fast_gelu_for(x2d.dtype), PREC=prec, BLOCK_C=block_c,
            **config.kwargs())
        outputs["partial"] = partial if norm is not None else None

    family.launch(_tune_key(x2d, hid, norm is not None, prec), run)
    return dx, h, da, t, outputs["partial"]


# ------------------------------------------------------------------------------------------ AOT entries
def _signatures(dtype):
    # ":16": aligned tensors and token/channel counts divisible by 16, as the JIT specialises them at the
    # model's shapes (1024^2 images: M = B * 256^2, 128^2 or 64^2 tokens)
    ptr, acc = f"*{dtype}:16", "*fp32:16"
    scalars = {"M": "i32:16", "C": "i32:16", "HID": "i32:16", "eps": "fp32"}
    fwd = {"x_ptr": ptr, "w1_ptr": ptr, "b1_ptr": acc, "w2_ptr": ptr, "b2_ptr": acc, "res_ptr": ptr,
           "nw_ptr": acc, "nb_ptr": acc, "y_ptr": ptr, **scalars}
    bwd = {"x_ptr": ptr, "g_ptr": ptr, "w1_ptr": ptr, "b1_ptr": acc, "w2_ptr": ptr, "nw_ptr": acc,
           "nb_ptr": acc, "dx_ptr": ptr, "h_ptr": ptr, "da_ptr": ptr, "t_ptr": ptr, "partial_ptr": acc,
           **scalars}
    return fwd, bwd


def _aot_entries(torch_dtype, c, norm):
    dtype = AOT_DTYPES[torch_dtype]
    fwd, bwd = _signatures(dtype)
    block_c = _block_c(c)
    size = row_bytes(torch_dtype, block_c)
    common = {"NORM": norm, "FAST_GELU": fast_gelu_for(torch_dtype), "BLOCK_C": block_c,
              "PREC": "tf32" if torch_dtype == torch.float32 else dot_precision(torch_dtype, "conv")}
    constexprs = ("NORM", "RESIDUAL", "FAST_GELU", "PREC", "BLOCK_M", "BLOCK_C", "BLOCK_H")
    fwd.update({k: "constexpr" for k in constexprs})
    bwd.update({k: "constexpr" for k in constexprs if k != "RESIDUAL"})
    residual = SEPARATE_RESIDUAL if norm else INPUT_RESIDUAL  # what residual=x launches (_residual_mode)
    return (FWD_CONFIGS.family(size).aot_entries(_conv_mlp_fwd_kernel, fwd, {**common, "RESIDUAL": residual})
            + BWD_CONFIGS.family(size).aot_entries(_conv_mlp_bwd_kernel, bwd, common))


# For the sm_90a AOT check in CI: every configuration a GPU can pick at the model's shapes (pool-mixer
# stages C=32/64 with the residual = input; the attention stage C=128 with the fused LayerNorm), fp32 as TF32.
AOT_KERNELS = [e for dt in (torch.float16, torch.bfloat16, torch.float32)
               for c, norm in ((32, False), (64, False), (128, True)) for e in _aot_entries(dt, c, norm)]
