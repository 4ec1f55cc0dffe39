"""Pooled-KV attention in Triton: multi-scale average pooling of channels-last tokens (the K/V sources) and
flash-style multi-head attention over token-major (B, L, heads, D) tensors, optionally with the output
projection, its bias and the residual fused into the epilogue.

Forward (``_attend``): a program holds BLOCK_M queries of one head and streams the keys in blocks of
BLOCK_N with an online softmax in float32, so the Lq x Lk score matrix never exists in memory. The softmax
scale is folded into the exponent, ``p = exp2(s * scale * log2(e) - m)`` (one FMA per score, the row max
tracked in those units), rather than pre-multiplied into q: the instruction count is the same and a 16-bit
q would take one more rounding. Every key block but the last is loaded and used unmasked; only the tail
block (when BLOCK_N does not divide Lk) pays for bounds masks. It writes O, and the row log-sum-exp (log2
units, private to the backward) only when the backward can need it (``STORE_LSE``; inference skips it).
With the projection (``_attn_fwd_proj_kernel``, output channels <= 256, D <= 64): one program owns a query tile of
one image and walks all heads, accumulating ``y += O_head W_proj[:, head]^T`` on chip; the epilogue adds
the bias and the residual, so LiteViT's ``x + proj(attention)`` is one launch instead of three. O and the
log-sum-exp are stored only for the backward (``STORE_STATE``): inference skips them, about a quarter of the
kernel's DRAM traffic at LiteViT's shape (16-bit, 4 heads of 32, C = 128: per query, q, the residual and y
are 3 x 256 bytes, O and the log-sum-exp 256 + 16 more).
Backward (FlashAttention-2 style, recompute): delta = rowsum(dO * O) by the launcher, then one kernel for
dQ (per query block) and one for dK/dV (per key block), each recomputing P from Q, K and the saved
log-sum-exp, with the same unmasked-body / masked-tail split.
Pooling: forward one launch per scale (window sum / count of cells inside the image, ceil mode); backward
one pass over pixels that gathers each scale's token gradient / count.

fp32 dots follow ``torch.backends.cuda.matmul.allow_tf32`` (off by default: exact fp32 products; on: TF32
tensor cores, about 1e-3 relative error per product), see ``_precision``. Every grid is 1-D: CUDA allows
2**31 - 1 programs on axis 0 but only 65535 on axes 1 and 2, so each kernel splits its program id into
(tile, channel block, image or image row) itself; the grid sizes are plain functions (``*_grid``), checked
before launch and tested on CPU at sizes too large to launch there. Launch configurations per row-size class
(``_sized_configs``), autotuned on a GPU.
"""
import torch
import triton
import triton.language as tl

from litesam_kernels.triton._configs import LaunchConfig, LaunchConfigs, size_bucket
from litesam_kernels.triton._precision import dot_precision
from litesam_kernels.triton._sized_configs import AOT_DTYPES, SizedConfigs, row_bytes
from litesam_kernels.triton._tiles import grid_1d

LOG2E = 1.4426950408889634


