"""ConvMLP on channels-last tokens: ``[residual +] W2 GELU(W1 x + b1) + b2`` (two 1x1 convs), hidden on chip.

LiteViT's ``ConvMLP`` (ratio 4 in the pool-mixer stages, 5 in the attention stage). In a pool-mixer block
the preceding BatchNorm folds into ``W1``/``b1`` (:func:`fold_batchnorm_into_linear`); in an attention block
the input is the LayerNorm output and ``residual`` is the block input.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from litesam_kernels import _backend
from litesam_kernels._checks import check_tensor
from litesam_kernels.ops._dense import DTYPES, acc_dtype, check_like, check_vector, gelu_grad

_CONV_MLP = _backend.register(_backend.OpImplementations("conv_mlp", has_triton=True))
MAX_CHANNELS = 256  # all C channels of a token block stay on chip


def conv_mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
             residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused two-layer MLP over the last dim.

    Args:
        x: ``(..., C)`` float16/bfloat16/float32/float64, 1 <= C <= 256 (any leading dims, e.g. B, H, W).
        w1: ``(HID, C)``, b1: ``(HID,)``, w2: ``(C, HID)``, b2: ``(C,)``: floating, on the device of ``x``
            (a ``Conv2d(C, HID, 1)`` weight may be passed as ``weight[:, :, 0, 0]``). Matmul operands are
            cast to the dtype of ``x``; products accumulate in float32 (float64 for float64 input).
        residual: None or a tensor with the shape and dtype of ``x``, added to the output.

    Returns:
        Tensor with the shape and dtype of ``x`` (contiguous). GELU is the exact (erf) one.

    Raises:
        TypeError / ValueError for bad types, shapes or devices.
    """
    _check_inputs(x, w1, b1, w2, b2, residual)
    return torch.ops.litesam.conv_mlp(x, w1, b1, w2, b2, residual)


def fold_batchnorm_into_linear(w1: torch.Tensor, b1: torch.Tensor, scale: torch.Tensor,
                               shift: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(W1', b1') with ``W1' x + b1' = W1 (x * scale + shift) + b1`` (differentiable)."""
    return w1 * scale[None, :], b1 + w1 @ shift


def _check_inputs(x, w1, b1, w2, b2, residual) -> None:
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


def _hidden(x, w1, b1):
    acc = acc_dtype(x.dtype)
    return F.linear(x.to(acc), w1.to(acc), b1.to(acc))


def _conv_mlp_reference(x, w1, b1, w2, b2, residual):
    acc = acc_dtype(x.dtype)
    y = F.linear(F.gelu(_hidden(x, w1, b1)), w2.to(acc), b2.to(acc))
    if residual is not None:
        y = y + residual.to(acc)
    return y.to(x.dtype)


def _conv_mlp_backward_reference(grad, x, w1, b1, w2, b2):
    acc = acc_dtype(x.dtype)
    g = grad.to(acc).reshape(-1, x.shape[-1])
    xf = x.to(acc).reshape(-1, x.shape[-1])
    a = _hidden(xf, w1, b1)
    da = (g @ w2.to(acc)) * gelu_grad(a)
    dx = (da @ w1.to(acc)).view(x.shape)
    return _grads(x, w1, b1, w2, b2, dx, xf, g, F.gelu(a), da)


def _grads(x, w1, b1, w2, b2, dx, x2d, g2d, h, da):
    acc = acc_dtype(x.dtype)
    return [dx.to(x.dtype).contiguous(), (da.t() @ x2d).to(w1.dtype), da.sum(0, dtype=acc).to(b1.dtype),
            (g2d.t() @ h).to(w2.dtype), g2d.sum(0, dtype=acc).to(b2.dtype)]


def _triton_args(x, w1, b1, w2, b2):
    acc = acc_dtype(x.dtype)
    c = x.shape[-1]
    return (x.contiguous().view(-1, c), w1.to(x.dtype).contiguous(), b1.to(acc).contiguous(),
            w2.to(x.dtype).contiguous(), b2.to(acc).contiguous())


def _use_triton(x) -> bool:
    return x.numel() > 0 and _backend.choose(_CONV_MLP, x.device) == "triton"


@torch.library.custom_op("litesam::conv_mlp", mutates_args=())
def _conv_mlp_op(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                 residual: Optional[torch.Tensor]) -> torch.Tensor:
    _check_inputs(x, w1, b1, w2, b2, residual)
    if _use_triton(x):
        from litesam_kernels.triton.conv_mlp import conv_mlp_forward

        x2d, *weights = _triton_args(x, w1, b1, w2, b2)
        res = None if residual is None else residual.contiguous().view(x2d.shape)
        return conv_mlp_forward(x2d, *weights, res).view(x.shape)
    return _conv_mlp_reference(x, w1, b1, w2, b2, residual).contiguous()


@_conv_mlp_op.register_fake
def _conv_mlp_fake(x, w1, b1, w2, b2, residual):
    _check_inputs(x, w1, b1, w2, b2, residual)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("litesam::conv_mlp_backward", mutates_args=())
def _conv_mlp_backward_op(grad: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                          w2: torch.Tensor, b2: torch.Tensor) -> List[torch.Tensor]:
    if _use_triton(x):
        from litesam_kernels.triton.conv_mlp import conv_mlp_backward

        x2d, w1c, b1c, w2c, _ = _triton_args(x, w1, b1, w2, b2)
        g2d = grad.to(x.dtype).contiguous().view(x2d.shape)
        dx, h, da = conv_mlp_backward(g2d, x2d, w1c, b1c, w2c)
        # weight gradients: cuBLAS GEMMs in the activation dtype (fp32 accumulation), as eager fp16/bf16 does
        return _grads(x, w1, b1, w2, b2, dx.view(x.shape), x2d, g2d, h, da)
    return _conv_mlp_backward_reference(grad, x, w1, b1, w2, b2)


@_conv_mlp_backward_op.register_fake
def _conv_mlp_backward_fake(grad, x, w1, b1, w2, b2):
    return [torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(w1), torch.empty_like(b1),
            torch.empty_like(w2), torch.empty_like(b2)]


def _setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, residual = inputs
    ctx.save_for_backward(x, w1, b1, w2, b2)
    ctx.has_residual = residual is not None


def _backward(ctx, grad):
    grads = torch.ops.litesam.conv_mlp_backward(grad, *ctx.saved_tensors)
    return (*grads, grad if ctx.has_residual else None)


_conv_mlp_op.register_autograd(_backward, setup_context=_setup_context)
