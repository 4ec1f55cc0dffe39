"""LiteViT's forward on the fused channels-last ops (``LiteViT(config, fused=True)``).

Same parameters, same math as the eager modules in ``litevit.py`` (this file only reads them):
- the activations stay channels-last (B, H, W, C) from the stem to the neck; the dense stride-2 convs of
  the stem and the downsamplings stay cuDNN convolutions (run on channels-last views, no copies) with their
  BatchNorm folded into the conv in eval mode;
- BatchNorm becomes a per-channel scale/shift folded into the fused op (:class:`Folds`): running
  statistics in eval mode; batch statistics in training mode, computed differentiably in torch and with
  the running statistics updated as ``nn.BatchNorm2d`` does, so the fused path also trains;
- the BatchNorms whose batch statistics need a conv output first (``ConvBNAct``/``DWConvBNAct`` in training
  mode) run their eager module instead (cuDNN's BatchNorm), unless they synchronise (below).

Multi-rank batch statistics. A BatchNorm marked by :func:`synchronise_batch_statistics` (``litesam-train
--bn sync``), or one that is an ``nn.SyncBatchNorm``, combines its batch statistics over the ranks (the
world; an ``nn.SyncBatchNorm``'s own process group) while torch.distributed runs with more than one rank:
mean and biased variance of all ranks' batches together, all-reduced differentiably (the functional
collective ``all_reduce``, so each rank's gradient holds the other ranks' terms, under ``torch.compile`` too),
the running statistics updated with the global count as ``nn.SyncBatchNorm`` does. N ranks then compute what one
process holding their batches computes (up to summation order), on any backend: gloo on CPU too, where
``nn.SyncBatchNorm``'s own forward and DistributedDataParallel refuse it. Any other BatchNorm, and every
BatchNorm of a single process, uses this process's batch only. (The eager modules ignore the mark.)

Dtypes. The encoder computes in one *activation dtype*: the autocast dtype when ``torch.autocast`` is on for
the images' device (float64 images excepted, as autocast does), else the images' dtype; it returns that
dtype. Weights may be in any floating dtype (``model.to(torch.bfloat16)``, or float32 master weights under
autocast): every fold is computed in float32 (float64 for float64 activations) from the stored weights, with
autocast off, and cast once: matrix weights to the activation dtype, per-channel vectors kept in float32,
which is what the kernels read.

Three ways through (``fused_forward`` decides per call):
1. inference (every module in eval mode, and no gradient needed: ``torch.no_grad()``/``inference_mode`` or
   nothing requires grad) in eager code: the prepared path of ``litevit_prepared.py``: folds, casts and
   layouts computed once and cached, the kernels called directly;
2. training or autograd: the folds per call (differentiable) and the custom ops (``fused_ops.CustomOps``);
3. inside ``torch.compile``: as 2, traced into the graph (the custom ops are opaque), so
   ``torch.compile(encoder, fullgraph=True)`` works in training and inference.
``LITESAM_BACKEND=reference`` (or ``use_backend("reference")``) runs the eager modules instead.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from litesam_kernels import _backend
from litesam_kernels._checks import check_tensor
from litesam_kernels.ops._autocast import autocast_off
from litesam_kernels.model.fused_ops import (BatchNormAffine, ConvMLPWeights, ConvWeights, CustomOps,
                                             DepthwiseWeights, LayerNormWeights, LinearWeights, ReferenceOps)
from litesam_kernels.ops._dense import DTYPES, acc_dtype
from litesam_kernels.ops.conv_block import fold_batchnorm
from litesam_kernels.ops.conv_mlp import fold_batchnorm_into_linear

IMAGE_CHANNELS = 3


def fused_path_enabled() -> bool:
    """False when the reference backend is forced: the model then runs its eager modules."""
    return _backend.forced_backend() != "reference"


# ------------------------------------------------------------------------------------ entry
def activation_dtype(images: torch.Tensor) -> torch.dtype:
    """The dtype the encoder computes in (see the module docstring)."""
    device_type = images.device.type
    if images.dtype != torch.float64 and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return images.dtype


def check_images(model, images) -> None:
    """The one validation of the fused encoder's input (the kernels inside do not check again)."""
    check_tensor("images", images, dim=4, dtypes=DTYPES, expected="(B, 3, H, W)")
    b, c, h, w = images.shape
    if c != IMAGE_CHANNELS or h < 1 or w < 1:
        raise ValueError(f"images must have shape (B, {IMAGE_CHANNELS}, H >= 1, W >= 1), got {tuple(images.shape)}")
    device = model.stem[0].conv.weight.device
    if images.device != device:
        raise ValueError(f"images must be on the device of the model ({device}), got {images.device}")


