"""ConvMLP on channels-last tokens: ``[residual +] W2 GELU(W1 t + b1) + b2`` with ``t = x`` or ``LN(x)``
(two 1x1 convs, optionally after a LayerNorm over the channels), hidden on chip.

LiteViT's ``ConvMLP`` (ratio 4 in the pool-mixer stages, 5 in the attention stage). In a pool-mixer block
the preceding BatchNorm folds into ``W1``/``b1`` (:func:`fold_batchnorm_into_linear`) and the residual is
the input; in an attention block the LayerNorm is fused (``norm_weight``/``norm_bias``/``norm_eps``):
``conv_mlp(x, ..., residual=x, norm_weight=..., norm_bias=...)`` is ``x + MLP(LN(x))`` in one kernel.

Precision: 16-bit operands with float32 accumulation (float64 for float64); float32 operands use TF32
tensor cores when ``torch.backends.cudnn.allow_tf32`` allows it (on by default, as for the eager 1x1
convolutions this replaces; about 1e-3 relative error per product; ``LITESAM_FP32_DOT`` overrides).
Op bodies run outside autocast.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from litesam_kernels import _backend
from litesam_kernels._checks import check_gradient, check_real, check_tensor
from litesam_kernels.ops._autocast import autocast_off
from litesam_kernels.ops._dense import DTYPES, acc_dtype, check_like, check_vector, gelu_grad
from litesam_kernels.ops.layer_norm import _layer_norm_backward_reference, _layer_norm_reference

_CONV_MLP = _backend.register(_backend.OpImplementations("conv_mlp", has_triton=True))
MAX_CHANNELS = 256  # all C channels of a token block stay on chip


def conv_mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
             residual: Optional[torch.Tensor] = None, norm_weight: Optional[torch.Tensor] = None,
             norm_bias: Optional[torch.Tensor] = None, norm_eps: float = 1e-6) -> torch.Tensor:
    """Fused two-layer MLP over the last dim, optionally after a LayerNorm of that dim.

    Args:
        x: ``(..., C)`` float16/bfloat16/float32/float64, 1 <= C <= 256 (any leading dims, e.g. B, H, W).
        w1: ``(HID, C)``, b1: ``(HID,)``, w2: ``(C, HID)``, b2: ``(C,)``: floating, on the device of ``x``
            (a ``Conv2d(C, HID, 1)`` weight may be passed as ``weight[:, :, 0, 0]``). Matmul operands are
            cast to the dtype of ``x``; products accumulate in float32 (float64 for float64 input).
        residual: None or a tensor with the shape and dtype of ``x``, added to the output (``residual=x``
            reads x once).
        norm_weight, norm_bias: None, or both ``(C,)`` floating on the device of ``x``: the MLP then runs on
            ``t = LayerNorm(x) * norm_weight + norm_bias`` (biased variance over C, ``norm_eps`` > 0 added to
            it, as :func:`~litesam_kernels.ops.layer_norm2d`; t rounded to the dtype of ``x`` as the unfused
            pair computes it). Differentiable, like every tensor argument.

    Returns:
        Tensor with the shape and dtype of ``x`` (contiguous). GELU: the exact (erf) one in the reference and
        for float32/float64; the Triton kernels use the tanh form for float16/bfloat16 (within 5e-4 of the
        exact one, below the 16-bit rounding of the hidden value).

    Raises:
        TypeError / ValueError for bad types, shapes or devices.
    """
    _check_inputs(x, w1, b1, w2, b2, residual, norm_weight, norm_bias, norm_eps)
    return torch.ops.litesam.conv_mlp(x, w1, b1, w2, b2, residual, norm_weight, norm_bias, float(norm_eps))


def fold_batchnorm_into_linear(w1: torch.Tensor, b1: torch.Tensor, scale: torch.Tensor,
                               shift: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(W1', b1') with ``W1' x + b1' = W1 (x * scale + shift) + b1`` (differentiable).

    The fold is computed in the accumulation dtype (float32, or float64 when any input is float64) and
    returned in the dtypes of ``w1`` and ``b1``: half weights with the float32 scale/shift of a BatchNorm
    work, and the folded bias carries one rounding, not the sum's.
    """
    acc = torch.float64 if torch.float64 in (w1.dtype, b1.dtype, scale.dtype, shift.dtype) else torch.float32
    w1_acc = w1.to(acc)
    folded_w1 = w1_acc * scale.to(acc)[None, :]
    folded_b1 = b1.to(acc) + w1_acc @ shift.to(acc)
    return folded_w1.to(w1.dtype), folded_b1.to(b1.dtype)


