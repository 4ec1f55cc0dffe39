"""Pooled-KV attention of LiteViT's attention stage, channels-last, as fused ops and their composition.

- :func:`kv_pool2d`: the key/value sources, ``(B, H, W, C)`` -> ``(B, sum_s ceil(H/s) ceil(W/s), C)``:
  average pools of stride = size ``s`` (ceil mode, partial windows averaged over their cells inside the
  image), token order row-major per scale, scales concatenated (``PooledKVAttention.pooled_tokens``).
- :func:`multi_head_attention`: ``softmax(q k^T * scale) v`` per head over token-major ``(B, L, heads, D)``
  tensors (a linear layer's output viewed as heads: no transposes), flash-style: online softmax, no
  ``Lq x Lk`` matrix in memory, fp32 accumulation.
- :func:`multi_head_attention_projected`: ``[residual +] MHA(q, k, v) W_proj^T + b_proj`` with the output
  projection, its bias and the residual fused into the attention kernel's epilogue (output channels <= 256,
  head dim <= 64).
- :func:`pooled_kv_attention`: ``residual + proj(MHA(Wq t, Wkv kv_pool2d(t)))``: LiteViT's
  ``x + PooledKVAttention(LN(x))`` given ``t = LN(x)``; its composition, :func:`compose_pooled_kv_attention`,
  also runs the prepared encoder's op tables (one copy: the prepared path computes what the op computes).

The kernels write the backward's state (the log-sum-exp; with the fused projection also the attention
output) only when a gradient can need it (grad mode on and an input requiring grad:
``litesam::multi_head_attention``, ``litesam::multi_head_attention_projected``); otherwise
``litesam::multi_head_attention_inference`` / ``litesam::multi_head_attention_projected_inference`` run the
variants without it (the projected one: a quarter less traffic).

Pooling happens before the K/V projection, not inside the attention kernel's K/V load: average pooling
commutes with the affine projection, and projecting the pooled tokens (HW/4 + HW/16 of them) costs 3.2x
fewer FLOPs and bytes than projecting all HW tokens and pooling K/V on the fly.

Precision: 16-bit operands with float32 accumulation (float64 for float64); float32 operands use TF32
tensor cores only when ``torch.backends.cuda.matmul.allow_tf32`` allows it, as eager matmuls do (about
1e-3 relative error per product; ``LITESAM_FP32_DOT`` overrides). Op bodies run outside autocast.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from litesam_kernels import _backend
from litesam_kernels._checks import check_gradient, check_real, check_same_device, check_tensor
from litesam_kernels.ops._autocast import autocast_off
from litesam_kernels.ops._dense import DTYPES, acc_dtype, check_like, check_nhwc, check_vector

_ATTENTION = _backend.register(_backend.OpImplementations("multi_head_attention", has_triton=True))
_KV_POOL = _backend.register(_backend.OpImplementations("kv_pool2d", has_triton=True))
HEAD_DIMS = (16, 32, 64, 128)
MAX_POOL = 8
MAX_PROJECTED_CHANNELS = 256  # the fused projection keeps a query tile's output channels on chip
PROJECTED_HEAD_DIMS = (16, 32, 64)  # and a head's state beside them (D = 128 would spill registers)


# ------------------------------------------------------------------------------------------ public API
def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None) -> torch.Tensor:
    """Multi-head softmax attention on token-major tensors (no mask, no dropout).

    Args:
        q: ``(B, Lq, heads, D)``; k, v: ``(B, Lk, heads, D)``; one dtype among float16/bfloat16/float32/
            float64, one device; D in (16, 32, 64, 128); Lk >= 1. Any strides (the last dim is made
            contiguous if it is not): ``linear(x).view(B, L, heads, D)`` and slices of a fused KV projection
            are read in place.
        scale: the logit scale, default ``1 / sqrt(D)``; > 0.

    Returns:
        ``(B, Lq, heads, D)`` contiguous, dtype of ``q``: ``softmax(q k^T * scale, over Lk) v`` per head.
        Differentiable; the backward's state (the row log-sum-exp) is kept only when grad mode is on and an
        input requires grad.

    Raises:
        TypeError / ValueError for bad types, shapes, devices or scale.
    """
    scale = _scale(q, scale)
    _check_attention(q, k, v, scale)
    if _gradient_can_need_state(q, k, v):
        return torch.ops.litesam.multi_head_attention(q, k, v, scale)[0]
    return torch.ops.litesam.multi_head_attention_inference(q, k, v, scale)


def multi_head_attention_projected(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, wproj: torch.Tensor,
                                   bproj: torch.Tensor, residual: Optional[torch.Tensor] = None,
                                   scale: Optional[float] = None) -> torch.Tensor:
    """``[residual +] MHA(q, k, v).view(B, Lq, heads * D) @ wproj.T + bproj`` in one fused kernel.

    Args:
        q, k, v, scale: as :func:`multi_head_attention`, with D in (16, 32, 64).
        wproj: ``(C_out, heads * D)``, bproj: ``(C_out,)``, floating, on q's device, 1 <= C_out <= 256 (an
            ``nn.Linear``'s weight and bias); cast to q's dtype (bias: the accumulation dtype).
        residual: None or ``(B, Lq, C_out)`` with q's dtype, added to the output.

    Returns:
        ``(B, Lq, C_out)`` contiguous, q's dtype. The attention output is rounded to q's dtype before the
        projection, as the unfused ``linear(multi_head_attention(...))`` computes it. Differentiable; the
        backward's state is kept only when grad mode is on and an input requires grad.

    Raises:
        TypeError / ValueError for bad types, shapes, devices or scale.
    """
    scale = _scale(q, scale)
    _check_attention(q, k, v, scale)
    _check_projection(q, wproj, bproj, residual)
    if _gradient_can_need_state(q, k, v, wproj, bproj, residual):
        return torch.ops.litesam.multi_head_attention_projected(q, k, v, scale, wproj, bproj, residual)[0]
    return torch.ops.litesam.multi_head_attention_projected_inference(q, k, v, scale, wproj, bproj, residual)


def kv_pool2d(x: torch.Tensor, pool_sizes: Sequence[int] = (2, 4)) -> torch.Tensor:
    """Multi-scale average pooling of a ``(B, H, W, C)`` tensor into key/value source tokens.

    Args:
        x: ``(B, H, W, C)`` float16/bfloat16/float32/float64.
        pool_sizes: 1 to 3 window sizes in [1, 8]; window = stride, ceil mode.

    Returns:
        ``(B, sum_s ceil(H/s) * ceil(W/s), C)`` contiguous, dtype of ``x``.
    """
    sizes = _check_pool_sizes(pool_sizes)
    _check_pool_input(x)
    return torch.ops.litesam.kv_pool2d(x, sizes)


def pooled_kv_attention(x_norm: torch.Tensor, wq: torch.Tensor, bq: torch.Tensor, wkv: torch.Tensor,
                        bkv: torch.Tensor, wproj: torch.Tensor, bproj: torch.Tensor, num_heads: int,
                        kv_pool_sizes: Sequence[int] = (2, 4), residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[residual +] proj(MHA(q = Wq t, k|v = Wkv kv_pool2d(t)))`` for ``t = x_norm`` of shape (B, H, W, C).

    Weights as in ``nn.Linear`` (``wq (C, C)``, ``wkv (2C, C)`` with K rows first, ``wproj (C, C)``), any
    floating dtype: the projections run in x_norm's dtype (float32 master weights with half activations
    work). The q and kv projections are cuBLAS GEMMs on channels-last tokens; pooling is one fused op, and
    attention + output projection + bias + residual another (C <= 256 and head dim <= 64; otherwise
    attention, then a GEMM). An empty batch gives an empty output.
    """
    _check_pooled_kv_attention(x_norm, wq, bq, wkv, bkv, wproj, bproj, num_heads, kv_pool_sizes, residual)
    wq, bq, wkv, bkv, wproj, bproj = (t.to(x_norm.dtype) for t in (wq, bq, wkv, bkv, wproj, bproj))

    def attention_projected(q, k, v, scale, res):
        return multi_head_attention_projected(q, k, v, wproj, bproj, res, scale)

    return compose_pooled_kv_attention(x_norm, wq, bq, wkv, bkv, wproj, bproj, num_heads, kv_pool_sizes, residual,
                                       kv_pool=kv_pool2d, attention=multi_head_attention,
                                       attention_projected=attention_projected)


