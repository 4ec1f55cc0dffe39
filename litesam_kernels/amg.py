"""``FastSamAutomaticMaskGenerator``: a drop-in for ``segment_anything.SamAutomaticMaskGenerator``.

Same constructor arguments, same ``generate(image)`` records (same order, identical RLEs, boxes, areas,
point coordinates and crop boxes, identical scores), for any segment_anything ``Sam`` model. What changes
is where the work happens:

- several point batches go through the prompt encoder and mask decoder in one call
  (``batches_per_decoder_call``);
- the low-res logits go through one fused pass (:func:`litesam_kernels.ops.postprocess_masks`: SAM's two
  bilinear resizes, threshold, stability score, box) straight to bit-packed masks, so full-resolution float
  logits are never stored (without a GPU kernel: the model's own resizes, one point batch at a time);
- filtering, boxes, stability scores and masks stay on the device; surviving masks are kept bit-packed
  (``litesam_kernels.ops.bitmask``, 32x smaller than bool) in their crop's frame; the host waits once per
  decoder call (to compact the survivors) and once per crop (the NMS keep list), never per point batch;
  ``generate_batch`` finishes each image as soon as its crops are done, so peak memory is one image's
  surviving packed masks plus one decoder call's working set;
- ``min_mask_region_area`` (holes, then islands, SAM1 semantics) runs on the device
  (:func:`litesam_kernels.ops.remove_small_regions`), in chunks of ``masks_per_chunk`` full-size masks;
- RLE encoding takes one device-to-host transfer per chunk of masks.

Tie order: segment_anything calls ``torchvision.ops.batched_nms(boxes, scores, zeros, t)``, which is one
stable-sorted ``nms`` up to 1000 boxes on CPU / 25 000 on CUDA and above that ``nms`` followed by an
**unstable** re-sort of the kept indices by score. Ties are common (crop NMS scores are one value per crop;
the small-region NMS scores are 0/1), so :func:`sam_batched_nms` reproduces that path choice and calls the
same ``torch.sort`` on the same device. The small-region NMS runs on CPU tensors, as in segment_anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from litesam_kernels import _backend, ops
from litesam_kernels.ops.bitmask import pack_masks, unpack_masks

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
# torchvision.ops.batched_nms switches from the coordinate trick (one nms) to a per-class loop with an
# unstable re-sort above this many box coordinates.
_VANILLA_NMS_NUMEL = {"cpu": 4000}
_VANILLA_NMS_NUMEL_DEFAULT = 100_000
_PACK_CHUNK = 16  # masks per pack/unpack call: bounds the int32/int64 temporaries


# ---------------------------------------------------------------------------------------------- NMS
def sam_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """``torchvision.ops.batched_nms(boxes, scores, zeros, iou_threshold)`` with its exact output order.

    Greedy NMS (stable order, as torchvision's CPU and CUDA ``nms``) through :func:`litesam_kernels.ops.nms`;
    above torchvision's coordinate-trick limit (1000 boxes on CPU, 25 000 elsewhere) the kept indices are
    re-sorted by ascending index and then by ``scores`` with the default (unstable) ``torch.sort`` on the
    same device, exactly as torchvision's ``_batched_nms_vanilla`` does.
    """
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    keep = ops.nms(boxes, scores.to(boxes.dtype), iou_threshold)
    if boxes.numel() > _VANILLA_NMS_NUMEL.get(boxes.device.type, _VANILLA_NMS_NUMEL_DEFAULT):
        keep = torch.sort(keep).values
        keep = keep[scores[keep].sort(descending=True)[1]]
    return keep


# ---------------------------------------------------------------------------------------------- state
@dataclass
class _CropMasks:
    """The masks one crop kept after its NMS, bit-packed in the crop frame."""

    crop_box: Tuple[int, int, int, int]
    points: np.ndarray  # (P, 2) float64: the crop's point grid in crop pixels
    packed: torch.Tensor  # (K, crop_h, ceil(crop_w / 32)) int32
    boxes: torch.Tensor  # (K, 4) int64, image frame (uncropped)
    iou_preds: torch.Tensor  # (K,)
    stability: torch.Tensor  # (K,) float32
    point_index: torch.Tensor  # (K,) int64 into `points`
    # segment_anything quirk: a point batch with no mask left after the score filters yields float32
    # boxes, and torch.cat promotes the crop's (then every crop's) boxes to float32.
    float_boxes: bool


class FastSamAutomaticMaskGenerator:
    """Drop-in for ``segment_anything.SamAutomaticMaskGenerator`` (same arguments, same records).

    Extra keyword-only arguments (speed/memory knobs that never change the output):
        batches_per_decoder_call: point batches (of ``points_per_batch`` points) decoded per model call.
        masks_per_chunk: full-image masks materialised at once for small-region removal and output.
        images_per_encoder_call: crop images encoded per image-encoder call in ``generate_batch``. 1 (the
            default) runs the encoder exactly as segment_anything does; larger batches are faster but on
            some devices the encoder's float results can differ in the last bits from batch size 1.
        fused_postprocess: True: masks, stability scores and boxes come from one fused pass over the
            low-res logits (:func:`litesam_kernels.ops.postprocess_masks`, bit-exact with torch's resizes
            where verified, see its docstring). False: the model's own ``postprocess_masks`` (full-resolution
            float logits of one point batch at a time), exact by construction. None (default): True when a
            compiled or Triton kernel runs that op on the model's device, else False.
    """

    def __init__(
        self,
        model,
        points_per_side: Optional[int] = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Optional[List[np.ndarray]] = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        batches_per_decoder_call: int = 4,
        masks_per_chunk: int = 64,
        images_per_encoder_call: int = 1,
        fused_postprocess: Optional[bool] = None,
    ) -> None:
        from segment_anything.predictor import SamPredictor
        from segment_anything.utils.amg import build_all_layer_point_grids

        if (points_per_side is None) == (point_grids is None):
            raise ValueError("Exactly one of points_per_side or point_grids must be provided.")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"Unknown output_mode {output_mode!r}; expected one of {', '.join(OUTPUT_MODES)}.")
        for name, value in (("points_per_batch", points_per_batch), ("batches_per_decoder_call", batches_per_decoder_call),
                            ("masks_per_chunk", masks_per_chunk), ("images_per_encoder_call", images_per_encoder_call)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if output_mode == "coco_rle":
            from pycocotools import mask as _mask_utils  # noqa: F401  (fail now, as segment_anything does)

        if points_per_side is not None:
            self.point_grids = build_all_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        else:
            self.point_grids = point_grids
        if len(self.point_grids) < crop_n_layers + 1:
            raise ValueError(f"point_grids needs one grid per crop layer ({crop_n_layers + 1}), got {len(self.point_grids)}")

        self.predictor = SamPredictor(model)
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.batches_per_decoder_call = int(batches_per_decoder_call)
        self.masks_per_chunk = int(masks_per_chunk)
        self.images_per_encoder_call = int(images_per_encoder_call)
        if fused_postprocess is None:
            # The fused op's reference fallback is slower than torch's own resizes: fuse only with a kernel.
            op = _backend.implementations("postprocess_masks")
            fused_postprocess = _backend.choose(op, torch.device(model.device)) != "reference"
        self.fused_postprocess = bool(fused_postprocess)

    @property
    def model(self):
        return self.predictor.model

    # ------------------------------------------------------------------------------------------ public
    @torch.no_grad()
    def generate(self, image: np.ndarray) -> List[Dict[str, Any]]:
        """Masks for one HWC uint8 RGB image: the records of ``SamAutomaticMaskGenerator.generate``.

        Raises:
            TypeError: ``image`` is not a numpy array, or not uint8.
            ValueError: not HxWx3, or empty.
        """
        return self.generate_batch([image])[0]

    @torch.no_grad()
    def generate_batch(self, images: Sequence[np.ndarray]) -> List[List[Dict[str, Any]]]:
        """``[generate(image) for image in images]`` in one call (images may differ in size); the crops of
        all images go through the image encoder in groups of ``images_per_encoder_call``."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if not isinstance(images, (list, tuple)):
            raise TypeError(f"images must be a list of HxWx3 uint8 arrays, got {type(images).__name__}")
        images = [_check_image(image, f"images[{i}]") for i, image in enumerate(images)]
        crops = []  # (image index, crop box, layer index)
        from segment_anything.utils.amg import generate_crop_boxes

        for i, image in enumerate(images):
            crop_boxes, layer_idxs = generate_crop_boxes(image.shape[:2], self.crop_n_layers, self.crop_overlap_ratio)
            crops += [(i, tuple(int(v) for v in box), layer) for box, layer in zip(crop_boxes, layer_idxs)]
        per_image: List[List[_CropMasks]] = [[] for _ in images]
        crops_left = [sum(1 for c in crops if c[0] == i) for i in range(len(images))]
        records: List[Optional[List[Dict[str, Any]]]] = [None] * len(images)
        for start in range(0, len(crops), self.images_per_encoder_call):
            group = crops[start:start + self.images_per_encoder_call]
            encoded = self._encode([images[i][box[1]:box[3], box[0]:box[2], :] for i, box, _ in group])
            for (i, box, layer), (features, input_size) in zip(group, encoded):
                per_image[i].append(self._process_crop(features, input_size, box, layer, images[i].shape[:2]))
                crops_left[i] -= 1
                if crops_left[i] == 0:  # finish an image as soon as its crops are done: frees its masks
                    records[i] = self._records(per_image[i], images[i].shape[:2])
                    per_image[i] = []
        return records

    # ------------------------------------------------------------------------------------------ model
    def _encode(self, crop_images: List[np.ndarray]) -> List[Tuple[torch.Tensor, Tuple[int, int]]]:
        """segment_anything's ``SamPredictor.set_image`` for several crops: (features (1, C, h, w), input size)."""
        model = self.model
        transformed, sizes = [], []
        for crop in crop_images:
            if model.image_format != "RGB":
                crop = crop[..., ::-1]
            resized = self.predictor.transform.apply_image(crop)
            tensor = torch.as_tensor(resized, device=model.device).permute(2, 0, 1).contiguous()[None, :, :, :]
            sizes.append(tuple(tensor.shape[-2:]))
            transformed.append(model.preprocess(tensor))
        features = model.image_encoder(torch.cat(transformed)) if len(transformed) > 1 else model.image_encoder(transformed[0])
        return [(features[i:i + 1], sizes[i]) for i in range(len(crop_images))]

    def _process_crop(self, features, input_size, crop_box, layer_idx, orig_size) -> _CropMasks:
        model = self.model
        device = model.device
        x0, y0, x1, y1 = crop_box
        crop_size = (y1 - y0, x1 - x0)
        points = self.point_grids[layer_idx] * np.array(crop_size)[None, ::-1]
        in_points = torch.as_tensor(self.predictor.transform.apply_coords(points, crop_size), device=device)
        dense_pe = model.prompt_encoder.get_dense_pe()
        decoder_points = self.points_per_batch * self.batches_per_decoder_call
        kept: List[Dict[str, torch.Tensor]] = []
        batch_has_masks: List[torch.Tensor] = []
        for start in range(0, len(points), decoder_points):
            batch_points = in_points[start:start + decoder_points]
            labels = torch.ones(batch_points.shape[0], dtype=torch.int, device=device)
            sparse, dense = model.prompt_encoder(points=(batch_points[:, None, :], labels[:, None]), boxes=None, masks=None)
            low_res, iou_preds = model.mask_decoder(
                image_embeddings=features, image_pe=dense_pe, sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense, multimask_output=True,
            )
            part = self._postprocess(low_res, iou_preds, start, input_size, crop_box, crop_size, orig_size)
            batch_has_masks.append(part.pop("scored"))
            survivors = torch.nonzero(part.pop("valid")).squeeze(1)  # the one host wait of this decoder call
            kept.append({k: v[survivors] for k, v in part.items()})
        data = {k: torch.cat([d[k] for d in kept]) for k in kept[0]}
        keep = sam_batched_nms(data["boxes"].float(), data["iou_preds"], self.box_nms_thresh)
        data = {k: v[keep] for k, v in data.items()}
        offset = torch.tensor([[x0, y0, x0, y0]], device=data["boxes"].device)
        float_boxes = not bool(torch.cat(batch_has_masks).all())
        return _CropMasks(crop_box, points, data["packed"], data["boxes"] + offset, data["iou_preds"],
                          data["stability"], data["point_index"], float_boxes)

    def _postprocess(self, low_res, iou_preds, first_point, input_size, crop_box, crop_size, orig_size):
        """segment_anything's ``_process_batch`` for the point batches of one decoder call, with validity
        flags instead of filtering; masks come out bit-packed from one fused pass over the low-res logits."""
        from segment_anything.utils.amg import is_box_near_crop_edge

        model = self.model
        masks_per_point = low_res.shape[1]
        if self.fused_postprocess:
            post = ops.postprocess_masks(
                low_res.flatten(0, 1), input_size, crop_size, mask_threshold=model.mask_threshold,
                stability_offset=self.stability_score_offset, packed=True, image_size=model.image_encoder.img_size,
            )
        else:
            post = self._postprocess_unfused(low_res, input_size, crop_size)
        iou_preds = iou_preds.flatten(0, 1)
        valid = torch.ones_like(iou_preds, dtype=torch.bool)
        if self.pred_iou_thresh > 0.0:
            valid &= iou_preds > self.pred_iou_thresh
        if self.stability_score_thresh > 0.0:
            valid &= post.stability_scores >= self.stability_score_thresh
        # Per point batch of segment_anything: did any mask pass the score filters (see _CropMasks)?
        per_batch = self.points_per_batch * masks_per_point
        scored = torch.zeros(-(-valid.shape[0] // per_batch), dtype=torch.long, device=valid.device)
        scored = scored.index_add_(0, torch.arange(valid.shape[0], device=valid.device) // per_batch, valid.long()) > 0
        valid &= ~is_box_near_crop_edge(post.boxes, list(crop_box), [0, 0, orig_size[1], orig_size[0]])
        point_index = first_point + torch.arange(valid.shape[0], device=valid.device) // masks_per_point
        return {"packed": post.masks, "boxes": post.boxes, "iou_preds": iou_preds, "stability": post.stability_scores,
                "point_index": point_index, "valid": valid, "scored": scored}

    def _postprocess_unfused(self, low_res, input_size, crop_size) -> ops.PostprocessedMasks:
        """The model's own ``postprocess_masks`` (full-resolution logits of one point batch at a time),
        then the same stability / threshold / box / packing as the fused op."""
        model = self.model
        packed, stability, boxes = [], [], []
        for s in range(0, low_res.shape[0], self.points_per_batch):
            logits = model.postprocess_masks(low_res[s:s + self.points_per_batch], input_size, crop_size).flatten(0, 1)
            stability.append(ops.stability_score(logits, model.mask_threshold, self.stability_score_offset))
            masks = logits > model.mask_threshold
            del logits
            boxes.append(ops.masks_to_boxes(masks))
            packed += [pack_masks(masks[i:i + _PACK_CHUNK]) for i in range(0, masks.shape[0], _PACK_CHUNK)]
        packed = torch.cat(packed)
        return ops.PostprocessedMasks(packed, torch.cat(stability), torch.cat(boxes), None)

    # ------------------------------------------------------------------------------------------ records
    def _records(self, crops: List[_CropMasks], orig_size) -> List[Dict[str, Any]]:
        from torchvision.ops.boxes import box_area

        device = self.model.device
        crop_of = torch.cat([torch.full((c.packed.shape[0],), i, dtype=torch.long) for i, c in enumerate(crops)])
        row_of = torch.cat([torch.arange(c.packed.shape[0]) for c in crops])
        boxes = torch.cat([c.boxes for c in crops])
        iou_preds = torch.cat([c.iou_preds for c in crops])
        stability = torch.cat([c.stability for c in crops])
        point_index = torch.cat([c.point_index for c in crops])
        if len(crops) > 1:
            crop_boxes = torch.tensor([list(c.crop_box) for c in crops])
            scores = (1 / box_area(crop_boxes))[crop_of].to(boxes.device)
            keep = sam_batched_nms(boxes.float(), scores, self.crop_nms_thresh).cpu()
            boxes, iou_preds, stability = boxes[keep.to(boxes.device)], iou_preds[keep.to(device)], stability[keep.to(device)]
            point_index, crop_of, row_of = point_index[keep.to(point_index.device)], crop_of[keep], row_of[keep]

        packed_full = None
        if self.min_mask_region_area > 0 and len(row_of) > 0:
            boxes, packed_full, keep = self._remove_small_regions(crops, crop_of, row_of, boxes, orig_size)
            boxes, iou_preds, stability = boxes[keep], iou_preds[keep.to(iou_preds.device)], stability[keep.to(stability.device)]
            point_index, crop_of, row_of = point_index[keep.to(point_index.device)], crop_of[keep], row_of[keep]
            packed_full = packed_full[keep.to(packed_full.device)]

        width = orig_size[1]
        rles, binary = [], []
        for start in range(0, len(row_of), self.masks_per_chunk):
            stop = min(start + self.masks_per_chunk, len(row_of))
            if packed_full is not None:
                packed, masks = packed_full[start:stop], None
            else:
                packed, masks = self._chunk_masks(crops, crop_of[start:stop], row_of[start:stop], orig_size)
            rles += ops.mask_to_rle(packed, width=width) if packed is not None else ops.mask_to_rle(masks)
            if self.output_mode == "binary_mask":
                masks = unpack_masks(packed, width) if masks is None else masks
                binary += list(masks.cpu().numpy())

        return self._to_records(crops, rles, binary, boxes, iou_preds, stability, point_index, crop_of)

    def _to_records(self, crops, rles, binary, boxes, iou_preds, stability, point_index, crop_of):
        from segment_anything.utils.amg import area_from_rle, box_xyxy_to_xywh, coco_encode_rle

        boxes = boxes.cpu().numpy()
        iou_preds = iou_preds.cpu().numpy()
        stability = stability.cpu().numpy()
        point_index = point_index.cpu().numpy()
        crop_of = crop_of.numpy()
        # segment_anything quirks (torch.cat type promotion): float32 boxes when some point batch had no
        # mask left after the score filters; float32 crop boxes when some crop kept no mask.
        if any(c.float_boxes for c in crops):
            boxes = boxes.astype(np.float32)
        crop_box_dtype = np.float32 if any(c.packed.shape[0] == 0 for c in crops) else np.int64
        records = []
        for i, rle in enumerate(rles):
            crop = crops[crop_of[i]]
            x0, y0 = crop.crop_box[:2]
            point = crop.points[point_index[i]] + np.array([x0, y0])
            if self.output_mode == "coco_rle":
                segmentation = coco_encode_rle(rle)
            elif self.output_mode == "binary_mask":
                segmentation = binary[i]
            else:
                segmentation = rle
            records.append({
                "segmentation": segmentation,
                "area": area_from_rle(rle),
                "bbox": box_xyxy_to_xywh(boxes[i]).tolist(),
                "predicted_iou": iou_preds[i].item(),
                "point_coords": [point.tolist()],
                "stability_score": stability[i].item(),
                "crop_box": box_xyxy_to_xywh(np.array(crop.crop_box, dtype=crop_box_dtype)).tolist(),
            })
        return records

    def _chunk_masks(self, crops, crop_of, row_of, orig_size):
        """(packed, None) when every record of the chunk comes from a full-image crop (no copy needed),
        else (None, bool image-frame masks)."""
        full = [c for c in torch.unique(crop_of).tolist() if crops[c].crop_box == (0, 0, orig_size[1], orig_size[0])]
        if len(full) == 1 and bool((crop_of == full[0]).all()):
            crop = crops[full[0]]
            return crop.packed[row_of.to(crop.packed.device)], None
        return None, self._full_masks(crops, crop_of, row_of, orig_size)

    def _full_masks(self, crops, crop_of, row_of, orig_size) -> torch.Tensor:
        """Bool (k, H, W) image-frame masks of the records (crop_of[j], row_of[j]) (segment_anything's uncrop_masks)."""
        height, width = orig_size
        out = torch.zeros((len(row_of), height, width), dtype=torch.bool, device=self.model.device)
        for c in torch.unique(crop_of).tolist():
            crop = crops[c]
            x0, y0, x1, y1 = crop.crop_box
            where = torch.nonzero(crop_of == c).squeeze(1)
            rows = row_of[where].to(crop.packed.device)
            out[where.to(out.device), y0:y1, x0:x1] = unpack_masks(crop.packed[rows], x1 - x0)
        return out

    def _remove_small_regions(self, crops, crop_of, row_of, boxes, orig_size):
        """segment_anything's ``postprocess_small_regions`` with the mask work on the device.

        Returns (boxes updated where a mask changed, packed image-frame masks after removal, keep indices
        (CPU) in segment_anything's order)."""
        area = self.min_mask_region_area
        packed, changed, new_boxes = [], [], []
        for start in range(0, len(row_of), self.masks_per_chunk):
            stop = start + self.masks_per_chunk
            masks = self._full_masks(crops, crop_of[start:stop], row_of[start:stop], orig_size)
            masks, holes_changed = ops.remove_small_regions(masks, area, "holes")
            masks, islands_changed = ops.remove_small_regions(masks, area, "islands")
            changed.append(holes_changed | islands_changed)
            new_boxes.append(ops.masks_to_boxes(masks))
            packed.append(torch.cat([pack_masks(masks[i:i + _PACK_CHUNK]) for i in range(0, masks.shape[0], _PACK_CHUNK)]))
        changed = torch.cat(changed)
        new_boxes = torch.cat(new_boxes)
        # segment_anything runs this NMS on CPU tensors (scores are 0/1: the CPU tie order decides).
        scores = (~changed).float().cpu()
        keep = sam_batched_nms(new_boxes.float().cpu(), scores, max(self.box_nms_thresh, self.crop_nms_thresh))
        boxes = torch.where(changed[:, None].to(boxes.device), new_boxes.to(boxes.device), boxes)
        return boxes, torch.cat(packed), keep


def _check_image(image, name: str = "image") -> np.ndarray:
    if isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array (HxWx3 uint8, as for SamAutomaticMaskGenerator), got a torch.Tensor")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of shape (H, W, 3) and dtype uint8, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8 (pixel values 0..255), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3) (RGB, channels last), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    return image


__all__ = ["FastSamAutomaticMaskGenerator", "OUTPUT_MODES", "sam_batched_nms"]
