"""The host half of the engine: one device-to-host copy per image, then SAM-AMG records.

Record format (``SamAutomaticMaskGenerator.generate`` / ``SAM2AutomaticMaskGenerator.generate``), keys in
upstream's order: ``segmentation`` (Fortran-ordered bool (H, W) array decoded like upstream's
``rle_to_mask``, an uncompressed RLE, or a COCO RLE with str counts), ``area`` (int), ``bbox`` (XYWH of the
inclusive XYXY box), ``predicted_iou`` (float), ``point_coords`` ([[x, y]]), ``stability_score`` (float),
``crop_box`` (XYWH). Scores are upcast to float32 before numpy (numpy has no bfloat16); the dtypes of
``bbox``, ``crop_box`` and ``point_coords`` follow the front end's upstream (``EngineOptions.field_types``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from litesam_kernels.engine.geometry import box_xyxy_to_xywh
from litesam_kernels.ops.rle import coco_encode_rle, rles_from_counts

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


def check_output_mode(output_mode: str) -> str:
    """ValueError for an unknown mode; ImportError now (not after the model ran) when coco_rle lacks pycocotools."""
    if output_mode not in OUTPUT_MODES:
        raise ValueError(f"Unknown output_mode {output_mode!r}; expected one of {', '.join(OUTPUT_MODES)}.")
    if output_mode == "coco_rle":
        try:
            import pycocotools.mask  # noqa: F401
        except ImportError as exc:
            raise ImportError("output_mode='coco_rle' needs pycocotools (pip install pycocotools)") from exc
    return output_mode


def to_host_once(tensors: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """Copy several tensors of one device to the host in one transfer (their bytes concatenated)."""
    parts = [t.contiguous().view(-1).view(torch.uint8) for t in tensors.values()]
    buffer = torch.cat(parts).cpu().numpy() if parts else np.zeros(0, np.uint8)
    out, offset = {}, 0
    for (name, t), part in zip(tensors.items(), parts):
        size = part.numel()
        dtype = np.dtype(str(t.dtype).replace("torch.", ""))
        out[name] = buffer[offset:offset + size].view(dtype).reshape(tuple(t.shape))
        offset += size
    return out


def unpack_on_host(packed: np.ndarray, width: int) -> List[np.ndarray]:
    """Packed int32 (N, H, words) masks (``ops.bitmask`` layout: LSB first, little-endian words) -> N bool
    (H, W) Fortran-ordered arrays, as upstream's ``rle_to_mask`` returns them."""
    bits = np.unpackbits(np.ascontiguousarray(packed).view(np.uint8), axis=-1, bitorder="little")
    return [np.asfortranarray(mask[:, :width].astype(bool)) for mask in bits]


def segmentations(output_mode: str, host: Dict[str, np.ndarray], height: int, width: int):
    """Per record: the segmentation in ``output_mode`` and its area, from the host copy of ``packed``
    (binary masks) or ``rle_counts`` / ``rle_lengths``."""
    if output_mode == "binary_mask":
        masks = unpack_on_host(host["packed"], width)
        return masks, [int(np.count_nonzero(m)) for m in masks]
    rles = rles_from_counts(host["rle_counts"], host["rle_lengths"], height, width)
    areas = [int(sum(rle["counts"][1::2])) for rle in rles]
    if output_mode == "coco_rle":
        return [coco_encode_rle(rle) for rle in rles], areas
    return rles, areas


def device_fields(packed: torch.Tensor, width: int, output_mode: str) -> Dict[str, torch.Tensor]:
    """What the host needs of the packed image-frame masks: themselves (binary masks, 1 bit per pixel) or
    their RLE run lengths, found on the device."""
    if output_mode == "binary_mask":
        return {"packed": packed}
    counts, lengths = torch.ops.litesam.mask_to_rle_counts(packed, width)
    return {"rle_counts": counts, "rle_lengths": lengths}


def build_records(segmentation: Sequence[Any], areas: Sequence[int], boxes: np.ndarray, iou_preds: np.ndarray,
                  points: np.ndarray, stability: np.ndarray, crop_boxes: np.ndarray) -> List[Dict[str, Any]]:
    """The records, fields already in their upstream dtypes (``boxes`` XYXY, ``crop_boxes`` XYXY)."""
    return [{
        "segmentation": segmentation[i],
        "area": areas[i],
        "bbox": box_xyxy_to_xywh(boxes[i]).tolist(),
        "predicted_iou": iou_preds[i].item(),
        "point_coords": [points[i].tolist()],
        "stability_score": stability[i].item(),
        "crop_box": box_xyxy_to_xywh(crop_boxes[i]).tolist(),
    } for i in range(len(segmentation))]


def segmentation_to_mask(segmentation) -> np.ndarray:
    """(H, W) bool mask of a record's ``segmentation``, whatever the output mode: a binary mask, an
    uncompressed RLE or a COCO RLE with string counts (pycocotools)."""
    from litesam_kernels.ops.rle import rle_to_mask

    if isinstance(segmentation, np.ndarray):
        return segmentation.astype(bool, copy=False)
    if isinstance(segmentation["counts"], (str, bytes)):
        from pycocotools import mask as mask_utils

        return mask_utils.decode(segmentation).astype(bool)
    return rle_to_mask(segmentation)


__all__ = ["OUTPUT_MODES", "build_records", "check_output_mode", "device_fields",
           "segmentation_to_mask", "segmentations", "to_host_once", "unpack_on_host"]
