"""ConvMLP (1x1 expand -> GELU -> 1x1 project [+ residual]) over channels-last tokens, in Triton.

Forward: each program owns BLOCK_M tokens with all C channels on chip and walks the hidden dim in chunks of
BLOCK_H: a = x W1_chunk^T + b1 (tl.dot), h = GELU(a), acc += h W2_chunk^T (tl.dot). The hidden activation
(4-5x the size of x) never reaches memory: x is read once and y written once.
Backward (recompute): the same walk recomputes a, then dh = g W2_chunk, da = dh * GELU'(a),
dx += da W1_chunk on chip; h and da are written out (M x HID) for the two weight-gradient GEMMs, which
the launcher leaves to cuBLAS.
"""
import torch
import triton
import triton.language as tl

from litesam_kernels.triton import _tiles as tiles

BLOCK_M = 64
BLOCK_H = 64


@triton.jit
def _conv_mlp_fwd_kernel(x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, res_ptr, y_ptr, M, C, HID,
                         HAS_RES: tl.constexpr, PREC: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr):
    ACC = b1_ptr.dtype.element_ty
    rows, cs, r_ok, c_ok, m2, offs = tiles.matrix_row_tile(M, C, BLOCK_M, BLOCK_C)
    x = tl.load(x_ptr + offs, mask=m2, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=ACC)
    for h0 in range(0, HID, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        h_ok = hs < HID
        w1 = tl.load(w1_ptr + hs[None, :] * C + cs[:, None], mask=c_ok[:, None] & h_ok[None, :], other=0.0)
        a = tl.dot(x, w1, input_precision=PREC, out_dtype=ACC)
        a += tl.load(b1_ptr + hs, mask=h_ok, other=0.0)[None, :]
        h = 0.5 * a * (1.0 + tl.erf(a * 0.7071067811865476))
        w2 = tl.load(w2_ptr + cs[None, :] * HID + hs[:, None], mask=h_ok[:, None] & c_ok[None, :], other=0.0)
        acc += tl.dot(h.to(x_ptr.dtype.element_ty), w2, input_precision=PREC, out_dtype=ACC)
    acc += tl.load(b2_ptr + cs, mask=c_ok, other=0.0)[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + offs, mask=m2, other=0.0).to(ACC)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _conv_mlp_bwd_kernel(x_ptr, g_ptr, w1_ptr, b1_ptr, w2_ptr, dx_ptr, h_ptr, da_ptr, M, C, HID,
                         PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr):
    ACC = b1_ptr.dtype.element_ty
    DT = x_ptr.dtype.element_ty
    rows, cs, r_ok, c_ok, m2, offs = tiles.matrix_row_tile(M, C, BLOCK_M, BLOCK_C)
    x = tl.load(x_ptr + offs, mask=m2, other=0.0)
    g = tl.load(g_ptr + offs, mask=m2, other=0.0)
    dx = tl.zeros([BLOCK_M, BLOCK_C], dtype=ACC)
    for h0 in range(0, HID, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        h_ok = hs < HID
        w1t = tl.load(w1_ptr + hs[None, :] * C + cs[:, None], mask=c_ok[:, None] & h_ok[None, :], other=0.0)
        a = tl.dot(x, w1t, input_precision=PREC, out_dtype=ACC)
        a += tl.load(b1_ptr + hs, mask=h_ok, other=0.0)[None, :]
        cdf = 0.5 * (1.0 + tl.erf(a * 0.7071067811865476))
        w2 = tl.load(w2_ptr + cs[:, None] * HID + hs[None, :], mask=c_ok[:, None] & h_ok[None, :], other=0.0)
        dh = tl.dot(g, w2, input_precision=PREC, out_dtype=ACC)
        da = dh * (cdf + a * tl.exp(-0.5 * a * a) * 0.3989422804014327)
        w1 = tl.load(w1_ptr + hs[:, None] * C + cs[None, :], mask=h_ok[:, None] & c_ok[None, :], other=0.0)
        dx += tl.dot(da.to(DT), w1, input_precision=PREC, out_dtype=ACC)
        hoffs = rows.to(tl.int64)[:, None] * HID + hs[None, :]
        hm = r_ok[:, None] & h_ok[None, :]
        tl.store(h_ptr + hoffs, (a * cdf).to(DT), mask=hm)
        tl.store(da_ptr + hoffs, da.to(DT), mask=hm)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=m2)


def _num_stages(wide: bool, backward: bool) -> int:
    """Software-pipelining depth of the weight-chunk loads: 4-byte operands (fp32) need fewer stages to stay
    within the 227 KB of shared memory per block on sm_90 (the backward streams three weight tiles)."""
    if not wide:
        return 3
    return 1 if backward else 2


def _meta(x2d, hid, backward):
    c = x2d.shape[1]
    wide = x2d.dtype in (torch.float32, torch.float64)
    block_h = min(BLOCK_H, max(16, triton.next_power_of_2(hid)))
    return dict(PREC="ieee" if wide else "tf32", BLOCK_M=BLOCK_M, BLOCK_C=max(16, triton.next_power_of_2(c)),
                BLOCK_H=block_h, num_warps=4, num_stages=_num_stages(wide, backward))


def conv_mlp_forward(x2d, w1, b1, w2, b2, res2d):
    """x2d (M, C), w1 (HID, C), w2 (C, HID) in x's dtype; b1, b2 in the accumulation dtype; res2d or None."""
    m, c = x2d.shape
    hid = w1.shape[0]
    y = torch.empty_like(x2d)
    _conv_mlp_fwd_kernel[(triton.cdiv(m, BLOCK_M),)](
        x2d, w1, b1, w2, b2, x2d if res2d is None else res2d, y, m, c, hid, HAS_RES=res2d is not None,
        **_meta(x2d, hid, False))
    return y


def conv_mlp_backward(g2d, x2d, w1, b1, w2):
    """(dx, h, da): dx (M, C); h = GELU(a) and da = dL/da (M, HID), both in x's dtype."""
    m, c = x2d.shape
    hid = w1.shape[0]
    dx = torch.empty_like(x2d)
    h = torch.empty(m, hid, dtype=x2d.dtype, device=x2d.device)
    da = torch.empty_like(h)
    _conv_mlp_bwd_kernel[(triton.cdiv(m, BLOCK_M),)](x2d, g2d, w1, b1, w2, dx, h, da, m, c, hid,
                                                    **_meta(x2d, hid, True))
    return dx, h, da


def _aot(dtype, c, hid):
    prec = "ieee" if dtype == "fp32" else "tf32"
    const = {"PREC": prec, "BLOCK_M": BLOCK_M, "BLOCK_C": c, "BLOCK_H": BLOCK_H}
    fwd = {"x_ptr": f"*{dtype}", "w1_ptr": f"*{dtype}", "b1_ptr": "*fp32", "w2_ptr": f"*{dtype}", "b2_ptr": "*fp32",
           "res_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "M": "i32", "C": "i32", "HID": "i32", "HAS_RES": "constexpr",
           **{k: "constexpr" for k in const}}
    bwd = {"x_ptr": f"*{dtype}", "g_ptr": f"*{dtype}", "w1_ptr": f"*{dtype}", "b1_ptr": "*fp32",
           "w2_ptr": f"*{dtype}", "dx_ptr": f"*{dtype}", "h_ptr": f"*{dtype}", "da_ptr": f"*{dtype}",
           "M": "i32", "C": "i32", "HID": "i32", **{k: "constexpr" for k in const}}
    wide = dtype == "fp32"
    return [(_conv_mlp_fwd_kernel, fwd, {"HAS_RES": True, **const},
             {"num_warps": 4, "num_stages": _num_stages(wide, False)}),
            (_conv_mlp_bwd_kernel, bwd, const, {"num_warps": 4, "num_stages": _num_stages(wide, True)})]


# For the sm_90a AOT check in CI: (kernel, signature, constexprs, options). Model shapes: C 32/64/128.
AOT_KERNELS = [e for dt in ("fp16", "bf16", "fp32") for c, hid in ((32, 128), (128, 640)) for e in _aot(dt, c, hid)]
