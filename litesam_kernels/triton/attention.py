"""Pooled-KV attention in Triton: multi-scale average pooling of channels-last tokens (the K/V sources) and
flash-style multi-head attention over token-major (B, L, heads, D) tensors.

Attention forward: one program per (BLOCK_M queries, batch x head); K/V blocks streamed with an online
softmax in float32 (exp2 domain), so the Lq x Lk score matrix never exists in memory; writes O and the
row log-sum-exp (log2 units, private to the backward). Backward (FlashAttention-2 style, recompute):
delta = rowsum(dO * O) by the launcher, then one kernel for dQ (per query block) and one for dK/dV (per key
block), each recomputing P from Q, K and the saved log-sum-exp.
Pooling: forward one launch per scale (window sum / count of cells inside the image, ceil mode); backward
one pass over pixels that gathers each scale's token gradient / count.
"""
import torch
import triton
import triton.language as tl

BLOCK_M = 64
BLOCK_N = 64
POOL_BLOCK_T = 32
POOL_BLOCK_W = 32
LOG2E = 1.4426950408889634


@triton.jit
def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, sqb, sql, sqh, skb, skl, skh, svb, svl, svh,
                     Lq, Lk, NH, qk_scale, PREC: tl.constexpr, D: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    ACC = lse_ptr.dtype.element_ty
    DT = q_ptr.dtype.element_ty
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // NH
    hd = bh % NH
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    m_ok = offs_m < Lq
    q_base = q_ptr + b.to(tl.int64) * sqb + hd * sqh
    k_base = k_ptr + b.to(tl.int64) * skb + hd * skh
    v_base = v_ptr + b.to(tl.int64) * svb + hd * svh
    q = tl.load(q_base + offs_m[:, None] * sql + offs_d[None, :], mask=m_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    l_i = tl.zeros([BLOCK_M], dtype=ACC)
    acc = tl.zeros([BLOCK_M, D], dtype=ACC)
    for n0 in range(0, Lk, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < Lk
        k = tl.load(k_base + offs_n[:, None] * skl + offs_d[None, :], mask=n_ok[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * svl + offs_d[None, :], mask=n_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC, out_dtype=ACC) * qk_scale
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(DT), v, input_precision=PREC, out_dtype=ACC)
        m_i = m_new
    o = acc / l_i[:, None]
    o_offs = ((b.to(tl.int64) * Lq + offs_m) * NH + hd)[:, None] * D + offs_d[None, :]
    tl.store(o_ptr + o_offs, o.to(o_ptr.dtype.element_ty), mask=m_ok[:, None])
    tl.store(lse_ptr + bh.to(tl.int64) * Lq + offs_m, m_i + tl.log2(l_i), mask=m_ok)


@triton.jit
def _attn_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, sqb, sql, sqh, skb, skl, skh,
                        svb, svl, svh, Lq, Lk, NH, qk_scale, scale, PREC: tl.constexpr, D: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    ACC = lse_ptr.dtype.element_ty
    DT = q_ptr.dtype.element_ty
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // NH
    hd = bh % NH
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    m_ok = offs_m < Lq
    q = tl.load(q_ptr + b.to(tl.int64) * sqb + hd * sqh + offs_m[:, None] * sql + offs_d[None, :],
                mask=m_ok[:, None], other=0.0)
    tok = ((b.to(tl.int64) * Lq + offs_m) * NH + hd)[:, None] * D + offs_d[None, :]
    do = tl.load(do_ptr + tok, mask=m_ok[:, None], other=0.0)
    lse = tl.load(lse_ptr + bh.to(tl.int64) * Lq + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(delta_ptr + bh.to(tl.int64) * Lq + offs_m, mask=m_ok, other=0.0)
    k_base = k_ptr + b.to(tl.int64) * skb + hd * skh
    v_base = v_ptr + b.to(tl.int64) * svb + hd * svh
    dq = tl.zeros([BLOCK_M, D], dtype=ACC)
    for n0 in range(0, Lk, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < Lk
        k = tl.load(k_base + offs_n[:, None] * skl + offs_d[None, :], mask=n_ok[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * svl + offs_d[None, :], mask=n_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC, out_dtype=ACC) * qk_scale
        p = tl.where(n_ok[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC, out_dtype=ACC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(DT), k, input_precision=PREC, out_dtype=ACC)
    tl.store(dq_ptr + tok, (dq * scale).to(dq_ptr.dtype.element_ty), mask=m_ok[:, None])


@triton.jit
def _attn_bwd_dkv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, sqb, sql, sqh,
                         skb, skl, skh, svb, svl, svh, Lq, Lk, NH, qk_scale, scale, PREC: tl.constexpr,
                         D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    ACC = lse_ptr.dtype.element_ty
    DT = q_ptr.dtype.element_ty
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // NH
    hd = bh % NH
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    n_ok = offs_n < Lk
    k = tl.load(k_ptr + b.to(tl.int64) * skb + hd * skh + offs_n[:, None] * skl + offs_d[None, :],
                mask=n_ok[:, None], other=0.0)
    v = tl.load(v_ptr + b.to(tl.int64) * svb + hd * svh + offs_n[:, None] * svl + offs_d[None, :],
                mask=n_ok[:, None], other=0.0)
    q_base = q_ptr + b.to(tl.int64) * sqb + hd * sqh
    dk = tl.zeros([BLOCK_N, D], dtype=ACC)
    dv = tl.zeros([BLOCK_N, D], dtype=ACC)
    for m0 in range(0, Lq, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < Lq
        q = tl.load(q_base + offs_m[:, None] * sql + offs_d[None, :], mask=m_ok[:, None], other=0.0)
        tok = ((b.to(tl.int64) * Lq + offs_m) * NH + hd)[:, None] * D + offs_d[None, :]
        do = tl.load(do_ptr + tok, mask=m_ok[:, None], other=0.0)
        lse = tl.load(lse_ptr + bh.to(tl.int64) * Lq + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(delta_ptr + bh.to(tl.int64) * Lq + offs_m, mask=m_ok, other=0.0)
        st = tl.dot(k, tl.trans(q), input_precision=PREC, out_dtype=ACC) * qk_scale
        pt = tl.where(m_ok[None, :], tl.exp2(st - lse[None, :]), 0.0)
        dv += tl.dot(pt.to(DT), do, input_precision=PREC, out_dtype=ACC)
        dpt = tl.dot(v, tl.trans(do), input_precision=PREC, out_dtype=ACC)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(DT), q, input_precision=PREC, out_dtype=ACC)
    out = ((b.to(tl.int64) * Lk + offs_n) * NH + hd)[:, None] * D + offs_d[None, :]
    tl.store(dk_ptr + out, (dk * scale).to(dk_ptr.dtype.element_ty), mask=n_ok[:, None])
    tl.store(dv_ptr + out, dv.to(dv_ptr.dtype.element_ty), mask=n_ok[:, None])


@triton.jit
def _kv_pool_fwd_kernel(x_ptr, out_ptr, H, W, C, L, T0, S: tl.constexpr, BLOCK_T: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    b = tl.program_id(1)
    wo = (W + S - 1) // S
    ho = (H + S - 1) // S
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
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
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    ws = tl.program_id(0) * BLOCK_W + tl.arange(0, BLOCK_W)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
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


def _prec(dtype):
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2)


def attention_forward(q, k, v, scale):
    """q (B, Lq, NH, D), k/v (B, Lk, NH, D), last dim contiguous -> (o contiguous, lse2 (B, NH, Lq))."""
    b, lq, nh, d = q.shape
    lk = k.shape[1]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    o = torch.empty(b, lq, nh, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, nh, lq, dtype=acc, device=q.device)
    _attn_fwd_kernel[(triton.cdiv(lq, BLOCK_M), b * nh)](
        q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), lq, lk, nh, scale * LOG2E,
        PREC=_prec(q.dtype), D=d, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=4)
    return o, lse


def attention_backward(do, q, k, v, o, lse, scale):
    """(dq, dk, dv), each contiguous (B, L, NH, D) in q's dtype."""
    b, lq, nh, d = q.shape
    lk = k.shape[1]
    do = do.contiguous()
    delta = (do.to(lse.dtype) * o.to(lse.dtype)).sum(-1).transpose(1, 2).contiguous()  # (B, NH, Lq)
    dq = torch.empty(b, lq, nh, d, dtype=q.dtype, device=q.device)
    dk = torch.empty(b, lk, nh, d, dtype=q.dtype, device=q.device)
    dv = torch.empty_like(dk)
    common = (*_strides(q), *_strides(k), *_strides(v), lq, lk, nh, scale * LOG2E, scale)
    meta = dict(PREC=_prec(q.dtype), D=d, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=4)
    _attn_bwd_dq_kernel[(triton.cdiv(lq, BLOCK_M), b * nh)](q, k, v, do, lse, delta, dq, *common, **meta)
    _attn_bwd_dkv_kernel[(triton.cdiv(lk, BLOCK_N), b * nh)](q, k, v, do, lse, delta, dk, dv, *common, **meta)
    return dq, dk, dv


def _pool_block_c(c):
    return min(64, max(16, triton.next_power_of_2(c)))


def kv_pool_forward(x, sizes):
    """x (B, H, W, C) contiguous -> (B, sum_s ceil(H/s) ceil(W/s), C)."""
    b, h, w, c = x.shape
    counts = [triton.cdiv(h, s) * triton.cdiv(w, s) for s in sizes]
    out = torch.empty(b, sum(counts), c, dtype=x.dtype, device=x.device)
    block_c = _pool_block_c(c)
    t0 = 0
    for s, n in zip(sizes, counts):
        _kv_pool_fwd_kernel[(triton.cdiv(n, POOL_BLOCK_T), b, triton.cdiv(c, block_c))](
            x, out, h, w, c, out.shape[1], t0, S=s, BLOCK_T=POOL_BLOCK_T, BLOCK_C=block_c, num_warps=4)
        t0 += n
    return out


def kv_pool_backward(g, x_shape, sizes):
    b, h, w, c = x_shape
    dx = torch.empty(x_shape, dtype=g.dtype, device=g.device)
    padded = list(sizes) + [0] * (3 - len(sizes))
    block_c = _pool_block_c(c)
    _kv_pool_bwd_kernel[(triton.cdiv(w, POOL_BLOCK_W), b * h, triton.cdiv(c, block_c))](
        g, dx, h, w, c, g.shape[1], S0=padded[0], S1=padded[1], S2=padded[2], BLOCK_W=POOL_BLOCK_W,
        BLOCK_C=block_c, num_warps=4)
    return dx


def _aot_attention(dtype):
    strides = {n: "i32" for n in ("sqb", "sql", "sqh", "skb", "skl", "skh", "svb", "svl", "svh")}
    const = {"PREC": _prec({"fp32": torch.float32}.get(dtype)), "D": 32, "BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N}
    tail = {"Lq": "i32", "Lk": "i32", "NH": "i32", "qk_scale": "fp32"}
    ptr = f"*{dtype}"
    fwd = {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "o_ptr": ptr, "lse_ptr": "*fp32", **strides, **tail,
           **{k: "constexpr" for k in const}}
    dq = {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "do_ptr": ptr, "lse_ptr": "*fp32", "delta_ptr": "*fp32",
          "dq_ptr": ptr, **strides, **tail, "scale": "fp32", **{k: "constexpr" for k in const}}
    dkv = {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "do_ptr": ptr, "lse_ptr": "*fp32", "delta_ptr": "*fp32",
           "dk_ptr": ptr, "dv_ptr": ptr, **strides, **tail, "scale": "fp32", **{k: "constexpr" for k in const}}
    opts = {"num_warps": 4}
    return [(_attn_fwd_kernel, fwd, const, opts), (_attn_bwd_dq_kernel, dq, const, opts),
            (_attn_bwd_dkv_kernel, dkv, const, opts)]


def _aot_pool(dtype):
    fwd = {"x_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "H": "i32", "W": "i32", "C": "i32", "L": "i32", "T0": "i32",
           "S": "constexpr", "BLOCK_T": "constexpr", "BLOCK_C": "constexpr"}
    bwd = {"g_ptr": f"*{dtype}", "dx_ptr": f"*{dtype}", "H": "i32", "W": "i32", "C": "i32", "L": "i32",
           "S0": "constexpr", "S1": "constexpr", "S2": "constexpr", "BLOCK_W": "constexpr", "BLOCK_C": "constexpr"}
    return [(_kv_pool_fwd_kernel, fwd, {"S": s, "BLOCK_T": POOL_BLOCK_T, "BLOCK_C": 64}, {"num_warps": 4})
            for s in (2, 4)] + [
        (_kv_pool_bwd_kernel, bwd, {"S0": 2, "S1": 4, "S2": 0, "BLOCK_W": POOL_BLOCK_W, "BLOCK_C": 64},
         {"num_warps": 4})]


# For the sm_90a AOT check in CI: (kernel, signature, constexprs, options). Model: head dim 32, C 128.
AOT_KERNELS = [e for dt in ("fp16", "bf16", "fp32") for e in _aot_attention(dt) + _aot_pool(dt)]
