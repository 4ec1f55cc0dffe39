"""LiteViT's pool-mixer block as one op, channels-last: the token mixer and the MLP with y kept on chip.

``pool_mixer_block(x, scale, shift, w1, b1, w2, b2) = y + W2 GELU(W1 y + b1) + b2`` with
``y = pool_mixer(x, scale, shift)``: ``model.litevit.PoolMixerBlock`` in eval mode, BN1 as the per-channel
``scale``/``shift`` and BN2 folded into ``w1``/``b1`` (:func:`~litesam_kernels.ops.fold_batchnorm_into_linear`).
It equals ``conv_mlp(y, w1, b1, w2, b2, residual=y)`` after ``y = pool_mixer(x, scale, shift)``, and on the
Triton backend runs as one kernel when C <= 64 and HID <= 256 (LiteViT's stages 1 and 2), so y never reaches
memory; otherwise as those two ops.
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from litesam_kernels import _backend
from litesam_kernels.ops._autocast import autocast_off
from litesam_kernels.ops._dense import acc_dtype
from litesam_kernels.ops.conv_mlp import _check_inputs as _check_mlp_inputs
from litesam_kernels.ops.conv_mlp import _conv_mlp_reference
from litesam_kernels.ops.pool_mixer import _check_inputs as _check_mixer_inputs
from litesam_kernels.ops.pool_mixer import _check_sizes, _pool_mixer_reference

_POOL_MIXER_BLOCK = _backend.register(_backend.OpImplementations("pool_mixer_block", has_triton=True))


def pool_mixer_block(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                     w2: torch.Tensor, b2: torch.Tensor, pool_sizes: Sequence[int] = (3, 5, 7)) -> torch.Tensor:
    """Fused ``y + W2 GELU(W1 y + b1) + b2`` with ``y = pool_mixer(x, scale, shift, pool_sizes)``.

    Args:
        x: ``(B, H, W, C)`` float16/bfloat16/float32/float64, 1 <= C <= 256 (channels-last; made contiguous).
        scale, shift: ``(C,)`` floating (the first BatchNorm, as in :func:`~litesam_kernels.ops.pool_mixer`).
        w1: ``(HID, C)``, b1: ``(HID,)``, w2: ``(C, HID)``, b2: ``(C,)`` floating (the MLP's 1x1 convs, the second
            BatchNorm folded into ``w1``/``b1``). Matmul operands are cast to the dtype of ``x``.
        pool_sizes: 1 to 3 odd window sizes in [1, 15].
        All tensors on the device of ``x`` and differentiable.

    Returns:
        ``(B, H, W, C)`` contiguous with the dtype of ``x``; y is rounded to that dtype before the MLP, as the two
        unfused ops store it; accumulation in float32 (float64 for float64 input). GELU: exact (erf) for
        float32/float64, the tanh form for float16/bfloat16 on the Triton backend (within 5e-4 of exact, see
        ``triton/_activations.py``); float32 dots follow ``torch.backends.cudnn.allow_tf32`` there.

    Raises:
        TypeError / ValueError for bad types, shapes, devices or pool sizes (naming the argument).
    """
    sizes = _check_sizes(pool_sizes)
    _check_inputs(x, scale, shift, w1, b1, w2, b2, sizes)
    return torch.ops.litesam.pool_mixer_block(x, scale, shift, w1, b1, w2, b2, sizes)


def _check_inputs(x, scale, shift, w1, b1, w2, b2, pool_sizes) -> None:
    _check_mixer_inputs(x, scale, shift, pool_sizes)
    _check_mlp_inputs(x, w1, b1, w2, b2, None)


def _pool_mixer_block_reference(x, scale, shift, w1, b1, w2, b2, pool_sizes):
    """The two references composed (y rounded to x's dtype in between, as the unfused ops store it)."""
    y = _pool_mixer_reference(x, scale, shift, pool_sizes)
    return _conv_mlp_reference(y, w1, b1, w2, b2, y)


def _use_fused_kernel(x, w1) -> bool:
    if not x.numel() or _backend.choose(_POOL_MIXER_BLOCK, x.device) != "triton":
        return False
    from litesam_kernels.triton.pool_mixer_block import fits

    return fits(x.shape[3], w1.shape[0])


def _fused_forward(x, scale, w1, b1, w2, b2, pool_sizes):
    from litesam_kernels.triton._activations import fast_gelu_for
    from litesam_kernels.triton._precision import dot_precision
    from litesam_kernels.triton.pool_mixer_block import pool_mixer_block_forward

    acc = acc_dtype(x.dtype)
    return pool_mixer_block_forward(
        x.contiguous(), scale.to(acc).contiguous(), w1.to(x.dtype).contiguous(), b1.to(acc).contiguous(),
        w2.to(x.dtype).contiguous(), b2.to(acc).contiguous(), pool_sizes, dot_precision(x.dtype, "conv"),
        fast_gelu_for(x.dtype))


@torch.library.custom_op("litesam::pool_mixer_block", mutates_args=())
def _pool_mixer_block_op(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, w1: torch.Tensor,
                         b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, pool_sizes: List[int]) -> torch.Tensor:
    _check_inputs(x, scale, shift, w1, b1, w2, b2, pool_sizes)
    with autocast_off(x.device):
        if _use_fused_kernel(x, w1):
            return _fused_forward(x, scale, w1, b1, w2, b2, pool_sizes)
        if x.numel() and _backend.choose(_POOL_MIXER_BLOCK, x.device) == "triton":  # too wide for one kernel
            y = torch.ops.litesam.pool_mixer(x, scale, shift, pool_sizes)
            return torch.ops.litesam.conv_mlp(y, w1, b1, w2, b2, y)
        return _pool_mixer_block_reference(x, scale, shift, w1, b1, w2, b2, pool_sizes).contiguous()


@_pool_mixer_block_op.register_fake
def _pool_mixer_block_fake(x, scale, shift, w1, b1, w2, b2, pool_sizes):
    _check_inputs(x, scale, shift, w1, b1, w2, b2, pool_sizes)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, scale, shift, w1, b1, w2, b2, pool_sizes = inputs
    ctx.save_for_backward(x, scale, shift, w1, b1, w2, b2)  # y is recomputed: one pass over x, no saved y
    ctx.pool_sizes = pool_sizes


def _backward(ctx, grad):
    x, scale, shift, w1, b1, w2, b2 = ctx.saved_tensors
    y = torch.ops.litesam.pool_mixer(x, scale, shift, ctx.pool_sizes)
    dy, dw1, db1, dw2, db2 = torch.ops.litesam.conv_mlp_backward(grad, y, w1, b1, w2, b2)
    dx, dscale, dshift = torch.ops.litesam.pool_mixer_backward(dy + grad.to(dy.dtype), x, scale, shift,
                                                               ctx.pool_sizes)
    return dx, dscale, dshift, dw1, db1, dw2, db2, None


_pool_mixer_block_op.register_autograd(_backward, setup_context=_setup_context)