def _tiles(block_m, block_n, warps, stages):
    return LaunchConfig({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


# Per-head kernels: row bytes = element size x D (64: 16-bit D <= 32, LiteViT's D = 32; 256: 16-bit D <= 128
# or fp32 D <= 64; 1024: fp32 D = 128, fp64). The first entry of a class is its default (the interpreter's).
# Each configuration was compiled for sm_90a at its class's widest rows (16-bit and fp32): no register spills.
_FWD_CLASSES = [
    (64, [_tiles(128, 64, 4, 3), _tiles(64, 64, 4, 3), _tiles(128, 128, 8, 3), _tiles(64, 128, 4, 2)]),
    (256, [_tiles(128, 64, 8, 3), _tiles(64, 64, 4, 3), _tiles(128, 32, 8, 3)]),
    (1024, [_tiles(64, 32, 4, 2), _tiles(64, 64, 8, 2), _tiles(32, 64, 8, 2)]),
]
# Two variants of the per-head forward, tuned and compiled apart: with the log-sum-exp (STORE_LSE=True) for
# autograd, without it for inference.
FWD_CONFIGS = SizedConfigs("attention.fwd", _FWD_CLASSES)
FWD_INFERENCE_CONFIGS = SizedConfigs("attention.fwd_inference", _FWD_CLASSES)
# The fused projection (D <= 64): row bytes = element size x padded output channels (256: 16-bit C <= 128,
# LiteViT's C = 128; 512: 16-bit C = 256 or fp32 C = 128; 2048: fp32 C = 256, fp64). Fewer, taller programs
# than the per-head kernel (one per query tile and image): small query tiles keep a batch-1 image's 4096
# queries spread over the SMs. No spills at the class's widest rows with D = 64.
_PROJ_CLASSES = [
    (256, [_tiles(64, 64, 8, 3), _tiles(128, 64, 8, 3), _tiles(32, 64, 4, 3), _tiles(64, 32, 8, 3),
           _tiles(128, 32, 8, 3)]),
    (512, [_tiles(64, 32, 8, 2), _tiles(32, 64, 8, 2)]),
    (2048, [_tiles(32, 32, 8, 1), _tiles(16, 64, 8, 1)]),
]
# Two variants of the fused kernel, tuned and compiled apart: with the backward's state (O and the
# log-sum-exp, STORE_STATE=True) for autograd, without it for inference.
PROJ_CONFIGS = SizedConfigs("attention.fwd_proj", _PROJ_CLASSES)
PROJ_INFERENCE_CONFIGS = SizedConfigs("attention.fwd_proj_inference", _PROJ_CLASSES)
DQ_CONFIGS = SizedConfigs("attention.bwd_dq", [
    (64, [_tiles(128, 64, 8, 2), _tiles(64, 64, 4, 2), _tiles(64, 128, 8, 2)]),
    (256, [_tiles(64, 64, 4, 2), _tiles(128, 32, 8, 2)]),
    (1024, [_tiles(64, 32, 8, 1), _tiles(64, 16, 4, 1)]),
])
DKV_CONFIGS = SizedConfigs("attention.bwd_dkv", [
    (64, [_tiles(64, 128, 8, 2), _tiles(64, 64, 4, 2), _tiles(128, 64, 8, 2)]),
    (256, [_tiles(64, 64, 8, 2), _tiles(32, 128, 8, 2), _tiles(32, 64, 4, 2)]),
    (1024, [_tiles(16, 64, 8, 1), _tiles(32, 64, 8, 1)]),
])
POOL_FWD_CONFIGS = LaunchConfigs("attention.kv_pool_fwd", [
    LaunchConfig({"BLOCK_T": 32, "BLOCK_C": 64}), LaunchConfig({"BLOCK_T": 64, "BLOCK_C": 64}),
    LaunchConfig({"BLOCK_T": 16, "BLOCK_C": 128})])
POOL_BWD_CONFIGS = LaunchConfigs("attention.kv_pool_bwd", [
    LaunchConfig({"BLOCK_W": 32, "BLOCK_C": 64}), LaunchConfig({"BLOCK_W": 64, "BLOCK_C": 64}),
    LaunchConfig({"BLOCK_W": 16, "BLOCK_C": 128})])


# ----------------------------------------------------------------------------------------------- forward
@triton.jit
def _key_block(k_base, v_base, skl, svl, n0, Lk, D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr):
    """(k, v, in-bounds mask) of keys n0 .. n0 + BLOCK_N; loads are predicated only for the tail block."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    n_ok = offs_n < Lk
    k_ptrs = k_base + offs_n[:, None] * skl + offs_d[None, :]
    v_ptrs = v_base + offs_n[:, None] * svl + offs_d[None, :]
    if MASKED:
        k = tl.load(k_ptrs, mask=n_ok[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=n_ok[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    return k, v, n_ok


@triton.jit
def _attend_block(acc, l_i, m_i, q, k_base, v_base, skl, svl, n0, Lk, qk_scale, PREC: tl.constexpr,
                  D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr):
    """One key block of the online softmax (scores in exp2 units, ``qk_scale = scale * log2(e)``)."""
    k, v, n_ok = _key_block(k_base, v_base, skl, svl, n0, Lk, D, BLOCK_N, MASKED)
    s = tl.dot(q, tl.trans(k), input_precision=PREC, out_dtype=acc.dtype)
    if MASKED:
        s = tl.where(n_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s * qk_scale - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=PREC, out_dtype=acc.dtype)
    return acc, l_i, m_new


@triton.jit
def _attend(q_base, k_base, v_base, sql, skl, svl, offs_m, m_ok, Lk, qk_scale, ACC: tl.constexpr,
            PREC: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """softmax(q k^T scale) v of one head for the queries offs_m: (O [BLOCK_M, D] in ACC, lse in log2 units)."""
    offs_d = tl.arange(0, D)
    q = tl.load(q_base + offs_m[:, None] * sql + offs_d[None, :], mask=m_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    l_i = tl.zeros([BLOCK_M], dtype=ACC)
    acc = tl.zeros([BLOCK_M, D], dtype=ACC)
    n_full = Lk - Lk % BLOCK_N
    for n0 in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, k_base, v_base, skl, svl, n0, Lk, qk_scale, PREC, D,
                                      BLOCK_N, False)
    if n_full < Lk:
        acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, k_base, v_base, skl, svl, n_full, Lk, qk_scale, PREC, D,
                                      BLOCK_N, True)
    return acc / l_i[:, None], m_i + tl.log2(l_i)


@triton.jit
def _query_tile(Lq, BLOCK_M: tl.constexpr):
    """(group, offs_m, m_ok) of this program in a 1-D grid of cdiv(Lq, BLOCK_M) tiles per group."""
    tiles_per_group = tl.cdiv(Lq, BLOCK_M)
    pid = tl.program_id(0)
    offs_m = (pid % tiles_per_group) * BLOCK_M + tl.arange(0, BLOCK_M)
    return pid // tiles_per_group, offs_m, offs_m < Lq


@triton.jit
def _store_head(o_ptr, lse_ptr, o, lse, b, hd, offs_m, m_ok, Lq, NH, D: tl.constexpr, STORE_LSE: tl.constexpr):
    """O of one head into contiguous (B, Lq, NH, D); its log-sum-exp into (B, NH, Lq) when STORE_LSE."""
    offs_d = tl.arange(0, D)
    o_offs = ((b.to(tl.int64) * Lq + offs_m) * NH + hd)[:, None] * D + offs_d[None, :]
    tl.store(o_ptr + o_offs, o.to(o_ptr.dtype.element_ty), mask=m_ok[:, None])
    if STORE_LSE:
        tl.store(lse_ptr + (b.to(tl.int64) * NH + hd) * Lq + offs_m, lse, mask=m_ok)


@triton.jit
def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, sqb, sql, sqh, skb, skl, skh, svb, svl, svh,
                     Lq, Lk, NH, qk_scale, STORE_LSE: tl.constexpr, PREC: tl.constexpr, D: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """lse_ptr: the accumulation dtype's log-sum-exp (B, NH, Lq), written only when STORE_LSE (the backward's
    state); without it, any pointer of that dtype (it sets the accumulation dtype, nothing is read or written)."""
    bh, offs_m, m_ok = _query_tile(Lq, BLOCK_M)
    b = bh // NH
    hd = bh % NH
    o, lse = _attend(q_ptr + b.to(tl.int64) * sqb + hd * sqh, k_ptr + b.to(tl.int64) * skb + hd * skh,
                     v_ptr + b.to(tl.int64) * svb + hd * svh, sql, skl, svl, offs_m, m_ok, Lk, qk_scale,
                     lse_ptr.dtype.element_ty, PREC, D, BLOCK_M, BLOCK_N)
    _store_head(o_ptr, lse_ptr, o, lse, b, hd, offs_m, m_ok, Lq, NH, D, STORE_LSE)


@triton.jit
def _attn_fwd_proj_kernel(q_ptr, k_ptr, v_ptr, wp_ptr, bp_ptr, res_ptr, o_ptr, lse_ptr, y_ptr,
                          sqb, sql, sqh, skb, skl, skh, svb, svl, svh, Lq, Lk, NH, COUT, qk_scale,
                          HAS_RES: tl.constexpr, STORE_STATE: tl.constexpr, PREC: tl.constexpr, D: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    ACC = bp_ptr.dtype.element_ty  # the bias comes in the accumulation dtype
    b, offs_m, m_ok = _query_tile(Lq, BLOCK_M)
    offs_d = tl.arange(0, D)
    cs = tl.arange(0, BLOCK_C)
    c_ok = cs < COUT
    y = tl.zeros([BLOCK_M, BLOCK_C], dtype=ACC)
    for hd in range(0, NH):
        o, lse = _attend(q_ptr + b.to(tl.int64) * sqb + hd * sqh, k_ptr + b.to(tl.int64) * skb + hd * skh,
                         v_ptr + b.to(tl.int64) * svb + hd * svh, sql, skl, svl, offs_m, m_ok, Lk, qk_scale,
                         ACC, PREC, D, BLOCK_M, BLOCK_N)
        if STORE_STATE:  # only the backward reads them
            _store_head(o_ptr, lse_ptr, o, lse, b, hd, offs_m, m_ok, Lq, NH, D, True)
        # W_proj[:, head columns]^T as [D, BLOCK_C]: y[m, c] += sum_j O[m, j] W_proj[c, head * D + j]
        wp = tl.load(wp_ptr + cs[None, :] * (NH * D) + hd * D + offs_d[:, None], mask=c_ok[None, :], other=0.0)
        y += tl.dot(o.to(q_ptr.dtype.element_ty), wp, input_precision=PREC, out_dtype=ACC)
    y += tl.load(bp_ptr + cs, mask=c_ok, other=0.0)[None, :]
    offs = (b.to(tl.int64) * Lq + offs_m)[:, None] * COUT + cs[None, :]
    mask = m_ok[:, None] & c_ok[None, :]
    if HAS_RES:
        y += tl.load(res_ptr + offs, mask=mask, other=0.0).to(ACC)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------- backward
@triton.jit
def _dq_block(dq, q, do, lse, delta, k_base, v_base, skl, svl, n0, Lk, qk_scale, PREC: tl.constexpr,
              D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr):
    k, v, n_ok = _key_block(k_base, v_base, skl, svl, n0, Lk, D, BLOCK_N, MASKED)
    s = tl.dot(q, tl.trans(k), input_precision=PREC, out_dtype=dq.dtype)
    p = tl.exp2(s * qk_scale - lse[:, None])
    if MASKED:
        p = tl.where(n_ok[None, :], p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC, out_dtype=dq.dtype)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(q.dtype), k, input_precision=PREC, out_dtype=dq.dtype)


@triton.jit
def _attn_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, sqb, sql, sqh, skb, skl, skh,
                        svb, svl, svh, Lq, Lk, NH, qk_scale, scale, PREC: tl.constexpr, D: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    ACC = lse_ptr.dtype.element_ty
    bh, offs_m, m_ok = _query_tile(Lq, BLOCK_M)
    b = bh // NH
    hd = bh % NH
    offs_d = tl.arange(0, D)
    q = tl.load(q_ptr + b.to(tl.int64) * sqb + hd * sqh + offs_m[:, None] * sql + offs_d[None, :],
                mask=m_ok[:, None], other=0.0)
    tok = ((b.to(tl.int64) * Lq + offs_m) * NH + hd)[:, None] * D + offs_d[None, :]
    do = tl.load(do_ptr + tok, mask=m_ok[:, None], other=0.0)
    lse = tl.load(lse_ptr + bh.to(tl.int64) * Lq + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(delta_ptr + bh.to(tl.int64) * Lq + offs_m, mask=m_ok, other=0.0)
    k_base = k_ptr + b.to(tl.int64) * skb + hd * skh
    v_base = v_ptr + b.to(tl.int64) * svb + hd * svh
    dq = tl.zeros([BLOCK_M, D], dtype=ACC)
    n_full = Lk - Lk % BLOCK_N
    for n0 in range(0, n_full, BLOCK_N):
        dq = _dq_block(dq, q, do, lse, delta, k_base, v_base, skl, svl, n0, Lk, qk_scale, PREC, D, BLOCK_N, False)
    if n_full < Lk:
        dq = _dq_block(dq, q, do, lse, delta, k_base, v_base, skl, svl, n_full, Lk, qk_scale, PREC, D, BLOCK_N,
                       True)
    tl.store(dq_ptr + tok, (dq * scale).to(dq_ptr.dtype.element_ty), mask=m_ok[:, None])


@triton.jit
def _dkv_block(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sql, NH, m0, Lq, qk_scale,
               PREC: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr):
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    q_offs = offs_m[:, None] * sql + offs_d[None, :]
    do_offs = offs_m.to(tl.int64)[:, None] * (NH * D) + offs_d[None, :]
    if MASKED:
        m_ok = offs_m < Lq
        q = tl.load(q_base + q_offs, mask=m_ok[:, None], other=0.0)
        do = tl.load(do_base + do_offs, mask=m_ok[:, None], other=0.0)
        lse = tl.load(lse_base + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(delta_base + offs_m, mask=m_ok, other=0.0)
    else:
        q = tl.load(q_base + q_offs)
        do = tl.load(do_base + do_offs)
        lse = tl.load(lse_base + offs_m)
        delta = tl.load(delta_base + offs_m)
    st = tl.dot(k, tl.trans(q), input_precision=PREC, out_dtype=dk.dtype)
    pt = tl.exp2(st * qk_scale - lse[None, :])
    if MASKED:
        pt = tl.where(m_ok[None, :], pt, 0.0)
    dv += tl.dot(pt.to(k.dtype), do, input_precision=PREC, out_dtype=dk.dtype)
    dpt = tl.dot(v, tl.trans(do), input_precision=PREC, out_dtype=dk.dtype)
    dst = pt * (dpt - delta[None, :])
    dk += tl.dot(dst.to(k.dtype), q, input_precision=PREC, out_dtype=dk.dtype)
    return dk, dv


@triton.jit
def _attn_bwd_dkv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, sqb, sql, sqh,
                         skb, skl, skh, svb, svl, svh, Lq, Lk, NH, qk_scale, scale, PREC: tl.constexpr,
                         D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    ACC = lse_ptr.dtype.element_ty
    bh, offs_n, n_ok = _query_tile(Lk, BLOCK_N)  # a tile of keys
    b = bh // NH
    hd = bh % NH
    offs_d = tl.arange(0, D)
    k = tl.load(k_ptr + b.to(tl.int64) * skb + hd * skh + offs_n[:, None] * skl + offs_d[None, :],
                mask=n_ok[:, None], other=0.0)
    v = tl.load(v_ptr + b.to(tl.int64) * svb + hd * svh + offs_n[:, None] * svl + offs_d[None, :],
                mask=n_ok[:, None], other=0.0)
    q_base = q_ptr + b.to(tl.int64) * sqb + hd * sqh
    do_base = do_ptr + (b.to(tl.int64) * Lq * NH + hd) * D
    lse_base = lse_ptr + bh.to(tl.int64) * Lq
    delta_base = delta_ptr + bh.to(tl.int64) * Lq
    dk = tl.zeros([BLOCK_N, D], dtype=ACC)
    dv = tl.zeros([BLOCK_N, D], dtype=ACC)
    m_full = Lq - Lq % BLOCK_M
    for m0 in range(0, m_full, BLOCK_M):
        dk, dv = _dkv_block(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sql, NH, m0, Lq, qk_scale, PREC,
                            D, BLOCK_M, False)
    if m_full < Lq:
        dk, dv = _dkv_block(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sql, NH, m_full, Lq, qk_scale,
                            PREC, D, BLOCK_M, True)
    out = ((b.to(tl.int64) * Lk + offs_n) * NH + hd)[:, None] * D + offs_d[None, :]
    tl.store(dk_ptr + out, (dk * scale).to(dk_ptr.dtype.element_ty), mask=n_ok[:, None])
    tl.store(dv_ptr + out, dv.to(dv_ptr.dtype.element_ty), mask=n_ok[:, None])


# ----------------------------------------------------------------------------------------------- pooling
@triton.jit
def _kv_pool_fwd_kernel(x_ptr, out_ptr, H, W, C, L, T0, S: tl.constexpr, BLOCK_T: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    """Scale S's tokens (from token T0 of out's L); one program per (token tile, channel block, image), token
    tiles fastest (:func:`kv_pool_forward_grid`)."""
    wo = (W + S - 1) // S
    ho = (H + S - 1) // S
    n_t = tl.cdiv(ho * wo, BLOCK_T)
    n_c = tl.cdiv(C, BLOCK_C)
    pid = tl.program_id(0)
    b = pid // (n_t * n_c)
    t = (pid % n_t) * BLOCK_T + tl.arange(0, BLOCK_T)
    cs = ((pid // n_t) % n_c) * BLOCK_C + tl.arange(0, BLOCK_C)
    t_ok = t < ho * wo
    c_ok = cs < C
    oy = t // wo
    ox = t % wo
    acc = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)  # promoted to float64 by float64 input (unrolled)
    for i in tl.static_range(0, S):
        for j in tl.static_range(0, S):
            yy = oy * S + i
            xx = ox * S + j
            ok = t_ok & (yy < H) & (xx < W)
            pix = (b.to(tl.int64) * H + yy) * W + xx
            acc += tl.load(x_ptr + pix[:, None] * C + cs[None, :], mask=ok[:, None] & c_ok[None, :], other=0.0)
    count = (tl.minimum(oy * S + S, H) - oy * S) * (tl.minimum(ox * S + S, W) - ox * S)
    count = tl.maximum(count, 1)
    offs = (b.to(tl.int64) * L + T0 + t)[:, None] * C + cs[None, :]
    tl.store(out_ptr + offs, (acc / count[:, None]).to(out_ptr.dtype.element_ty), mask=t_ok[:, None] & c_ok[None, :])


@triton.jit
def _kv_pool_bwd_kernel(g_ptr, dx_ptr, H, W, C, L, S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
                        BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """dx of BLOCK_W pixels x BLOCK_C channels of one image row; one program per (pixel tile, channel block,
    image row), pixel tiles fastest (:func:`kv_pool_backward_grid`)."""
    n_w = tl.cdiv(W, BLOCK_W)
    n_c = tl.cdiv(C, BLOCK_C)
    pid = tl.program_id(0)
    bh = pid // (n_w * n_c)  # b * H + h
    b = bh // H
    h = bh % H
    ws = (pid % n_w) * BLOCK_W + tl.arange(0, BLOCK_W)
    cs = ((pid // n_w) % n_c) * BLOCK_C + tl.arange(0, BLOCK_C)
    w_ok = ws < W
    c_ok = cs < C
    m2 = w_ok[:, None] & c_ok[None, :]
    acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)  # promoted to float64 by float64 input (unrolled)
    t0 = 0
    for si in tl.static_range(0, 3):
        S = S0 * (si == 0) + S1 * (si == 1) + S2 * (si == 2)
        if S > 0:
            wo = (W + S - 1) // S
            oy = h // S
            ox = ws // S
            count = (tl.minimum(oy * S + S, H) - oy * S) * (tl.minimum(ox * S + S, W) - ox * S)
            tok = b.to(tl.int64) * L + t0 + oy * wo + ox
            g = tl.load(g_ptr + tok[:, None] * C + cs[None, :], mask=m2, other=0.0)
            acc += g / tl.maximum(count, 1)[:, None]
            t0 += ((H + S - 1) // S) * wo
    offs = (bh.to(tl.int64) * W + ws)[:, None] * C + cs[None, :]
    tl.store(dx_ptr + offs, acc.to(dx_ptr.dtype.element_ty), mask=m2)


# -------------------------------------------------------------------------------------------------- grids
def query_tile_grid(groups, length, block):
    """1-D grid of ``_query_tile`` programs: cdiv(length, block) tiles for each of ``groups`` (images or
    image x head pairs)."""
    return grid_1d(triton.cdiv(length, block) * groups, f"attention over {groups} x {length} rows")


def kv_pool_forward_grid(batch, tokens, channels, block_t, block_c):
    """1-D grid of ``_kv_pool_fwd_kernel`` for one scale of ``tokens`` tokens per image."""
    return grid_1d(triton.cdiv(tokens, block_t) * triton.cdiv(channels, block_c) * batch,
                    f"kv_pool2d of {batch} images x {tokens} tokens x {channels} channels")


def kv_pool_backward_grid(shape, block_w, block_c):
    """1-D grid of ``_kv_pool_bwd_kernel`` for an input of ``shape`` (B, H, W, C)."""
    b, h, w, c = (int(n) for n in shape)
    return grid_1d(triton.cdiv(w, block_w) * triton.cdiv(c, block_c) * b * h,
                    f"the kv_pool2d backward of {(b, h, w, c)}")


# --------------------------------------------------------------------------------------------- launchers
def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2)


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tune_key(q, k, *extra):
    b, lq, nh, d = q.shape
    return (size_bucket(b), size_bucket(lq), size_bucket(k.shape[1]), nh, d, q.dtype, *extra)


def attention_forward(q, k, v, scale, store_lse=True):
    """q (B, Lq, NH, D), k/v (B, Lk, NH, D), last dim contiguous -> (o contiguous, lse2 (B, NH, Lq)). lse2 is
    the backward's state: with ``store_lse=False`` (inference) the kernel does not write it and it is None."""
    b, lq, nh, d = q.shape
    o = torch.empty(b, lq, nh, d, dtype=q.dtype, device=q.device)
    # without the state, an empty tensor of the accumulation dtype stands in (the kernel takes its dtype only)
    lse = torch.empty((b, nh, lq) if store_lse else (0,), dtype=_acc(q.dtype), device=q.device)
    prec = dot_precision(q.dtype, "matmul")

    def run(config):
        grid = query_tile_grid(b * nh, lq, config.meta["BLOCK_M"])
        _attn_fwd_kernel[grid](q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), lq, k.shape[1], nh,
                               scale * LOG2E, STORE_LSE=store_lse, PREC=prec, D=d, **config.kwargs())

    configs = FWD_CONFIGS if store_lse else FWD_INFERENCE_CONFIGS
    configs.launch(row_bytes(q.dtype, d), _tune_key(q, k, prec), run)
    return o, lse if store_lse else None