def compose_pooled_kv_attention(x_norm, wq, bq, wkv, bkv, wproj, bproj, num_heads, pool_sizes, residual, *,
                                kv_pool, attention, attention_projected):
    """:func:`pooled_kv_attention` on given kernels, for inputs already checked: the public op runs it on the
    custom ops, the prepared encoder's op tables on the Triton launchers or the references.

    x_norm ``(B, H, W, C)``; the weights in x_norm's dtype (``wproj``, ``bproj``: for the GEMM after an unfused
    attention); residual ``(B, H, W, C)`` or None. The kernels: ``kv_pool(x, pool_sizes) -> (B, L, C)``,
    ``attention(q, k, v, scale) -> (B, Lq, heads, D)`` and ``attention_projected(q, k, v, scale, residual)
    -> (B, Lq, C)``, the fused ``[residual +] proj(attention)`` with the output projection as the caller
    prepared it (residual ``(B, Lq, C)`` or None). The projection is fused where the kernel allows it.
    """
    b, h, w, c = x_norm.shape
    d = c // num_heads
    scale = 1.0 / math.sqrt(d)
    queries = F.linear(x_norm, wq, bq).view(b, h * w, num_heads, d)
    sources = kv_pool(x_norm, pool_sizes)
    # the pooled length spelled out: view(b, -1, ...) cannot infer it when b == 0
    keys_values = F.linear(sources, wkv, bkv).view(b, sources.shape[1], 2, num_heads, d)
    keys, values = keys_values[:, :, 0], keys_values[:, :, 1]
    if c <= MAX_PROJECTED_CHANNELS and d in PROJECTED_HEAD_DIMS:
        res = None if residual is None else residual.reshape(b, h * w, c)
        return attention_projected(queries, keys, values, scale, res).view(b, h, w, c)
    out = attention(queries, keys, values, scale).view(b, h, w, c)
    if residual is None:
        return F.linear(out, wproj, bproj)
    return torch.addmm(bproj, out.view(-1, c), wproj.t()).view(b, h, w, c) + residual


