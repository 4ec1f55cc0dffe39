"""LayerNorm2d on channels-last tensors: normalise each pixel's C channels (SAM's ``LayerNorm2d``, eps 1e-6).

``layer_norm2d(x, weight, bias, eps)[..., c] = (x - mean) / sqrt(var + eps) * weight[c] + bias[c]`` with the
biased variance over the last dim, accumulated in float32 (float64 for float64 input).
"""
from __future__ import annotations

from typing import List

import torch

from litesam_kernels import _backend
from litesam_kernels._checks import check_gradient, check_real
from litesam_kernels.ops._autocast import autocast_off
from litesam_kernels.ops._dense import acc_dtype, check_nhwc, check_vector

_LAYER_NORM = _backend.register(_backend.OpImplementations("layer_norm2d", has_triton=True))
MAX_CHANNELS = 4096


def layer_norm2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over the last (channel) dim of a ``(B, H, W, C)`` tensor.

    Args:
        x: ``(B, H, W, C)`` float16/bfloat16/float32/float64, C <= 4096.
        weight, bias: ``(C,)`` floating, on the device of ``x``. Differentiable.
        eps: > 0.

    Returns:
        ``(B, H, W, C)`` contiguous, dtype of ``x``.

    Raises:
        TypeError / ValueError for bad types, shapes, devices or eps.
    """
    _check_inputs(x, weight, bias, eps)
    return torch.ops.litesam.layer_norm2d(x, weight, bias, float(eps))


def _check_inputs(x, weight, bias, eps) -> None:
    check_nhwc("x", x)
    if x.shape[3] > MAX_CHANNELS:
        raise ValueError(f"x must have at most {MAX_CHANNELS} channels, got {x.shape[3]}")
    check_vector("weight", weight, x.shape[3], "x", x)
    check_vector("bias", bias, x.shape[3], "x", x)
    check_real("eps", eps, low=1e-12)


def _stats(x):
    xf = x.to(acc_dtype(x.dtype))
    mean = xf.mean(-1, keepdim=True)
    return xf, mean


def _layer_norm_reference(x, weight, bias, eps):
    acc = acc_dtype(x.dtype)
    xf, mean = _stats(x)
    var = (xf - mean).pow(2).mean(-1, keepdim=True)
    y = (xf - mean) / torch.sqrt(var + eps) * weight.to(acc) + bias.to(acc)
    return y.to(x.dtype)


def _layer_norm_backward_reference(grad, x, weight, bias, eps):
    acc = acc_dtype(x.dtype)
    xf, mean = _stats(x)
    rstd = torch.rsqrt((xf - mean).pow(2).mean(-1, keepdim=True) + eps)
    xhat = (xf - mean) * rstd
    g = grad.to(acc)
    gw = g * weight.to(acc)
    dx = (gw - xhat * (gw * xhat).mean(-1, keepdim=True) - gw.mean(-1, keepdim=True)) * rstd
    dims = tuple(range(x.dim() - 1))
    return [dx.to(x.dtype).contiguous(), (g * xhat).sum(dims).to(weight.dtype), g.sum(dims).to(bias.dtype)]


def _flat(x):
    return x.contiguous().view(-1, x.shape[-1])


@torch.library.custom_op("litesam::layer_norm2d", mutates_args=())
def _layer_norm_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    _check_inputs(x, weight, bias, eps)
    if x.numel() and _backend.choose(_LAYER_NORM, x.device) == "triton":
        from litesam_kernels.triton.layer_norm import layer_norm_forward

        acc = acc_dtype(x.dtype)
        y = layer_norm_forward(_flat(x), weight.to(acc).contiguous(), bias.to(acc).contiguous(), eps)
        return y.view(x.shape)
    with autocast_off(x.device):
        return _layer_norm_reference(x, weight, bias, eps).contiguous()


@_layer_norm_op.register_fake
def _layer_norm_fake(x, weight, bias, eps):
    _check_inputs(x, weight, bias, eps)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _check_backward(grad, x, weight, bias, eps) -> None:
    _check_inputs(x, weight, bias, eps)
    check_gradient(grad, "layer_norm2d's output", x.shape, x.dtype, x.device)


@torch.library.custom_op("litesam::layer_norm2d_backward", mutates_args=())
def _layer_norm_backward_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                            eps: float) -> List[torch.Tensor]:
    _check_backward(grad, x, weight, bias, eps)
    if x.numel() and _backend.choose(_LAYER_NORM, x.device) == "triton":
        from litesam_kernels.triton.layer_norm import layer_norm_backward

        w = weight.to(acc_dtype(x.dtype)).contiguous()
        dx, dw, db = layer_norm_backward(_flat(grad.to(x.dtype)), _flat(x), w, eps)
        return [dx.view(x.shape), dw.to(weight.dtype), db.to(bias.dtype)]
    with autocast_off(x.device):
        return _layer_norm_backward_reference(grad, x, weight, bias, eps)


@_layer_norm_backward_op.register_fake
def _layer_norm_backward_fake(grad, x, weight, bias, eps):
    _check_backward(grad, x, weight, bias, eps)
    return [torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight),
            torch.empty_like(bias)]


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.eps = eps


def _backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = torch.ops.litesam.layer_norm2d_backward(grad, x, weight, bias, ctx.eps)
    return dx, dw, db, None


_layer_norm_op.register_autograd(_backward, setup_context=_setup_context)