def attention_projected_forward(q, k, v, scale, wproj, bproj, residual, store_state=True):
    """(y, o, lse2): y (B, Lq, COUT) = [residual +] o W_proj^T + b_proj with o = attention(q, k, v). o
    (contiguous (B, Lq, NH, D)) and lse2 are the backward's state: with ``store_state=False`` (inference) the
    kernel does not write them and both are None. wproj (COUT, NH * D) contiguous in q's dtype, bproj (COUT,)
    in the accumulation dtype, residual (B, Lq, COUT) contiguous in q's dtype or None."""
    b, lq, nh, d = q.shape
    cout = wproj.shape[0]
    y = torch.empty(b, lq, cout, dtype=q.dtype, device=q.device)
    if store_state:
        o = torch.empty(b, lq, nh, d, dtype=q.dtype, device=q.device)
        lse = torch.empty(b, nh, lq, dtype=_acc(q.dtype), device=q.device)
    else:
        o = lse = None
    prec = dot_precision(q.dtype, "matmul")
    block_c = max(16, triton.next_power_of_2(cout))

    def run(config):
        grid = query_tile_grid(b, lq, config.meta["BLOCK_M"])
        # pointers the variant never touches get a tensor of their type (y, bproj) as placeholder
        _attn_fwd_proj_kernel[grid](
            q, k, v, wproj, bproj, y if residual is None else residual, y if o is None else o,
            bproj if lse is None else lse, y, *_strides(q), *_strides(k), *_strides(v), lq, k.shape[1], nh, cout,
            scale * LOG2E, HAS_RES=residual is not None, STORE_STATE=store_state, PREC=prec, D=d, BLOCK_C=block_c,
            **config.kwargs())

    configs = PROJ_CONFIGS if store_state else PROJ_INFERENCE_CONFIGS
    configs.launch(row_bytes(q.dtype, block_c), _tune_key(q, k, cout, residual is not None, prec), run)
    return y, o, lse