# ------------------------------------------------------------------------------------ weights
def _uses_running_stats(bn: nn.BatchNorm2d) -> bool:
    return not bn.training and bn.track_running_stats and bn.running_mean is not None


SYNCHRONISE = "synchronise_batch_statistics"  # the mark :func:`synchronise_batch_statistics` sets on a BatchNorm


def synchronise_batch_statistics(module: nn.Module) -> int:
    """Mark every BatchNorm under ``module`` to combine its batch statistics over all ranks in the fused
    encoder (see the module docstring); parameters, buffers and checkpoints are unchanged. Returns how many."""
    marked = 0
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            setattr(bn, SYNCHRONISE, True)
            marked += 1
    return marked


def synchronising_group(bn: nn.Module):
    """The process group whose batches ``bn``'s batch statistics cover while torch.distributed runs with
    more than one rank there: the world for a marked BatchNorm, an ``nn.SyncBatchNorm``'s own group (the
    world unless it names one); else None (this process's batch)."""
    synchronised = getattr(bn, SYNCHRONISE, False) or isinstance(bn, nn.SyncBatchNorm)
    if not synchronised or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return None
    group = getattr(bn, "process_group", None) or torch.distributed.group.WORLD
    return group if torch.distributed.get_world_size(group) > 1 else None


def batch_statistics(x: torch.Tensor, group=None):
    """Per-channel mean and biased variance of ``x`` (..., C) and the number of values per channel (a
    tensor: ``new_full`` fills it on the device, no host copy), over this process's ``x`` or, with a
    process ``group``, over all its ranks' ``x`` together.

    The group's statistics take two differentiable all-reduces: the sums and counts, then the squared
    deviations from the global mean. Two passes, as ``var`` itself computes, rather than one pass of
    sums of squares: E[x^2] - E[x]^2 loses the variance to cancellation when |mean| >> std."""
    rows = x.reshape(-1, x.shape[-1])
    if group is None:
        return rows.mean(0), rows.var(0, unbiased=False), rows.new_full((), float(rows.shape[0]))
    # The functional collective (differentiable: its backward all-reduces the gradient), not
    # torch.distributed.nn.functional.all_reduce: under torch.compile the latter's forward ran but the
    # gradient through it did not match eager (tests/test_train_runs.py: the second step's loss differed).
    from torch.distributed import _functional_collectives as collectives

    sums = collectives.all_reduce(torch.cat([rows.sum(0), rows.new_full((1,), float(rows.shape[0]))]), "sum", group)
    count = sums[-1]
    mean = sums[:-1] / count
    var = collectives.all_reduce((rows - mean).square().sum(0), "sum", group) / count
    return mean, var, count.detach()


def _linear_weight(module: nn.Module) -> torch.Tensor:
    """An ``nn.Linear`` weight, or a 1x1 ``nn.Conv2d`` weight as one."""
    weight = module.weight
    return weight[:, :, 0, 0] if weight.dim() == 4 else weight


