"""Fused ops, one module per op family. Each op is also a ``torch.ops.litesam.<name>`` custom op
(torch.compile-safe) that picks its backend per call (see ``litesam_kernels._backend``)."""
from litesam_kernels.ops.attention import kv_pool2d, multi_head_attention, pooled_kv_attention
from litesam_kernels.ops.conv_block import dwconv_act, fold_batchnorm
from litesam_kernels.ops.conv_mlp import conv_mlp, fold_batchnorm_into_linear
from litesam_kernels.ops.layer_norm import layer_norm2d
from litesam_kernels.ops.nms import batched_nms, nms
from litesam_kernels.ops.pool_mixer import pool_mixer
from litesam_kernels.ops.ppn_decode import PPNPrompts, ppn_decode

__all__ = [
    "PPNPrompts",
    "batched_nms",
    "conv_mlp",
    "dwconv_act",
    "fold_batchnorm",
    "fold_batchnorm_into_linear",
    "kv_pool2d",
    "layer_norm2d",
    "multi_head_attention",
    "nms",
    "pool_mixer",
    "pooled_kv_attention",
    "ppn_decode",
]