def attention_backward(do, q, k, v, o, lse, scale):
    """(dq, dk, dv), each contiguous (B, L, NH, D) in q's dtype."""
    b, lq, nh, d = q.shape
    lk = k.shape[1]
    do = do.contiguous()
    delta = (do.to(lse.dtype) * o.to(lse.dtype)).sum(-1).transpose(1, 2).contiguous()  # (B, NH, Lq)
    dq = torch.empty(b, lq, nh, d, dtype=q.dtype, device=q.device)
    dk = torch.empty(b, lk, nh, d, dtype=q.dtype, device=q.device)
    dv = torch.empty_like(dk)
    prec = dot_precision(q.dtype, "matmul")
    common = (*_strides(q), *_strides(k), *_strides(v), lq, lk, nh, scale * LOG2E, scale)
    size, key = row_bytes(q.dtype, d), _tune_key(q, k, prec)

    def run_dq(config):
        grid = query_tile_grid(b * nh, lq, config.meta["BLOCK_M"])
        _attn_bwd_dq_kernel[grid](q, k, v, do, lse, delta, dq, *common, PREC=prec, D=d, **config.kwargs())

    def run_dkv(config):
        grid = query_tile_grid(b * nh, lk, config.meta["BLOCK_N"])  # tiles of keys
        _attn_bwd_dkv_kernel[grid](q, k, v, do, lse, delta, dk, dv, *common, PREC=prec, D=d, **config.kwargs())

    DQ_CONFIGS.launch(size, key, run_dq)
    DKV_CONFIGS.launch(size, key, run_dkv)
    return dq, dk, dv


