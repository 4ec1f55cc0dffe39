"""The fused LiteViT encoder's one door to the kernels: three interchangeable op tables.

``litevit_fused.py`` writes the encoder once, against an op table; which table runs is decided once per
forward (``table_for``), never per call:

- ``CUSTOM_OPS``: the public ops (``litesam_kernels.ops.*`` = ``torch.ops.litesam.*``): each call validates
  its inputs, picks its backend, records autograd and is opaque to torch.compile. Training, autograd and
  compiled graphs run these.
- the Triton table: the Triton launchers themselves (``litesam_kernels.triton.*``), for the prepared
  inference path on the triton backend: no custom-op dispatch, no validation, no casts (the encoder's
  entry validated the images; the prepared weights are already in the launchers' dtypes and layouts).
- the reference table: the ops' torch references (``_<op>_reference``), the same path on the reference
  backend (CPU without a forced backend).

Every table takes the same prepared weights (the NamedTuples below, built by ``litevit_fused.Folds``):
matrix weights in the activation dtype, per-channel vectors in the accumulation dtype (float32; float64
for float64 activations), contiguous. On those inputs the custom ops' own casts are no-ops, so the
prepared path and the custom-op path compute bit-identical outputs.

When a launcher's signature changes, this file is the one place in the model to follow it.
"""
from __future__ import annotations

import functools
import importlib
from typing import NamedTuple, Optional, Sequence, Tuple

import torch

from litesam_kernels import _backend
from litesam_kernels.ops._autocast import autocast_off

# the op modules (importlib: ``litesam_kernels.ops`` re-exports functions under some of the same names)
_attention = importlib.import_module("litesam_kernels.ops.attention")
_conv_block = importlib.import_module("litesam_kernels.ops.conv_block")
_conv_mlp = importlib.import_module("litesam_kernels.ops.conv_mlp")
_layer_norm = importlib.import_module("litesam_kernels.ops.layer_norm")
_pool_mixer = importlib.import_module("litesam_kernels.ops.pool_mixer")
_pool_mixer_block = importlib.import_module("litesam_kernels.ops.pool_mixer_block")

# ------------------------------------------------------------------------------------ prepared weights


class BatchNormAffine(NamedTuple):
    """``bn(x) = x * scale + shift`` per channel (accumulation dtype)."""

    scale: torch.Tensor
    shift: torch.Tensor


