"""The engine's device stages, shared by every model and front end: fused post-processing, the score
filters, NMS within and across crops with torchvision's exact order, packed-mask uncropping and SAM 1's
small-region pass (and its static ``postprocess_small_regions`` for code that calls it).

Semantics are SAM's (``../shared/research/anchors.md`` §1): ``iou > pred_iou_thresh`` (strict),
``stability >= stability_score_thresh`` (NaN fails), a filter off when its threshold is <= 0; boxes int64
inclusive XYXY; NMS suppresses on IoU > threshold.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch

from litesam_kernels import ops
from litesam_kernels.engine.geometry import box_area
from litesam_kernels.ops.bitmask import pack_masks, unpack_masks

# torchvision.ops.batched_nms switches from the coordinate trick (one nms) to a per-class loop with an
# unstable re-sort above this many box coordinates.
_VANILLA_NMS_NUMEL = {"cpu": 4000}
_VANILLA_NMS_NUMEL_DEFAULT = 100_000
_PACK_CHUNK = 16  # masks per pack call: bounds its int64 temporaries


# ---------------------------------------------------------------------------------------------- NMS
def sam_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """``torchvision.ops.batched_nms(boxes, scores, zeros, iou_threshold)`` with its exact output order.

    Greedy NMS (stable order, as torchvision's CPU and CUDA ``nms``) through :func:`litesam_kernels.ops.nms`;
    above torchvision's coordinate-trick limit (1000 boxes on CPU, 25 000 elsewhere) the kept indices are
    re-sorted by ascending index and then by ``scores`` with the default (unstable) ``torch.sort`` on the
    same device, exactly as torchvision's ``_batched_nms_vanilla`` does. Ties are common in SAM's AMG
    (crop NMS scores are one value per crop; the small-region NMS scores are 0/1), so the order matters.
    """
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    keep = ops.nms(boxes, scores.to(boxes.dtype), iou_threshold)
    if boxes.numel() > _VANILLA_NMS_NUMEL.get(boxes.device.type, _VANILLA_NMS_NUMEL_DEFAULT):
        keep = torch.sort(keep).values
        keep = keep[scores[keep].sort(descending=True)[1]]
    return keep


def crop_nms_scores(crop_boxes: torch.Tensor) -> torch.Tensor:
    """SAM's cross-crop NMS scores: ``1 / box_area(crop box)`` (prefers masks of smaller crops)."""
    return 1 / box_area(crop_boxes)


# ---------------------------------------------------------------------------------------------- filters
def score_filter(iou_preds: torch.Tensor, stability: torch.Tensor, pred_iou_thresh: float,
                 stability_score_thresh: float) -> torch.Tensor:
    """SAM's two score filters as one bool mask (each off when its threshold is <= 0)."""
    valid = torch.ones_like(iou_preds, dtype=torch.bool)
    if pred_iou_thresh > 0.0:
        valid &= iou_preds > pred_iou_thresh
    if stability_score_thresh > 0.0:
        valid &= stability >= stability_score_thresh
    return valid


def any_per_batch(valid: torch.Tensor, batch: int) -> torch.Tensor:
    """(ceil(N / batch),) bool: did any of each consecutive group of ``batch`` entries pass?"""
    groups = torch.arange(valid.shape[0], device=valid.device) // batch
    counts = torch.zeros(-(-valid.shape[0] // batch), dtype=torch.long, device=valid.device)
    return counts.index_add_(0, groups, valid.long()) > 0


# ---------------------------------------------------------------------------------------------- post-processing
def postprocess(logits: torch.Tensor, input_size, crop_size, image_size: int, mask_threshold: float,
                stability_offset: float, fused: bool, upscale: Optional[Callable] = None,
                chunk: int = 64, fused_op: Optional[Callable] = None) -> ops.PostprocessedMasks:
    """(N, M, h, w) low-res logits -> N*M packed masks at ``crop_size`` with stability, boxes and areas.

    fused: one pass of :func:`ops.postprocess_masks` (two resizes, or one when ``image_size`` is the
    low-res size), or of ``fused_op(logits, input_size, crop_size, mask_threshold, offset, image_size)`` (a
    compiled wrapper of it). Otherwise ``upscale`` (the model's own resize) on ``chunk`` prompts at a time,
    then the same stability / threshold / box / packing."""
    if fused:
        if fused_op is not None:
            return ops.PostprocessedMasks(*fused_op(logits.flatten(0, 1), list(input_size), list(crop_size),
                                                    mask_threshold, stability_offset, image_size))
        return ops.postprocess_masks(logits.flatten(0, 1), input_size, crop_size, mask_threshold=mask_threshold,
                                     stability_offset=stability_offset, packed=True, image_size=image_size)
    packed, stability, boxes, areas = [], [], [], []
    for start in range(0, logits.shape[0], chunk):
        full = upscale(logits[start:start + chunk]).flatten(0, 1)
        stability.append(ops.stability_score(full, mask_threshold, stability_offset))
        masks = full > mask_threshold
        del full
        boxes.append(ops.masks_to_boxes(masks))
        areas.append(masks.sum((-1, -2)))
        packed.append(pack_stack(masks))
    return ops.PostprocessedMasks(torch.cat(packed), torch.cat(stability), torch.cat(boxes), torch.cat(areas))


def pack_stack(masks: torch.Tensor) -> torch.Tensor:
    """pack_masks a few masks at a time (bounded temporaries)."""
    if masks.shape[0] == 0:
        return pack_masks(masks)
    return torch.cat([pack_masks(masks[i:i + _PACK_CHUNK]) for i in range(0, masks.shape[0], _PACK_CHUNK)])


# ---------------------------------------------------------------------------------------------- masks
def uncrop_packed(packed: torch.Tensor, crop_box: Sequence[int], image_size: Sequence[int],
                  out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bool (N, H, W) image-frame masks of packed crop-frame masks (segment_anything's ``uncrop_masks``)."""
    height, width = image_size
    x0, y0, x1, y1 = crop_box
    if out is None:
        out = torch.zeros((packed.shape[0], height, width), dtype=torch.bool, device=packed.device)
    out[:, y0:y1, x0:x1] = unpack_masks(packed, x1 - x0)
    return out


def small_region_pass(masks: torch.Tensor, min_area: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """SAM 1's per-mask holes-then-islands removal (``remove_small_regions``, OpenCV semantics) on bool
    (N, H, W) masks: (new masks, changed (N,) bool)."""
    masks, holes_changed = ops.remove_small_regions(masks, min_area, "holes")
    masks, islands_changed = ops.remove_small_regions(masks, min_area, "islands")
    return masks, holes_changed | islands_changed


def small_region_nms(changed: torch.Tensor, new_boxes: torch.Tensor, nms_thresh: float) -> torch.Tensor:
    """SAM 1's NMS after the small-region pass: scores 1 for unchanged masks, 0 for changed ones, on CPU
    tensors as segment_anything runs it (the tie order of torchvision's CPU path decides)."""
    scores = (~changed).float().cpu()
    return sam_batched_nms(new_boxes.float().cpu(), scores, nms_thresh)


def postprocess_small_regions(mask_data, min_area: float, nms_thresh: float):
    """SAM 1's static ``SamAutomaticMaskGenerator.postprocess_small_regions`` on a ``MaskData`` (anything
    with ``"rles"``, ``"boxes"`` and ``filter(keep)``; edited in place and returned): holes then islands
    removed from every mask, NMS preferring unchanged masks, new RLEs and boxes for the kept changed ones.
    The masks are decoded on the host and processed with the CPU kernels, as segment_anything does."""
    from litesam_kernels.ops.rle import mask_to_rle, rle_to_mask

    if len(mask_data["rles"]) == 0:
        return mask_data
    masks = torch.from_numpy(np.stack([rle_to_mask(rle) for rle in mask_data["rles"]]))
    masks, changed = small_region_pass(masks, min_area)
    boxes = ops.masks_to_boxes(masks)
    keep = small_region_nms(changed, boxes, nms_thresh)
    renewed = keep[changed[keep]]
    if len(renewed):
        stored = mask_data["boxes"]
        for i, rle in zip(renewed.tolist(), mask_to_rle(masks[renewed])):
            mask_data["rles"][i] = rle
            stored[i] = boxes[i] if isinstance(stored, torch.Tensor) else boxes[i].numpy()
    mask_data.filter(keep)
    return mask_data


__all__ = ["any_per_batch", "crop_nms_scores", "pack_stack", "postprocess", "postprocess_small_regions", "sam_batched_nms",
           "score_filter",
           "small_region_nms", "small_region_pass", "uncrop_packed"]