def _gradient_can_need_state(*inputs) -> bool:
    """Whether autograd can call the backward: grad mode on and an input (None allowed) requiring grad. Only
    then do the ops keep the backward's state; otherwise their inference variants run."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)


# ------------------------------------------------------------------------------------------ validation
def _scale(q, scale) -> float:
    if scale is None:
        if not isinstance(q, torch.Tensor) or q.dim() != 4:
            check_tensor("q", q, dim=4, expected="(B, Lq, heads, D)")
        return 1.0 / math.sqrt(q.shape[-1])
    return check_real("scale", scale, low=1e-30)


def _check_pooled_kv_attention(x_norm, wq, bq, wkv, bkv, wproj, bproj, num_heads, kv_pool_sizes, residual) -> None:
    check_nhwc("x_norm", x_norm)
    c = x_norm.shape[3]
    if isinstance(num_heads, bool) or not isinstance(num_heads, int):
        raise TypeError(f"num_heads must be an int, got {type(num_heads).__name__}")
    if num_heads < 1 or c % num_heads:
        raise ValueError(f"num_heads must divide the {c} channels of x_norm, got {num_heads}")
    for name, weight, rows in (("wq", wq, c), ("wkv", wkv, 2 * c), ("wproj", wproj, c)):
        check_tensor(name, weight, dim=2, floating=True, expected=f"({rows}, {c})")
        if tuple(weight.shape) != (rows, c):
            raise ValueError(f"{name} must have shape ({rows}, {c}) for the {c} channels of x_norm, "
                             f"got {tuple(weight.shape)}")
        check_same_device("x_norm", x_norm, **{name: weight})
    for name, bias, rows in (("bq", bq, c), ("bkv", bkv, 2 * c), ("bproj", bproj, c)):
        check_vector(name, bias, rows, "x_norm" if rows == c else "wkv", x_norm)
    try:
        _check_pool_sizes(kv_pool_sizes)
    except ValueError as exc:
        raise ValueError(f"kv_pool_sizes: {exc}") from None
    if residual is not None:
        check_like("residual", residual, "x_norm", x_norm)


def _check_attention(q, k, v, scale) -> None:
    check_tensor("q", q, dim=4, dtypes=DTYPES, expected="(B, Lq, heads, D)")
    b, _, nh, d = q.shape
    if d not in HEAD_DIMS:
        raise ValueError(f"q must have a head dim in {HEAD_DIMS}, got {d}")
    for name, t in (("k", k), ("v", v)):
        check_tensor(name, t, dim=4, expected="(B, Lk, heads, D)")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
    if k.shape != v.shape or k.shape[0] != b or k.shape[2:] != (nh, d) or k.shape[1] < 1:
        raise ValueError(f"k and v must both have shape (B={b}, Lk>=1, heads={nh}, D={d}), "
                         f"got {tuple(k.shape)} and {tuple(v.shape)}")
    check_same_device("q", q, k=k, v=v)
    check_real("scale", scale, low=1e-30)


def _check_projection(q, wproj, bproj, residual) -> None:
    b, lq, nh, d = q.shape
    if d not in PROJECTED_HEAD_DIMS:
        raise ValueError(f"q must have a head dim in {PROJECTED_HEAD_DIMS} for the fused projection, got {d} "
                         "(use multi_head_attention and a linear layer)")
    check_tensor("wproj", wproj, dim=2, floating=True, expected="(C_out, heads * D)")
    cout = wproj.shape[0]
    if wproj.shape[1] != nh * d or not 1 <= cout <= MAX_PROJECTED_CHANNELS:
        raise ValueError(f"wproj must have shape (C_out <= {MAX_PROJECTED_CHANNELS}, heads * D = {nh * d}), "
                         f"got {tuple(wproj.shape)}")
    check_same_device("q", q, wproj=wproj)
    check_vector("bproj", bproj, cout, "wproj", wproj)
    if residual is not None:
        check_like("residual", residual, "the output", q.new_empty((b, lq, cout)))


def _check_pool_input(x) -> None:
    check_nhwc("x", x)
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"x must have H >= 1 and W >= 1 (every pool needs a cell), got shape {tuple(x.shape)}")


def _check_pool_sizes(pool_sizes) -> List[int]:
    sizes = list(pool_sizes) if isinstance(pool_sizes, (list, tuple)) else None
    if (not sizes or len(sizes) > 3 or any(isinstance(s, bool) or not isinstance(s, int) for s in sizes)
            or any(not 1 <= s <= MAX_POOL for s in sizes)):
        raise ValueError(f"pool_sizes must be 1 to 3 integers in [1, {MAX_POOL}], got {pool_sizes!r}")
    return sizes


# ------------------------------------------------------------------------------------------ references
def _attention_reference(q, k, v, scale):
    """Full-matrix softmax attention in the accumulation dtype: (out, logsumexp (B, heads, Lq))."""
    acc = acc_dtype(q.dtype)
    qf, kf, vf = (t.to(acc).transpose(1, 2) for t in (q, k, v))
    logits = qf @ kf.transpose(-1, -2) * scale
    lse = torch.logsumexp(logits, -1)
    out = torch.exp(logits - lse[..., None]) @ vf
    return out.transpose(1, 2).to(q.dtype).contiguous(), lse


def _attention_backward_reference(grad, q, k, v, scale):
    acc = acc_dtype(q.dtype)
    qf, kf, vf, g = (t.to(acc).transpose(1, 2) for t in (q, k, v, grad))
    p = torch.softmax(qf @ kf.transpose(-1, -2) * scale, -1)
    dv = p.transpose(-1, -2) @ g
    dp = g @ vf.transpose(-1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq, dk = ds @ kf * scale, ds.transpose(-1, -2) @ qf * scale
    return [t.transpose(1, 2).to(q.dtype).contiguous() for t in (dq, dk, dv)]


def _attention_projected_reference(q, k, v, scale, wproj, bproj, residual):
    """[y, out, logsumexp]: y = [residual +] out W^T + b in the accumulation dtype, rounded to q's dtype."""
    acc = acc_dtype(q.dtype)
    out, lse = _attention_reference(q, k, v, scale)
    y = F.linear(out.to(acc).flatten(2), wproj.to(acc), bproj.to(acc))
    if residual is not None:
        y = y + residual.to(acc)
    return [y.to(q.dtype).contiguous(), out, lse]