def _check_inputs(x, w1, b1, w2, b2, residual, norm_weight=None, norm_bias=None, norm_eps=1e-6) -> None:
    check_tensor("x", x, dtypes=DTYPES, expected="(..., C)")
    if x.dim() < 1 or not 1 <= x.shape[-1] <= MAX_CHANNELS:
        raise ValueError(f"x must have 1 to {MAX_CHANNELS} channels in its last dim, got shape {tuple(x.shape)}")
    c = x.shape[-1]
    check_tensor("w1", w1, dim=2, floating=True, expected="(HID, C)")
    hid = w1.shape[0]
    if w1.shape[1] != c or hid < 1:
        raise ValueError(f"w1 must have shape (HID, C={c}), got {tuple(w1.shape)}")
    check_tensor("w2", w2, dim=2, floating=True, expected="(C, HID)")
    if tuple(w2.shape) != (c, hid):
        raise ValueError(f"w2 must have shape (C={c}, HID={hid}), got {tuple(w2.shape)}")
    check_vector("b1", b1, hid, "w1", x)
    check_vector("b2", b2, c, "x", x)
    for name, t in (("w1", w1), ("w2", w2)):
        if t.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}), got {t.device}")
    if residual is not None:
        check_like("residual", residual, "x", x)
    if (norm_weight is None) != (norm_bias is None):
        raise ValueError("norm_weight and norm_bias must be given together (or both None), got "
                         f"{'a tensor' if norm_weight is not None else None} and "
                         f"{'a tensor' if norm_bias is not None else None}")
    if norm_weight is not None:
        check_vector("norm_weight", norm_weight, c, "x", x)
        check_vector("norm_bias", norm_bias, c, "x", x)
        check_real("norm_eps", norm_eps, low=1e-12)


def _check_backward_inputs(grad, x, w1, b1, w2, b2, norm_weight, norm_bias, norm_eps) -> None:
    _check_inputs(x, w1, b1, w2, b2, None, norm_weight, norm_bias, norm_eps)
    check_gradient(grad, "conv_mlp's output", x.shape, x.dtype, x.device)


def _hidden(t, w1, b1):
    acc = acc_dtype(t.dtype)
    return F.linear(t.to(acc), w1.to(acc), b1.to(acc))


def _normalized(x, norm_weight, norm_bias, norm_eps):
    return x if norm_weight is None else _layer_norm_reference(x, norm_weight, norm_bias, norm_eps)


def _conv_mlp_reference(x, w1, b1, w2, b2, residual, norm_weight=None, norm_bias=None, norm_eps=1e-6):
    """The unfused composition: [layer_norm2d's reference, then] the MLP in the accumulation dtype."""
    acc = acc_dtype(x.dtype)
    t = _normalized(x, norm_weight, norm_bias, norm_eps)
    y = F.linear(F.gelu(_hidden(t, w1, b1)), w2.to(acc), b2.to(acc))
    if residual is not None:
        y = y + residual.to(acc)
    return y.to(x.dtype)


def _conv_mlp_backward_reference(grad, x, w1, b1, w2, b2, norm_weight=None, norm_bias=None, norm_eps=1e-6):
    acc = acc_dtype(x.dtype)
    t = _normalized(x, norm_weight, norm_bias, norm_eps)
    g = grad.to(acc).reshape(-1, x.shape[-1])
    t2d = t.to(acc).reshape(-1, x.shape[-1])
    a = _hidden(t2d, w1, b1)
    da = (g @ w2.to(acc)) * gelu_grad(a)
    dt = (da @ w1.to(acc)).view(x.shape)
    grads = _grads(x, w1, b1, w2, b2, dt, t2d, g, F.gelu(a), da)
    if norm_weight is None:
        return grads
    dx, dnorm_weight, dnorm_bias = _layer_norm_backward_reference(dt, x, norm_weight, norm_bias, norm_eps)
    return [dx, *grads[1:], dnorm_weight, dnorm_bias]


def _grads(x, w1, b1, w2, b2, dt, t2d, g2d, h, da):
    """[dL/dt, dL/dw1, dL/db1, dL/dw2, dL/db2] from the recomputed hidden values (each in its input's dtype)."""
    acc = acc_dtype(x.dtype)
    return [dt.to(x.dtype).contiguous(), (da.t() @ t2d).to(w1.dtype), da.sum(0, dtype=acc).to(b1.dtype),
            (g2d.t() @ h).to(w2.dtype), g2d.sum(0, dtype=acc).to(b2.dtype)]


def _triton_args(x, w1, b1, w2, b2):
    acc = acc_dtype(x.dtype)
    c = x.shape[-1]
    return (x.contiguous().view(-1, c), w1.to(x.dtype).contiguous(), b1.to(acc).contiguous(),
            w2.to(x.dtype).contiguous(), b2.to(acc).contiguous())


