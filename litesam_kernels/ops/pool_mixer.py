"""Multi-scale pooling mixer block (PoolFormer-style token mixer of LiteViT stages 1-2), channels-last.

``pool_mixer(x, scale, shift) = x + mean_k(avg_pool_k(z)) - z`` with ``z = x * scale + shift`` (the block's
BatchNorm folded into a per-channel affine map), stride-1 "same" average pools of the odd sizes
``pool_sizes`` (default 3, 5, 7) that count only cells inside the image (``count_include_pad=False``).
That is ``x + MultiScalePool(BN(x))`` of ``model.litevit.PoolMixerBlock`` in one pass over memory: the
Triton kernel walks each column strip down the image once with separable window sums (``triton/pool_mixer.py``).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F

from litesam_kernels import _backend
from litesam_kernels._checks import check_gradient
from litesam_kernels.ops._autocast import autocast_off
from litesam_kernels.ops._dense import acc_dtype, check_nhwc, check_vector

_POOL_MIXER = _backend.register(_backend.OpImplementations("pool_mixer", has_triton=True))
MAX_POOL_SIZE = 15


def pool_mixer(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
               pool_sizes: Sequence[int] = (3, 5, 7)) -> torch.Tensor:
    """Fused ``x + mean_k(avg_pool_k(x * scale + shift)) - (x * scale + shift)`` over (H, W).

    Args:
        x: ``(B, H, W, C)`` float16/bfloat16/float32/float64 (channels-last; made contiguous).
        scale, shift: ``(C,)`` floating, on the device of ``x`` (a folded BatchNorm: ``weight / sqrt(var +
            eps)`` and ``bias - mean * scale``). Differentiable.
        pool_sizes: 1 to 3 odd window sizes in [1, 15].

    Returns:
        ``(B, H, W, C)`` with the dtype of ``x``; accumulation in float32 (float64 for float64 input).

    Raises:
        TypeError: non-tensors, unsupported dtypes. ValueError: wrong ranks/lengths, devices, pool sizes.
    """
    sizes = _check_sizes(pool_sizes)
    _check_inputs(x, scale, shift, sizes)
    return torch.ops.litesam.pool_mixer(x, scale, shift, sizes)


def _check_sizes(pool_sizes) -> List[int]:
    sizes = list(pool_sizes) if isinstance(pool_sizes, (list, tuple)) else None
    if not sizes or len(sizes) > 3 or any(isinstance(k, bool) or not isinstance(k, int) for k in sizes):
        raise ValueError(f"pool_sizes must be 1 to 3 odd integers, got {pool_sizes!r}")
    if any(k < 1 or k % 2 == 0 or k > MAX_POOL_SIZE for k in sizes):
        raise ValueError(f"pool_sizes must be odd and in [1, {MAX_POOL_SIZE}], got {pool_sizes!r}")
    return sizes


def _check_inputs(x, scale, shift, pool_sizes) -> None:
    check_nhwc("x", x)
    check_vector("scale", scale, x.shape[3], "x", x)
    check_vector("shift", shift, x.shape[3], "x", x)
    _check_sizes(pool_sizes)


def _pool_mixer_reference(x, scale, shift, pool_sizes):
    acc = acc_dtype(x.dtype)
    z = (x.to(acc) * scale.to(acc) + shift.to(acc)).permute(0, 3, 1, 2)
    pooled = torch.stack([F.avg_pool2d(z, k, 1, k // 2, count_include_pad=False) for k in pool_sizes]).mean(0)
    return (x.to(acc) + (pooled - z).permute(0, 2, 3, 1)).to(x.dtype)


def _pool_mixer_backward_reference(grad, x, scale, shift, pool_sizes):
    """dz = P^T g - g with P^T the transposed pool: divide by each window's count, then sum-pool."""
    acc = acc_dtype(x.dtype)
    g = grad.to(acc).permute(0, 3, 1, 2)
    ones = torch.ones_like(g[:1, :1])
    pt = 0
    for k in pool_sizes:
        count = F.avg_pool2d(ones, k, 1, k // 2, count_include_pad=True) * (k * k)
        pt = pt + F.avg_pool2d(g / count, k, 1, k // 2, count_include_pad=True) * (k * k)
    dz = (pt / len(pool_sizes) - g).permute(0, 2, 3, 1)
    dx = grad.to(acc) + dz * scale.to(acc)
    dscale = (dz * x.to(acc)).sum((0, 1, 2))
    return [dx.to(x.dtype).contiguous(), dscale.to(scale.dtype), dz.sum((0, 1, 2)).to(shift.dtype)]


def _triton_args(x, scale, shift):
    acc = acc_dtype(x.dtype)
    return x.contiguous(), scale.to(acc).contiguous(), shift.to(acc).contiguous()


@torch.library.custom_op("litesam::pool_mixer", mutates_args=())
def _pool_mixer_op(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, pool_sizes: List[int]) -> torch.Tensor:
    _check_inputs(x, scale, shift, pool_sizes)
    if x.numel() and _backend.choose(_POOL_MIXER, x.device) == "triton":
        from litesam_kernels.triton.pool_mixer import pool_mixer_forward

        xc, scale_c, _ = _triton_args(x, scale, shift)
        return pool_mixer_forward(xc, scale_c, pool_sizes)
    with autocast_off(x.device):
        return _pool_mixer_reference(x, scale, shift, pool_sizes).contiguous()


@_pool_mixer_op.register_fake
def _pool_mixer_fake(x, scale, shift, pool_sizes):
    _check_inputs(x, scale, shift, pool_sizes)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _check_backward(grad, x, scale, shift, pool_sizes) -> None:
    _check_inputs(x, scale, shift, pool_sizes)
    check_gradient(grad, "pool_mixer's output", x.shape, x.dtype, x.device)


@torch.library.custom_op("litesam::pool_mixer_backward", mutates_args=())
def _pool_mixer_backward_op(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                            pool_sizes: List[int]) -> List[torch.Tensor]:
    _check_backward(grad, x, scale, shift, pool_sizes)
    if x.numel() and _backend.choose(_POOL_MIXER, x.device) == "triton":
        from litesam_kernels.triton.pool_mixer import pool_mixer_backward

        xc, scale_c, _ = _triton_args(x, scale, shift)
        dx, dscale, dshift = pool_mixer_backward(grad.contiguous(), xc, scale_c, pool_sizes)
        return [dx, dscale.to(scale.dtype), dshift.to(shift.dtype)]
    with autocast_off(x.device):
        return _pool_mixer_backward_reference(grad, x, scale, shift, pool_sizes)


@_pool_mixer_backward_op.register_fake
def _pool_mixer_backward_fake(grad, x, scale, shift, pool_sizes):
    _check_backward(grad, x, scale, shift, pool_sizes)
    return [torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(scale),
            torch.empty_like(shift)]


def _setup_context(ctx, inputs, output):
    x, scale, shift, pool_sizes = inputs
    ctx.save_for_backward(x, scale, shift)
    ctx.pool_sizes = pool_sizes


def _backward(ctx, grad):
    x, scale, shift = ctx.saved_tensors
    dx, dscale, dshift = torch.ops.litesam.pool_mixer_backward(grad, x, scale, shift, ctx.pool_sizes)
    return dx, dscale, dshift, None


_pool_mixer_op.register_autograd(_backward, setup_context=_setup_context)