def _kv_pool_reference(x, sizes):
    acc = acc_dtype(x.dtype)
    nchw = x.to(acc).permute(0, 3, 1, 2)
    pools = [F.avg_pool2d(nchw, s, s, ceil_mode=True).flatten(2) for s in sizes]
    return torch.cat(pools, 2).transpose(1, 2).to(x.dtype).contiguous()


def _kv_pool_backward_reference(grad, x, sizes):
    acc = acc_dtype(x.dtype)
    b, h, w, c = x.shape
    dx = torch.zeros(b, c, h, w, dtype=acc, device=x.device)
    ones = torch.ones(1, 1, h, w, dtype=acc, device=x.device)
    t0 = 0
    for s in sizes:
        ho, wo = -(-h // s), -(-w // s)
        count = F.avg_pool2d(ones, s, s, ceil_mode=True, divisor_override=1)
        g = grad[:, t0:t0 + ho * wo].to(acc).transpose(1, 2).reshape(b, c, ho, wo) / count
        dx += g.repeat_interleave(s, 2).repeat_interleave(s, 3)[:, :, :h, :w]
        t0 += ho * wo
    return dx.permute(0, 2, 3, 1).to(x.dtype).contiguous()


# ------------------------------------------------------------------------------------------ custom ops
def _last_dim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _use_triton(q) -> bool:
    return q.numel() > 0 and _backend.choose(_ATTENTION, q.device) == "triton"


def _attention_forward(q, k, v, scale, store_lse: bool) -> List[torch.Tensor]:
    """The per-head ops' body: [out, logsumexp], or [out] without the backward's state."""
    _check_attention(q, k, v, scale)
    with autocast_off(q.device):
        if _use_triton(q):
            from litesam_kernels.triton.attention import attention_forward

            out, lse = attention_forward(*(_last_dim_contiguous(t) for t in (q, k, v)), scale, store_lse)
        else:
            out, lse = _attention_reference(q, k, v, scale)
    return [out, lse] if store_lse else [out]


@torch.library.custom_op("litesam::multi_head_attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> List[torch.Tensor]:
    """Returns [out, logsumexp]: the second is the backward's private state (log2 units on Triton)."""
    return _attention_forward(q, k, v, scale, store_lse=True)


@_attention_op.register_fake
def _attention_fake(q, k, v, scale):
    _check_attention(q, k, v, scale)
    b, lq, nh, _ = q.shape
    return [torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty((b, nh, lq), dtype=acc_dtype(q.dtype))]


@torch.library.custom_op("litesam::multi_head_attention_inference", mutates_args=())
def _attention_inference_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """out alone: the kernel variant that does not write the log-sum-exp. Not differentiable (backward
    raises); :func:`multi_head_attention` takes it when no gradient can be needed."""
    return _attention_forward(q, k, v, scale, store_lse=False)[0]


@_attention_inference_op.register_fake
def _attention_inference_fake(q, k, v, scale):
    return _attention_fake(q, k, v, scale)[0]


def _check_attention_backward(grad, q, k, v, out, lse, scale) -> None:
    _check_attention(q, k, v, scale)
    check_gradient(grad, "the attention output", q.shape, q.dtype, q.device)
    check_like("out", out, "q", q)
    b, lq, nh, _ = q.shape
    check_tensor("lse", lse, dim=3, floating=True, expected="(B, heads, Lq) logsumexp")
    if tuple(lse.shape) != (b, nh, lq):
        raise ValueError(f"lse must have shape {(b, nh, lq)} (the forward's logsumexp), got {tuple(lse.shape)}")
    check_same_device("q", q, lse=lse)


@torch.library.custom_op("litesam::multi_head_attention_backward", mutates_args=())
def _attention_backward_op(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                           lse: torch.Tensor, scale: float) -> List[torch.Tensor]:
    _check_attention_backward(grad, q, k, v, out, lse, scale)
    with autocast_off(q.device):
        if _use_triton(q):
            from litesam_kernels.triton.attention import attention_backward

            q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
            return list(attention_backward(grad, q, k, v, out, lse, scale))
        return _attention_backward_reference(grad, q, k, v, scale)


@_attention_backward_op.register_fake
def _attention_backward_fake(grad, q, k, v, out, lse, scale):
    _check_attention_backward(grad, q, k, v, out, lse, scale)
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v)]