def kv_pool_forward(x, sizes):
    """x (B, H, W, C) contiguous -> (B, sum_s ceil(H/s) ceil(W/s), C)."""
    b, h, w, c = x.shape
    counts = [triton.cdiv(h, s) * triton.cdiv(w, s) for s in sizes]
    out = torch.empty(b, sum(counts), c, dtype=x.dtype, device=x.device)

    def run(config):
        t0 = 0
        for s, n in zip(sizes, counts):
            grid = kv_pool_forward_grid(b, n, c, config.meta["BLOCK_T"], config.meta["BLOCK_C"])
            _kv_pool_fwd_kernel[grid](x, out, h, w, c, out.shape[1], t0, S=s, **config.kwargs())
            t0 += n

    POOL_FWD_CONFIGS.launch((size_bucket(b), size_bucket(h), size_bucket(w), c, tuple(sizes), x.dtype), run)
    return out


def kv_pool_backward(g, x_shape, sizes):
    b, h, w, c = x_shape
    dx = torch.empty(x_shape, dtype=g.dtype, device=g.device)
    padded = list(sizes) + [0] * (3 - len(sizes))

    def run(config):
        grid = kv_pool_backward_grid(x_shape, config.meta["BLOCK_W"], config.meta["BLOCK_C"])
        _kv_pool_bwd_kernel[grid](g, dx, h, w, c, g.shape[1], S0=padded[0], S1=padded[1], S2=padded[2],
                                  **config.kwargs())

    POOL_BWD_CONFIGS.launch((size_bucket(b), size_bucket(h), size_bucket(w), c, tuple(sizes), g.dtype), run)
    return dx


