"""Depthwise conv block, channels-last: ``[x +] act(depthwise_conv_kxk(x, weight) + bias)``.

LiteViT's ``DWConvBNAct`` (3x3 depthwise conv + BatchNorm + GELU, used as a residual positional encoding)
and the neck's depthwise 3x3 conv, with the BatchNorm folded into ``weight``/``bias`` by the caller
(:func:`fold_batchnorm`). Zero "same" padding (k // 2), stride 1; k odd (3 and 7 are the model's sizes).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F

from litesam_kernels import _backend
from litesam_kernels._checks import check_gradient, check_tensor
from litesam_kernels.ops._autocast import autocast_off
from litesam_kernels.ops._dense import acc_dtype, check_nhwc, check_vector, gelu_grad

_DWCONV = _backend.register(_backend.OpImplementations("dwconv_act", has_triton=True))
ACTIVATIONS = ("gelu", "none")
MAX_KERNEL = 9


def dwconv_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, activation: str = "gelu",
               residual: bool = False) -> torch.Tensor:
    """Fused depthwise conv + bias + activation (+ residual) on a ``(B, H, W, C)`` tensor.

    Args:
        x: ``(B, H, W, C)`` float16/bfloat16/float32/float64.
        weight: ``(C, k, k)`` floating (a ``Conv2d(C, C, k, groups=C)`` weight without its dim 1), k odd <= 9.
        bias: ``(C,)`` floating. Both on the device of ``x``, differentiable.
        activation: ``"gelu"`` or ``"none"``. GELU is the exact (erf) one; the Triton kernels use the tanh form
            for float16/bfloat16 input (within 5e-4 of exact, below the output's rounding; ``triton/_activations.py``).
        residual: add ``x`` to the result.

    Returns:
        ``(B, H, W, C)`` contiguous, dtype of ``x``; accumulation in float32 (float64 for float64 input).

    Raises:
        TypeError / ValueError for bad types, shapes, devices, kernel size or activation.
    """
    _check_inputs(x, weight, bias, activation, residual)
    return torch.ops.litesam.dwconv_act(x, weight, bias, activation, bool(residual))


def fold_batchnorm(conv_weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``BN(depthwise_conv(x))`` with BN as the per-channel ``scale``/``shift``."""
    return conv_weight.reshape(conv_weight.shape[0], *conv_weight.shape[-2:]) * scale[:, None, None], shift


def _check_inputs(x, weight, bias, activation, residual) -> None:
    check_nhwc("x", x)
    c = x.shape[3]
    check_tensor("weight", weight, dim=3, floating=True, expected="(C, k, k)")
    k = weight.shape[1]
    if weight.shape != (c, k, k) or k % 2 == 0 or k > MAX_KERNEL:
        raise ValueError(f"weight must have shape (C={c}, k, k) with k odd <= {MAX_KERNEL}, got {tuple(weight.shape)}")
    check_vector("bias", bias, c, "x", x)
    if weight.device != x.device:
        raise ValueError(f"weight must be on the device of x ({x.device}), got {weight.device}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool, got {type(residual).__name__}")


def _pre_activation(x, weight, bias):
    acc = acc_dtype(x.dtype)
    k = weight.shape[1]
    return F.conv2d(x.to(acc).permute(0, 3, 1, 2), weight.to(acc)[:, None], bias.to(acc), padding=k // 2,
                    groups=x.shape[3]).permute(0, 2, 3, 1)


def _dwconv_reference(x, weight, bias, activation, residual):
    y = _pre_activation(x, weight, bias)
    if activation == "gelu":
        y = F.gelu(y)
    if residual:
        y = y + x.to(y.dtype)
    return y.to(x.dtype)


def _dwconv_backward_reference(grad, x, weight, bias, activation, residual):
    acc = acc_dtype(x.dtype)
    g = grad.to(acc)
    gu = g * gelu_grad(_pre_activation(x, weight, bias)) if activation == "gelu" else g
    k, c = weight.shape[1], x.shape[3]
    gu_nchw, x_nchw = gu.permute(0, 3, 1, 2), x.to(acc).permute(0, 3, 1, 2)
    w4 = weight.to(acc)[:, None]
    dx = torch.nn.grad.conv2d_input(x_nchw.shape, w4, gu_nchw, padding=k // 2, groups=c).permute(0, 2, 3, 1)
    dw = torch.nn.grad.conv2d_weight(x_nchw, w4.shape, gu_nchw, padding=k // 2, groups=c)[:, 0]
    if residual:
        dx = dx + g
    return [dx.to(x.dtype).contiguous(), dw.to(weight.dtype), gu.sum((0, 1, 2)).to(bias.dtype)]


def _triton_args(x, weight, bias):
    acc = acc_dtype(x.dtype)
    k = weight.shape[1]
    taps = weight.to(acc).reshape(weight.shape[0], k * k).t().contiguous()  # (k*k, C): channel-contiguous loads
    return x.contiguous(), taps, bias.to(acc).contiguous(), k


@torch.library.custom_op("litesam::dwconv_act", mutates_args=())
def _dwconv_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, activation: str,
               residual: bool) -> torch.Tensor:
    _check_inputs(x, weight, bias, activation, residual)
    if x.numel() and _backend.choose(_DWCONV, x.device) == "triton":
        from litesam_kernels.triton.conv_block import dwconv_forward

        xc, taps, b, k = _triton_args(x, weight, bias)
        return dwconv_forward(xc, taps, b, k, activation == "gelu", residual)
    with autocast_off(x.device):
        return _dwconv_reference(x, weight, bias, activation, residual).contiguous()


@_dwconv_op.register_fake
def _dwconv_fake(x, weight, bias, activation, residual):
    _check_inputs(x, weight, bias, activation, residual)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _check_backward(grad, x, weight, bias, activation, residual) -> None:
    _check_inputs(x, weight, bias, activation, residual)
    check_gradient(grad, "dwconv_act's output", x.shape, x.dtype, x.device)


@torch.library.custom_op("litesam::dwconv_act_backward", mutates_args=())
def _dwconv_backward_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                        activation: str, residual: bool) -> List[torch.Tensor]:
    _check_backward(grad, x, weight, bias, activation, residual)
    if x.numel() and _backend.choose(_DWCONV, x.device) == "triton":
        from litesam_kernels.triton.conv_block import dwconv_backward

        xc, taps, b, k = _triton_args(x, weight, bias)
        dx, dtaps, db = dwconv_backward(grad.to(x.dtype).contiguous(), xc, taps, b, k, activation == "gelu",
                                        residual)
        return [dx, dtaps.t().reshape(weight.shape).to(weight.dtype), db.to(bias.dtype)]
    with autocast_off(x.device):
        return _dwconv_backward_reference(grad, x, weight, bias, activation, residual)


@_dwconv_backward_op.register_fake
def _dwconv_backward_fake(grad, x, weight, bias, activation, residual):
    _check_backward(grad, x, weight, bias, activation, residual)
    return [torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight),
            torch.empty_like(bias)]


def _setup_context(ctx, inputs, output):
    x, weight, bias, activation, residual = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.activation, ctx.residual = activation, residual


def _backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = torch.ops.litesam.dwconv_act_backward(grad, x, weight, bias, ctx.activation, ctx.residual)
    return dx, dw, db, None, None


_dwconv_op.register_autograd(_backward, setup_context=_setup_context)