class Folds:
    """The fused ops' weights from the modules' parameters: BatchNorm folding, casts and layouts.

    Each method takes the module it folds first (``litevit_prepared`` records and replays the calls in
    order, keyed by that module). Folds run in the accumulation dtype with autocast off and are
    differentiable (this class is the training path's too); ``launcher_layouts`` also builds the layouts
    only the Triton launchers read (the prepared path).
    """

    def __init__(self, dtype: torch.dtype, launcher_layouts: bool = False) -> None:
        self.dtype = dtype
        self.acc = acc_dtype(dtype)
        self.launcher_layouts = launcher_layouts
        self.uses_batch_statistics = False  # some fold read the activations: not cacheable

    def _affine(self, bn: nn.BatchNorm2d, x_nhwc: Optional[torch.Tensor]) -> BatchNormAffine:
        acc = self.acc
        if _uses_running_stats(bn):
            mean, var = bn.running_mean.to(acc), bn.running_var.to(acc)
        else:
            self.uses_batch_statistics = True
            mean, var, n = batch_statistics(x_nhwc.to(acc), synchronising_group(bn))
            if bn.training and bn.track_running_stats and bn.running_mean is not None:
                with torch.no_grad():
                    bn.num_batches_tracked += 1
                    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                    unbiased = var * (n / (n - 1).clamp_min(1))
                    bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
                    bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)
        weight = bn.weight.to(acc) if bn.weight is not None else torch.ones_like(mean)
        bias = bn.bias.to(acc) if bn.bias is not None else torch.zeros_like(mean)
        scale = weight * torch.rsqrt(var + bn.eps)
        return BatchNormAffine(scale, bias - mean * scale)

    def batch_norm(self, bn: nn.BatchNorm2d, x_nhwc: torch.Tensor) -> BatchNormAffine:
        """``bn`` as ``x * scale + shift`` (running statistics in eval, batch statistics of ``x`` in training)."""
        return self._affine(bn, x_nhwc)

    def conv_bn(self, module) -> Optional[ConvWeights]:
        """A stem/downsampling ``ConvBNAct`` with its BatchNorm folded into the conv; None in training mode
        (the batch statistics need the conv's output: the module runs)."""
        if not _uses_running_stats(module.bn):
            self.uses_batch_statistics = True
            return None
        conv = module.conv
        scale, shift = self._affine(module.bn, None)
        weight = conv.weight.to(self.acc) * scale[:, None, None, None]
        weight = weight.to(self.dtype).contiguous(memory_format=torch.channels_last)
        return ConvWeights(weight, shift.to(self.dtype), conv.stride, conv.padding)

    def conv_mlp(self, mlp, x_nhwc: Optional[torch.Tensor] = None, batch_norm: Optional[nn.BatchNorm2d] = None
                 ) -> ConvMLPWeights:
        """A ``ConvMLP``'s weights, with a preceding ``batch_norm`` folded into its first layer."""
        acc = self.acc
        w1, b1 = _linear_weight(mlp.fc1).to(acc), mlp.fc1.bias.to(acc)
        if batch_norm is not None:
            scale, shift = self._affine(batch_norm, x_nhwc)
            with autocast_off(w1.device.type):  # autocast would run the fold's matmul in 16 bits
                w1, b1 = fold_batchnorm_into_linear(w1, b1, scale, shift)
        w2 = _linear_weight(mlp.fc2)
        return ConvMLPWeights(w1.to(self.dtype).contiguous(), b1.contiguous(), w2.to(self.dtype).contiguous(),
                              mlp.fc2.bias.to(acc).contiguous())

    def depthwise(self, module) -> Optional[DepthwiseWeights]:
        """A ``DWConvBNAct`` (BatchNorm folded; None in training mode) or a plain depthwise ``nn.Conv2d``."""
        acc = self.acc
        if isinstance(module, nn.Conv2d):
            weight = module.weight[:, 0].to(acc).contiguous()
            bias = module.bias.to(acc) if module.bias is not None else weight.new_zeros(weight.shape[0])
        elif _uses_running_stats(module.bn):
            scale, shift = self._affine(module.bn, None)
            weight, bias = fold_batchnorm(module.conv.weight.to(acc), scale, shift)
        else:
            self.uses_batch_statistics = True
            return None
        taps = None
        if self.launcher_layouts:  # (k*k, C): the kernel loads one tap for BLOCK_C channels at a time
            taps = weight.reshape(weight.shape[0], -1).t().contiguous()
        return DepthwiseWeights(weight.contiguous(), bias.contiguous(), taps)

    def layer_norm(self, norm) -> LayerNormWeights:
        return LayerNormWeights(norm.weight.to(self.acc).contiguous(), norm.bias.to(self.acc).contiguous(),
                                float(norm.eps))

    def linear(self, module) -> LinearWeights:
        """An ``nn.Linear`` or 1x1 ``nn.Conv2d`` in the activation dtype (cuBLAS GEMMs on channels-last tokens)."""
        bias = module.bias.to(self.dtype) if module.bias is not None else None
        # rounded to the activation dtype first, as the ops round every weight they are given
        bias_acc = bias.to(self.acc).contiguous() if bias is not None else None
        return LinearWeights(_linear_weight(module).to(self.dtype).contiguous(), bias, bias_acc)


# The fold methods, each keyed by the module it reads (litevit_prepared records and replays them).
FOLD_METHODS = ("batch_norm", "conv_bn", "conv_mlp", "depthwise", "layer_norm", "linear")


# ------------------------------------------------------------------------------------ the encoder, once
def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)  # a channels-last NCHW view: convs keep the layout


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()  # free when x is channels-last


def conv_bn_act(module, x_nchw: torch.Tensor, folds: Folds) -> torch.Tensor:
    """The stem / downsampling ``ConvBNAct``: in eval mode the BatchNorm folds into the cuDNN conv (one pass
    over the largest activations of the network saved); in training mode the module itself runs, or with
    multi-rank statistics :func:`synchronised_conv_bn_act`."""
    conv = folds.conv_bn(module)
    if conv is None:
        if synchronising_group(module.bn) is not None:
            return _nchw(synchronised_conv_bn_act(module, x_nchw, folds))
        return module(x_nchw).to(folds.dtype)
    y = F.conv2d(x_nchw, conv.weight, conv.bias, conv.stride, conv.padding)
    return F.gelu(y) if isinstance(module.act, nn.GELU) else module.act(y)