class ConvWeights(NamedTuple):
    """A dense k x k conv with its BatchNorm folded in (activation dtype; the weight channels-last)."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: Tuple[int, int]
    padding: Tuple[int, int]


class ConvMLPWeights(NamedTuple):
    """``W2 GELU(W1 x + b1) + b2``: w1 (HID, C), w2 (C, HID) in the activation dtype; b1, b2 accumulation."""

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor


class DepthwiseWeights(NamedTuple):
    """Depthwise k x k conv + bias (a folded BatchNorm), accumulation dtype: weight (C, k, k) for the
    references and custom op, taps (k*k, C) for the Triton launcher (None where no launcher runs)."""

    weight: torch.Tensor
    bias: torch.Tensor
    taps: Optional[torch.Tensor]


class LayerNormWeights(NamedTuple):
    weight: torch.Tensor  # accumulation dtype
    bias: torch.Tensor
    eps: float


class LinearWeights(NamedTuple):
    weight: torch.Tensor  # (out, in), activation dtype
    bias: Optional[torch.Tensor]
    bias_acc: Optional[torch.Tensor] = None  # the bias in the accumulation dtype (a fused epilogue adds it)


# ------------------------------------------------------------------------------------ the tables
def _without_autocast(op):
    """Run ``op`` with autocast off: a custom op's body would otherwise inherit it (the references' float32
    matmuls would run in 16 bits), and the fused path casts explicitly anyway."""

    @functools.wraps(op)
    def call(x, *args, **kwargs):
        with autocast_off(x.device.type):
            return op(x, *args, **kwargs)

    return staticmethod(call)


class _Blocks:
    """The fused blocks, as compositions of a table's ops until single kernels for them land (then a table
    overrides the method: the model calls these, so the switch is made here and nowhere else)."""

    @classmethod
    def pool_mixer_block(cls, x, bn: BatchNormAffine, pool_sizes: Sequence[int], mlp: ConvMLPWeights):
        """``y = pool_mixer(x)``, then ``y + MLP(y)`` with the second BatchNorm folded into ``mlp`` (eval only:
        in training its batch statistics need y)."""
        y = cls.pool_mixer(x, bn, pool_sizes)
        return cls.conv_mlp(y, mlp, residual=y)

    @classmethod
    def layer_norm_conv_mlp(cls, x, ln: LayerNormWeights, mlp: ConvMLPWeights):
        """``x + MLP(LN(x))`` (the attention block's second half)."""
        return cls.conv_mlp(cls.layer_norm(x, ln), mlp, residual=x)


class CustomOps(_Blocks):
    """The public custom ops (validation, backend choice, autograd, torch.compile), called with autocast off."""

    name = "custom_ops"

    @_without_autocast
    def pool_mixer(x, bn: BatchNormAffine, pool_sizes: Sequence[int]):
        return _pool_mixer.pool_mixer(x, bn.scale, bn.shift, pool_sizes)

    @_without_autocast
    def pool_mixer_block(x, bn: BatchNormAffine, pool_sizes: Sequence[int], mlp: ConvMLPWeights):
        return _pool_mixer_block.pool_mixer_block(x, bn.scale, bn.shift, mlp.w1, mlp.b1, mlp.w2, mlp.b2, pool_sizes)

    @_without_autocast
    def conv_mlp(x, mlp: ConvMLPWeights, residual: Optional[torch.Tensor]):
        return _conv_mlp.conv_mlp(x, mlp.w1, mlp.b1, mlp.w2, mlp.b2, residual)

    @_without_autocast
    def dwconv(x, dw: DepthwiseWeights, activation: str, residual: bool):
        return _conv_block.dwconv_act(x, dw.weight, dw.bias, activation, residual)

    @_without_autocast
    def layer_norm(x, ln: LayerNormWeights):
        return _layer_norm.layer_norm2d(x, ln.weight, ln.bias, ln.eps)

    @_without_autocast
    def layer_norm_conv_mlp(x, ln: LayerNormWeights, mlp: ConvMLPWeights):
        return _conv_mlp.conv_mlp(x, mlp.w1, mlp.b1, mlp.w2, mlp.b2, residual=x, norm_weight=ln.weight,
                                  norm_bias=ln.bias, norm_eps=ln.eps)

    @_without_autocast
    def pooled_kv_attention(t, q: LinearWeights, kv: LinearWeights, proj: LinearWeights, num_heads: int,
                            pool_sizes: Sequence[int], residual: torch.Tensor):
        return _attention.pooled_kv_attention(t, q.weight, q.bias, kv.weight, kv.bias, proj.weight, proj.bias,
                                              num_heads, pool_sizes, residual=residual)


class _DirectOps(_Blocks):
    """A table that calls kernels (or references) directly; subclasses give the per-op primitives."""

    @classmethod
    def pooled_kv_attention(cls, t, q, kv, proj, num_heads, pool_sizes, residual):
        # the op's own composition (ops.attention), on this table's kv_pool and attention kernels
        return _attention.compose_pooled_kv_attention(
            t, q.weight, q.bias, kv.weight, kv.bias, proj.weight, proj.bias, num_heads, pool_sizes, residual,
            kv_pool=cls.kv_pool, attention=cls.attention,
            attention_projected=functools.partial(cls.attention_projected, proj))


class ReferenceOps(_DirectOps):
    """The ops' torch references (what the custom ops run on the reference backend)."""

    name = "reference"

    @staticmethod
    def pool_mixer(x, bn, pool_sizes):
        return _pool_mixer._pool_mixer_reference(x, bn.scale, bn.shift, pool_sizes)

    @staticmethod
    def conv_mlp(x, mlp, residual):
        return _conv_mlp._conv_mlp_reference(x, mlp.w1, mlp.b1, mlp.w2, mlp.b2, residual)

    @staticmethod
    def dwconv(x, dw, activation, residual):
        return _conv_block._dwconv_reference(x, dw.weight, dw.bias, activation, residual)

    @staticmethod
    def layer_norm(x, ln):
        return _layer_norm._layer_norm_reference(x, ln.weight, ln.bias, ln.eps)

    @staticmethod
    def layer_norm_conv_mlp(x, ln, mlp):
        return _conv_mlp._conv_mlp_reference(x, mlp.w1, mlp.b1, mlp.w2, mlp.b2, x, ln.weight, ln.bias, ln.eps)

    @staticmethod
    def kv_pool(x, pool_sizes):
        return _attention._kv_pool_reference(x, pool_sizes)

    @staticmethod
    def attention(q, k, v, scale):
        return _attention._attention_reference(q, k, v, scale)[0]

    @staticmethod
    def attention_projected(proj, q, k, v, scale, residual):
        return _attention._attention_projected_reference(q, k, v, scale, proj.weight, proj.bias, residual)[0]


@functools.lru_cache(maxsize=None)
def _kernels():
    """The Triton launcher modules, imported on first use (the model imports without Triton)."""
    import types

    from litesam_kernels.triton import attention, conv_block, conv_mlp, layer_norm, pool_mixer, pool_mixer_block
    from litesam_kernels.triton._activations import fast_gelu_for
    from litesam_kernels.triton._precision import dot_precision

    return types.SimpleNamespace(attention=attention, conv_block=conv_block, conv_mlp=conv_mlp,
                                 layer_norm=layer_norm, pool_mixer=pool_mixer, pool_mixer_block=pool_mixer_block,
                                 dot_precision=dot_precision, fast_gelu_for=fast_gelu_for)


class TritonOps(_DirectOps):
    """The Triton launchers, on prepared weights and contiguous channels-last activations."""

    name = "triton"

    @staticmethod
    def pool_mixer(x, bn, pool_sizes):
        return _kernels().pool_mixer.pool_mixer_forward(x, bn.scale, pool_sizes)  # the shift cancels

    @classmethod
    def pool_mixer_block(cls, x, bn, pool_sizes, mlp):
        kernels = _kernels()
        if not kernels.pool_mixer_block.fits(x.shape[-1], mlp.w1.shape[0]):  # as the op decides: two kernels
            return super().pool_mixer_block(x, bn, pool_sizes, mlp)
        return kernels.pool_mixer_block.pool_mixer_block_forward(
            x, bn.scale, mlp.w1, mlp.b1, mlp.w2, mlp.b2, pool_sizes, kernels.dot_precision(x.dtype, "conv"),
            kernels.fast_gelu_for(x.dtype))

    @staticmethod
    def conv_mlp(x, mlp, residual):
        c = x.shape[-1]
        res = None if residual is None else residual.view(-1, c)
        y = _kernels().conv_mlp.conv_mlp_forward(x.view(-1, c), mlp.w1, mlp.b1, mlp.w2, mlp.b2, res)
        return y.view(x.shape)

    @staticmethod
    def dwconv(x, dw, activation, residual):
        k = dw.weight.shape[-1]
        return _kernels().conv_block.dwconv_forward(x, dw.taps, dw.bias, k, activation == "gelu", residual)

    @staticmethod
    def layer_norm(x, ln):
        y = _kernels().layer_norm.layer_norm_forward(x.view(-1, x.shape[-1]), ln.weight, ln.bias, ln.eps)
        return y.view(x.shape)

    @staticmethod
    def layer_norm_conv_mlp(x, ln, mlp):
        x2d = x.view(-1, x.shape[-1])
        y = _kernels().conv_mlp.conv_mlp_forward(x2d, mlp.w1, mlp.b1, mlp.w2, mlp.b2, x2d, (ln.weight, ln.bias, ln.eps))
        return y.view(x.shape)


    @staticmethod
    def kv_pool(x, pool_sizes):
        return _kernels().attention.kv_pool_forward(x, pool_sizes)

    @staticmethod
    def attention(q, k, v, scale):
        # inference: the kernel variant that does not write the log-sum-exp
        return _kernels().attention.attention_forward(q, k, v, scale, store_lse=False)[0]

    @staticmethod
    def attention_projected(proj, q, k, v, scale, residual):
        # inference: the kernel variant that does not write the backward's state
        return _kernels().attention.attention_projected_forward(q, k, v, scale, proj.weight, proj.bias_acc, residual,
                                                                store_state=False)[0]


# The op families the encoder calls (``_backend`` names): one backend choice each per forward.
OP_FAMILIES = ("pool_mixer", "pool_mixer_block", "dwconv_act", "conv_mlp", "layer_norm2d", "kv_pool2d",
               "multi_head_attention")  # the projected attention dispatches as multi_head_attention
_DIRECT = {"triton": TritonOps, "reference": ReferenceOps}


@functools.lru_cache(maxsize=None)
def _families():
    return tuple(_backend.implementations(name) for name in OP_FAMILIES)


def table_for(device: torch.device, batch_is_empty: bool = False):
    """The direct table for a forward on ``device``: ``_backend.choose`` once per op family (raising
    ``BackendUnavailableError`` for a forced backend that cannot run, as the custom ops would). When the
    families' backends differ, or a backend has no direct table, the custom ops run."""
    if batch_is_empty:
        return ReferenceOps  # the custom ops also use the references on empty tensors
    chosen = {_backend.choose(op, device) for op in _families()}
    if len(chosen) == 1:
        return _DIRECT.get(chosen.pop(), CustomOps)
    return CustomOps