def _triton_norm(x, norm_weight, norm_bias, norm_eps):
    if norm_weight is None:
        return None
    acc = acc_dtype(x.dtype)
    return norm_weight.to(acc).contiguous(), norm_bias.to(acc).contiguous(), norm_eps


def _use_triton(x) -> bool:
    return x.numel() > 0 and _backend.choose(_CONV_MLP, x.device) == "triton"


@torch.library.custom_op("litesam::conv_mlp", mutates_args=())
def _conv_mlp_op(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                 residual: Optional[torch.Tensor], norm_weight: Optional[torch.Tensor] = None,
                 norm_bias: Optional[torch.Tensor] = None, norm_eps: float = 1e-6) -> torch.Tensor:
    _check_inputs(x, w1, b1, w2, b2, residual, norm_weight, norm_bias, norm_eps)
    with autocast_off(x.device):
        if _use_triton(x):
            from litesam_kernels.triton.conv_mlp import conv_mlp_forward

            x2d, *weights = _triton_args(x, w1, b1, w2, b2)
            res = None if residual is None else residual.contiguous().view(x2d.shape)
            norm = _triton_norm(x, norm_weight, norm_bias, norm_eps)
            return conv_mlp_forward(x2d, *weights, res, norm).view(x.shape)
        return _conv_mlp_reference(x, w1, b1, w2, b2, residual, norm_weight, norm_bias, norm_eps).contiguous()


@_conv_mlp_op.register_fake
def _conv_mlp_fake(x, w1, b1, w2, b2, residual, norm_weight=None, norm_bias=None, norm_eps=1e-6):
    _check_inputs(x, w1, b1, w2, b2, residual, norm_weight, norm_bias, norm_eps)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("litesam::conv_mlp_backward", mutates_args=())
def _conv_mlp_backward_op(grad: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                          w2: torch.Tensor, b2: torch.Tensor, norm_weight: Optional[torch.Tensor] = None,
                          norm_bias: Optional[torch.Tensor] = None, norm_eps: float = 1e-6) -> List[torch.Tensor]:
    """[dx, dw1, db1, dw2, db2] (+ [dnorm_weight, dnorm_bias] with the LayerNorm); dx excludes the residual's
    share (autograd adds ``grad`` for the residual argument)."""
    _check_backward_inputs(grad, x, w1, b1, w2, b2, norm_weight, norm_bias, norm_eps)
    with autocast_off(x.device):
        if _use_triton(x):
            from litesam_kernels.triton.conv_mlp import conv_mlp_backward

            x2d, w1c, b1c, w2c, _ = _triton_args(x, w1, b1, w2, b2)
            g2d = grad.to(x.dtype).contiguous().view(x2d.shape)
            norm = _triton_norm(x, norm_weight, norm_bias, norm_eps)
            dx, h, da, t2d, partial = conv_mlp_backward(g2d, x2d, w1c, b1c, w2c, norm)
            # weight gradients: cuBLAS GEMMs in the activation dtype (fp32 accumulation), as eager fp16/bf16 does
            grads = _grads(x, w1, b1, w2, b2, dx.view(x.shape), t2d, g2d, h, da)
            if norm is None:
                return grads
            return [*grads, partial[:, 0].sum(0).to(norm_weight.dtype), partial[:, 1].sum(0).to(norm_bias.dtype)]
        return _conv_mlp_backward_reference(grad, x, w1, b1, w2, b2, norm_weight, norm_bias, norm_eps)


@_conv_mlp_backward_op.register_fake
def _conv_mlp_backward_fake(grad, x, w1, b1, w2, b2, norm_weight=None, norm_bias=None, norm_eps=1e-6):
    _check_backward_inputs(grad, x, w1, b1, w2, b2, norm_weight, norm_bias, norm_eps)
    grads = [torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(w1),
             torch.empty_like(b1), torch.empty_like(w2), torch.empty_like(b2)]
    if norm_weight is None:
        return grads
    return [*grads, torch.empty_like(norm_weight), torch.empty_like(norm_bias)]


def _setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, residual, norm_weight, norm_bias, norm_eps = inputs
    ctx.save_for_backward(x, w1, b1, w2, b2, norm_weight, norm_bias)
    ctx.has_residual = residual is not None
    ctx.norm_eps = norm_eps


def _backward(ctx, grad):
    x, w1, b1, w2, b2, norm_weight, norm_bias = ctx.saved_tensors
    grads = torch.ops.litesam.conv_mlp_backward(grad, x, w1, b1, w2, b2, norm_weight, norm_bias, ctx.norm_eps)
    norm_grads = grads[5:] if norm_weight is not None else (None, None)
    return (*grads[:5], grad if ctx.has_residual else None, *norm_grads, None)


_conv_mlp_op.register_autograd(_backward, setup_context=_setup_context)
