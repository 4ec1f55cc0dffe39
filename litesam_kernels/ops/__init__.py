"""Fused ops, one module per op family. Each op is also a ``torch.ops.litesam.<name>`` custom op
(torch.compile-safe) that picks its backend per call (see ``litesam_kernels._backend``)."""
# SegEvery post-processing: box and mask NMS, SAM's mask post-processing, RLE, small regions.
from litesam_kernels.ops.nms import batched_nms, nms
from litesam_kernels.ops.mask_nms import mask_iou, mask_nms, matrix_nms
from litesam_kernels.ops.mask_postprocess import PostprocessedMasks, masks_to_boxes, postprocess_masks, stability_score
from litesam_kernels.ops.rle import area_from_rle, coco_encode_rle, mask_to_rle, rle_to_mask
from litesam_kernels.ops.small_regions import (connected_component_areas, connected_components, fill_small_regions,
                                               remove_small_regions)
# AutoPPN prompt decoding.
from litesam_kernels.ops.ppn_decode import PPNPrompts, ppn_decode
# LiteViT blocks (channels-last, forward and backward).
from litesam_kernels.ops.attention import (kv_pool2d, multi_head_attention, multi_head_attention_projected,
                                          pooled_kv_attention)
from litesam_kernels.ops.conv_block import dwconv_act, fold_batchnorm
from litesam_kernels.ops.conv_mlp import conv_mlp, fold_batchnorm_into_linear
from litesam_kernels.ops.layer_norm import layer_norm2d
from litesam_kernels.ops.pool_mixer import pool_mixer
from litesam_kernels.ops.pool_mixer_block import pool_mixer_block

__all__ = [
    "PPNPrompts",
    "PostprocessedMasks",
    "area_from_rle",
    "batched_nms",
    "coco_encode_rle",
    "connected_component_areas",
    "connected_components",
    "conv_mlp",
    "dwconv_act",
    "fill_small_regions",
    "fold_batchnorm",
    "fold_batchnorm_into_linear",
    "kv_pool2d",
    "layer_norm2d",
    "mask_iou",
    "mask_nms",
    "mask_to_rle",
    "masks_to_boxes",
    "matrix_nms",
    "multi_head_attention",
    "multi_head_attention_projected",
    "nms",
    "pool_mixer",
    "pool_mixer_block",
    "pooled_kv_attention",
    "postprocess_masks",
    "ppn_decode",
    "remove_small_regions",
    "rle_to_mask",
    "stability_score",
]
