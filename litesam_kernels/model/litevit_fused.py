"""LiteViT's forward on the fused channels-last ops (``LiteViT(config, fused=True)``).

Same parameters, same math as the eager modules in ``litevit.py`` (this file only reads them):
- the activations stay channels-last (B, H, W, C) from the stem to the neck; the dense stride-2 convs of
  the stem and the downsamplings stay cuDNN convolutions (run on channels-last views, no copies) with their
  BatchNorm folded into the conv in eval mode;
- BatchNorm becomes a per-channel scale/shift folded into the fused op (:func:`bn_scale_shift`): running
  statistics in eval mode; batch statistics in training mode, computed differentiably in torch and with
  the running statistics updated as ``nn.BatchNorm2d`` does, so the fused path also trains;
- the one BatchNorm whose batch statistics need a conv output first (``DWConvBNAct`` in training mode) runs
  its eager module instead.
Each op picks its backend per call (Triton on CUDA, the reference elsewhere); with
``LITESAM_BACKEND=reference`` (or ``use_backend("reference")``) the model runs its eager modules instead.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from litesam_kernels import _backend
from litesam_kernels.ops.attention import pooled_kv_attention
from litesam_kernels.ops.conv_block import dwconv_act, fold_batchnorm
from litesam_kernels.ops.conv_mlp import conv_mlp, fold_batchnorm_into_linear
from litesam_kernels.ops.layer_norm import layer_norm2d
from litesam_kernels.ops.pool_mixer import pool_mixer


def fused_path_enabled() -> bool:
    """False when the reference backend is forced: the model then runs its eager modules."""
    return _backend.forced_backend() != "reference"


def _uses_running_stats(bn: nn.BatchNorm2d) -> bool:
    return not bn.training and bn.track_running_stats and bn.running_mean is not None


def bn_scale_shift(bn: nn.BatchNorm2d, x_nhwc: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) in float32 (float64 for float64 input) with ``bn(x) = x * scale + shift`` per channel."""
    acc = torch.float64 if x_nhwc.dtype == torch.float64 else torch.float32
    if not _uses_running_stats(bn):
        xf = x_nhwc.to(acc)
        mean = xf.mean((0, 1, 2))
        var = xf.var((0, 1, 2), unbiased=False)
        if bn.training and bn.track_running_stats and bn.running_mean is not None:
            with torch.no_grad():
                bn.num_batches_tracked += 1
                momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                n = x_nhwc.numel() // x_nhwc.shape[-1]
                unbiased = var * (n / max(n - 1, 1))
                bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
                bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)
    else:
        mean, var = bn.running_mean.to(acc), bn.running_var.to(acc)
    weight = bn.weight.to(acc) if bn.weight is not None else torch.ones_like(mean)
    bias = bn.bias.to(acc) if bn.bias is not None else torch.zeros_like(mean)
    scale = weight * torch.rsqrt(var + bn.eps)
    return scale, bias - mean * scale


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)  # a channels-last NCHW view: convs keep the layout


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()  # free when x is channels-last


def _linear_weight(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight[:, :, 0, 0]


def conv_bn_act(module, x_nchw: torch.Tensor) -> torch.Tensor:
    """The stem / downsampling ``ConvBNAct``: in eval mode the BatchNorm folds into the cuDNN conv (one pass
    over the largest activations of the network saved); in training mode the module itself runs."""
    if not _uses_running_stats(module.bn):
        return module(x_nchw)
    conv = module.conv
    scale, shift = bn_scale_shift(module.bn, x_nchw)  # running statistics: only x's dtype is used
    weight = (conv.weight * scale.to(conv.weight.dtype)[:, None, None, None]).to(conv.weight.dtype)
    y = F.conv2d(x_nchw, weight, shift.to(conv.weight.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)
    return F.gelu(y) if isinstance(module.act, nn.GELU) else module.act(y)


def pool_mixer_block(block, x: torch.Tensor) -> torch.Tensor:
    scale, shift = bn_scale_shift(block.norm1, x)
    x = pool_mixer(x, scale, shift, block.mixer.pool_sizes)
    scale, shift = bn_scale_shift(block.norm2, x)
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    w1, b1 = fold_batchnorm_into_linear(_linear_weight(fc1), fc1.bias, scale, shift)
    return conv_mlp(x, w1, b1, _linear_weight(fc2), fc2.bias, residual=x)


def attention_block(block, x: torch.Tensor) -> torch.Tensor:
    pos = block.pos
    if pos.bn.training:
        x = x + _nhwc(pos(_nchw(x)))
    else:
        scale, shift = bn_scale_shift(pos.bn, x)
        weight, bias = fold_batchnorm(pos.conv.weight, scale, shift)
        x = dwconv_act(x, weight, bias, "gelu", residual=True)
    attn = block.attn
    t = layer_norm2d(x, block.norm1.weight, block.norm1.bias, block.norm1.eps)
    x = pooled_kv_attention(t, attn.q.weight, attn.q.bias, attn.kv.weight, attn.kv.bias, attn.proj.weight,
                            attn.proj.bias, attn.num_heads, attn.kv_pool_sizes, residual=x)
    t = layer_norm2d(x, block.norm2.weight, block.norm2.bias, block.norm2.eps)
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    return conv_mlp(t, _linear_weight(fc1), fc1.bias, _linear_weight(fc2), fc2.bias, residual=x)


def neck(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    conv1, norm1, dwconv, norm2 = layers
    x = F.linear(x, _linear_weight(conv1), conv1.bias)
    x = layer_norm2d(x, norm1.weight, norm1.bias, norm1.eps)
    bias = dwconv.bias if dwconv.bias is not None else dwconv.weight.new_zeros(dwconv.weight.shape[0])
    x = dwconv_act(x, dwconv.weight[:, 0], bias, "none", residual=False)
    return layer_norm2d(x, norm2.weight, norm2.bias, norm2.eps)


def fused_forward(model, images: torch.Tensor) -> torch.Tensor:
    """``model(images)`` on the fused ops; the output is (B, out_channels, S/16, S/16) in channels-last memory."""
    x = images.contiguous(memory_format=torch.channels_last)
    for layer in model.stem:
        x = conv_bn_act(layer, x)
    x = _nhwc(x)
    for block in model.stage1:
        x = pool_mixer_block(block, x)
    x = _nhwc(conv_bn_act(model.down1, _nchw(x)))
    for block in model.stage2:
        x = pool_mixer_block(block, x)
    x = _nhwc(conv_bn_act(model.down2, _nchw(x)))
    for block in model.stage3:
        x = attention_block(block, x)
    return _nchw(neck(model.neck, x))
