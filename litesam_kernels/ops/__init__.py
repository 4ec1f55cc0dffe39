"""Fused ops, one module per op family. Each op is also a ``torch.ops.litesam.<name>`` custom op
(torch.compile-safe) that picks its backend per call (see ``litesam_kernels._backend``)."""
from litesam_kernels.ops.nms import batched_nms, nms
from litesam_kernels.ops.mask_postprocess import PostprocessedMasks, masks_to_boxes, postprocess_masks, stability_score
from litesam_kernels.ops.rle import area_from_rle, coco_encode_rle, mask_to_rle, rle_to_mask
from litesam_kernels.ops.small_regions import connected_components, remove_small_regions

__all__ = ["batched_nms", "nms"]
__all__ += ["PostprocessedMasks", "masks_to_boxes", "postprocess_masks", "stability_score"]
__all__ += ["area_from_rle", "coco_encode_rle", "mask_to_rle", "rle_to_mask"]
__all__ += ["connected_components", "remove_small_regions"]