def _attention_setup(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale


def _attention_backward(ctx, grads):
    q, k, v, out, lse = ctx.saved_tensors
    grad_out = grads[0]  # the logsumexp output is private state: its gradient is ignored
    if grad_out is None:
        return None, None, None, None
    dq, dk, dv = torch.ops.litesam.multi_head_attention_backward(grad_out, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


_attention_op.register_autograd(_attention_backward, setup_context=_attention_setup)


def _projected_forward(q, k, v, scale, wproj, bproj, residual, store_state: bool) -> List[torch.Tensor]:
    """The projected ops' body: [y, out, logsumexp], or [y] without the backward's state."""
    _check_attention(q, k, v, scale)
    _check_projection(q, wproj, bproj, residual)
    with autocast_off(q.device):
        if _use_triton(q):
            from litesam_kernels.triton.attention import attention_projected_forward

            res = None if residual is None else residual.contiguous()
            y, out, lse = attention_projected_forward(*(_last_dim_contiguous(t) for t in (q, k, v)), scale,
                                                      wproj.to(q.dtype).contiguous(),
                                                      bproj.to(acc_dtype(q.dtype)).contiguous(), res, store_state)
        else:
            y, out, lse = _attention_projected_reference(q, k, v, scale, wproj, bproj, residual)
    return [y, out, lse] if store_state else [y]


@torch.library.custom_op("litesam::multi_head_attention_projected", mutates_args=())
def _projected_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, wproj: torch.Tensor,
                  bproj: torch.Tensor, residual: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """Returns [y, out, logsumexp]: out (the attention output) and logsumexp are the backward's state."""
    return _projected_forward(q, k, v, scale, wproj, bproj, residual, store_state=True)


@_projected_op.register_fake
def _projected_fake(q, k, v, scale, wproj, bproj, residual):
    _check_attention(q, k, v, scale)
    _check_projection(q, wproj, bproj, residual)
    b, lq, nh, _ = q.shape
    return [q.new_empty((b, lq, wproj.shape[0])), torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty((b, nh, lq), dtype=acc_dtype(q.dtype))]


@torch.library.custom_op("litesam::multi_head_attention_projected_inference", mutates_args=())
def _projected_inference_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, wproj: torch.Tensor,
                            bproj: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
    """y alone: the kernel variant that does not write the backward's state. Not differentiable (backward
    raises); :func:`multi_head_attention_projected` takes it when no gradient can be needed."""
    return _projected_forward(q, k, v, scale, wproj, bproj, residual, store_state=False)[0]


@_projected_inference_op.register_fake
def _projected_inference_fake(q, k, v, scale, wproj, bproj, residual):
    return _projected_fake(q, k, v, scale, wproj, bproj, residual)[0]


def _projected_setup(ctx, inputs, output):
    q, k, v, scale, wproj, bproj, residual = inputs
    _, out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, wproj, bproj)
    ctx.scale = scale
    ctx.has_residual = residual is not None


def _projected_backward(ctx, grads):
    """dY -> dO = dY W (then the attention backward), dW = dY^T O, db = sum dY, dresidual = dY. The GEMMs run
    in q's dtype (cuBLAS accumulates in float32), as eager half-precision linear layers do."""
    q, k, v, out, lse, wproj, bproj = ctx.saved_tensors
    grad_y = grads[0]  # out and logsumexp are private state: their gradients are ignored
    if grad_y is None:
        return None, None, None, None, None, None, None
    g2d = grad_y.reshape(-1, wproj.shape[0]).to(q.dtype)
    grad_o = (g2d @ wproj.to(q.dtype)).view(q.shape)
    grad_wproj = (g2d.t() @ out.reshape(-1, wproj.shape[1])).to(wproj.dtype)
    grad_bproj = g2d.sum(0, dtype=acc_dtype(q.dtype)).to(bproj.dtype)
    dq, dk, dv = torch.ops.litesam.multi_head_attention_backward(grad_o, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None, grad_wproj, grad_bproj, grad_y if ctx.has_residual else None


_projected_op.register_autograd(_projected_backward, setup_context=_projected_setup)


@torch.library.custom_op("litesam::kv_pool2d", mutates_args=())
def _kv_pool_op(x: torch.Tensor, pool_sizes: List[int]) -> torch.Tensor:
    _check_pool_input(x)
    _check_pool_sizes(pool_sizes)
    with autocast_off(x.device):
        if x.numel() and _backend.choose(_KV_POOL, x.device) == "triton":
            from litesam_kernels.triton.attention import kv_pool_forward

            return kv_pool_forward(x.contiguous(), pool_sizes)
        return _kv_pool_reference(x, pool_sizes)


def _pooled_length(h, w, sizes):
    return sum(-(-h // s) * -(-w // s) for s in sizes)


@_kv_pool_op.register_fake
def _kv_pool_fake(x, pool_sizes):
    _check_pool_input(x)
    b, h, w, c = x.shape
    return x.new_empty((b, _pooled_length(h, w, pool_sizes), c))


def _check_kv_pool_backward(grad, x, pool_sizes) -> None:
    _check_pool_input(x)
    _check_pool_sizes(pool_sizes)
    b, h, w, c = x.shape
    check_gradient(grad, "kv_pool2d's output", (b, _pooled_length(h, w, pool_sizes), c), x.dtype, x.device)


@torch.library.custom_op("litesam::kv_pool2d_backward", mutates_args=())
def _kv_pool_backward_op(grad: torch.Tensor, x: torch.Tensor, pool_sizes: List[int]) -> torch.Tensor:
    _check_kv_pool_backward(grad, x, pool_sizes)
    with autocast_off(x.device):
        if x.numel() and _backend.choose(_KV_POOL, x.device) == "triton":
            from litesam_kernels.triton.attention import kv_pool_backward

            return kv_pool_backward(grad.contiguous(), tuple(x.shape), pool_sizes)
        return _kv_pool_backward_reference(grad, x, pool_sizes)


@_kv_pool_backward_op.register_fake
def _kv_pool_backward_fake(grad, x, pool_sizes):
    _check_kv_pool_backward(grad, x, pool_sizes)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _kv_pool_setup(ctx, inputs, output):
    x, pool_sizes = inputs
    ctx.save_for_backward(x)
    ctx.pool_sizes = pool_sizes


def _kv_pool_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.litesam.kv_pool2d_backward(grad, x, ctx.pool_sizes), None


_kv_pool_op.register_autograd(_kv_pool_backward, setup_context=_kv_pool_setup)