def synchronised_conv_bn_act(module, x_nchw: torch.Tensor, folds: Folds) -> torch.Tensor:
    """A ``ConvBNAct`` in training mode whose BatchNorm combines the ranks' statistics: its conv, then the
    BatchNorm as :meth:`Folds.batch_norm` computes it, then its activation; channels-last (B, H, W, C)."""
    y = _nhwc(module.conv(x_nchw))
    affine = folds.batch_norm(module.bn, y)
    return module.act((y.to(folds.acc) * affine.scale + affine.shift).to(folds.dtype))


def pool_mixer_block(block, x: torch.Tensor, folds: Folds, ops=CustomOps) -> torch.Tensor:
    """``x + MSPool(BN1(x))``, then ``+ ConvMLP(BN2(.))`` with BN2 folded into the MLP's first layer."""
    bn1 = folds.batch_norm(block.norm1, x)
    if _uses_running_stats(block.norm2):  # BN2's fold is known before the mixer runs: one fused block
        return ops.pool_mixer_block(x, bn1, block.mixer.pool_sizes, folds.conv_mlp(block.mlp, batch_norm=block.norm2))
    x = ops.pool_mixer(x, bn1, block.mixer.pool_sizes)  # training: BN2's batch statistics are those of this x
    return ops.conv_mlp(x, folds.conv_mlp(block.mlp, x, batch_norm=block.norm2), residual=x)


def attention_block(block, x: torch.Tensor, folds: Folds, ops=CustomOps) -> torch.Tensor:
    dw = folds.depthwise(block.pos)
    if dw is None and synchronising_group(block.pos.bn) is not None:
        x = x + synchronised_conv_bn_act(block.pos, _nchw(x), folds)
    elif dw is None:
        x = x + _nhwc(block.pos(_nchw(x))).to(x.dtype)
    else:
        x = ops.dwconv(x, dw, "gelu", residual=True)
    attn = block.attn
    t = ops.layer_norm(x, folds.layer_norm(block.norm1))
    x = ops.pooled_kv_attention(t, folds.linear(attn.q), folds.linear(attn.kv), folds.linear(attn.proj),
                                attn.num_heads, attn.kv_pool_sizes, residual=x)
    return ops.layer_norm_conv_mlp(x, folds.layer_norm(block.norm2), folds.conv_mlp(block.mlp))


def neck(layers: nn.Sequential, x: torch.Tensor, folds: Folds, ops=CustomOps) -> torch.Tensor:
    conv1, norm1, dwconv, norm2 = layers
    projection = folds.linear(conv1)
    x = ops.layer_norm(F.linear(x, projection.weight, projection.bias), folds.layer_norm(norm1))
    x = ops.dwconv(x, folds.depthwise(dwconv), "none", residual=False)
    return ops.layer_norm(x, folds.layer_norm(norm2))


def run_encoder(model, images: torch.Tensor, folds: Folds, ops=CustomOps) -> torch.Tensor:
    """The encoder on ``ops`` with weights from ``folds``; images already in ``folds.dtype``. The output is
    (B, out_channels, S/16, S/16) in channels-last memory."""
    x = images.contiguous(memory_format=torch.channels_last)
    for layer in model.stem:
        x = conv_bn_act(layer, x, folds)
    x = _nhwc(x)
    for block in model.stage1:
        x = pool_mixer_block(block, x, folds, ops)
    x = _nhwc(conv_bn_act(model.down1, _nchw(x), folds))
    for block in model.stage2:
        x = pool_mixer_block(block, x, folds, ops)
    x = _nhwc(conv_bn_act(model.down2, _nchw(x), folds))
    for block in model.stage3:
        x = attention_block(block, x, folds, ops)
    return _nchw(neck(model.neck, x, folds, ops))


def fused_forward(model, images: torch.Tensor) -> torch.Tensor:
    """``model(images)`` on the fused ops (see the module docstring for the three ways through)."""
    check_images(model, images)
    dtype = activation_dtype(images)
    if not torch.compiler.is_compiling():
        from litesam_kernels.model import litevit_prepared

        out = litevit_prepared.prepared_forward(model, images, dtype)
        if out is not None:
            return out
    # the custom ops run their references on empty tensors anyway, and the references are plain
    # (differentiable) torch
    ops = ReferenceOps if images.shape[0] == 0 else CustomOps
    return run_encoder(model, images.to(dtype), Folds(dtype), ops)