# ------------------------------------------------------------------------------------------ AOT entries
# ":16": aligned tensors, and sequence lengths / strides divisible by 16 as at the model's shape (4096
# queries, 1024 + 256 pooled keys, token strides 128 and 256 from the q and fused kv projections).
_STRIDES = {n: "i32:16" for n in ("sqb", "sql", "sqh", "skb", "skl", "skh", "svb", "svl", "svh")}


def _attention_entries(torch_dtype, d, cout):
    ptr, acc = f"*{AOT_DTYPES[torch_dtype]}:16", "*fp32:16"
    const = {"PREC": "tf32", "D": d}  # fp32 as TF32: the tensor-core variant (allow_tf32); 16-bit ignore it
    tail = {"Lq": "i32:16", "Lk": "i32:16", "NH": "i32", "qk_scale": "fp32"}
    constexprs = {k: "constexpr" for k in ("PREC", "D", "BLOCK_M", "BLOCK_N")}
    fwd = {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "o_ptr": ptr, "lse_ptr": acc, **_STRIDES, **tail,
           "STORE_LSE": "constexpr", **constexprs}
    proj = {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "wp_ptr": ptr, "bp_ptr": acc, "res_ptr": ptr, "o_ptr": ptr,
            "lse_ptr": acc, "y_ptr": ptr, **_STRIDES, **tail, "COUT": "i32:16",
            **{k: "constexpr" for k in ("HAS_RES", "STORE_STATE", "BLOCK_C")}, **constexprs}
    dq = {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "do_ptr": ptr, "lse_ptr": acc, "delta_ptr": acc, "dq_ptr": ptr,
          **_STRIDES, **tail, "scale": "fp32", **constexprs}
    dkv = {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "do_ptr": ptr, "lse_ptr": acc, "delta_ptr": acc,
           "dk_ptr": ptr, "dv_ptr": ptr, **_STRIDES, **tail, "scale": "fp32", **constexprs}
    head, block_c = row_bytes(torch_dtype, d), max(16, triton.next_power_of_2(cout))
    projected = [e for configs, store in ((PROJ_CONFIGS, True), (PROJ_INFERENCE_CONFIGS, False))
                 for e in configs.family(row_bytes(torch_dtype, block_c)).aot_entries(
                     _attn_fwd_proj_kernel, proj, {**const, "HAS_RES": True, "STORE_STATE": store, "BLOCK_C": block_c})]
    per_head = [e for configs, store in ((FWD_CONFIGS, True), (FWD_INFERENCE_CONFIGS, False))
                for e in configs.family(head).aot_entries(_attn_fwd_kernel, fwd, {**const, "STORE_LSE": store})]
    return (per_head + projected
            + DQ_CONFIGS.family(head).aot_entries(_attn_bwd_dq_kernel, dq, const)
            + DKV_CONFIGS.family(head).aot_entries(_attn_bwd_dkv_kernel, dkv, const))


def _pool_entries(torch_dtype):
    ptr = f"*{AOT_DTYPES[torch_dtype]}:16"
    dims = {"H": "i32:16", "W": "i32:16", "C": "i32:16", "L": "i32:16"}
    fwd = {"x_ptr": ptr, "out_ptr": ptr, **dims, "T0": "i32:16", "S": "constexpr", "BLOCK_T": "constexpr",
           "BLOCK_C": "constexpr"}
    bwd = {"g_ptr": ptr, "dx_ptr": ptr, **dims, "S0": "constexpr", "S1": "constexpr", "S2": "constexpr",
           "BLOCK_W": "constexpr", "BLOCK_C": "constexpr"}
    return ([e for s in (2, 4) for e in POOL_FWD_CONFIGS.aot_entries(_kv_pool_fwd_kernel, fwd, {"S": s})]
            + POOL_BWD_CONFIGS.aot_entries(_kv_pool_bwd_kernel, bwd, {"S0": 2, "S1": 4, "S2": 0}))


# For the sm_90a AOT check in CI: every configuration a GPU can pick at LiteViT's attention stage (4 heads
# of 32, C = 128, K/V pooled 2x2 and 4x4), fp32 as TF32.
AOT_KERNELS = [e for dt in (torch.float16, torch.bfloat16, torch.float32)
               for e in _attention_entries(dt, 32, 128) + _pool_entries(dt)]
