"""SegEvery with Lite-SAM: uint8 images in, SAM automatic-mask-generator records out.

Pipeline (``ARCHITECTURE.md``, "Data flow of SegEvery"), all on the model's device:
1. preprocessing: resize the longest side to ``image_size`` (bilinear, antialiased), normalise with the
   model's pixel mean/std, zero-pad bottom-right to a square (SAM's convention);
2. LiteViT -> image embeddings; AutoPPN -> heatmap + box regression; ``ops.ppn_decode`` -> up to K point
   and box prompts per image (fixed size, no host sync);
3. prompt encoder + mask decoder over all prompts of all images (``MaskDecoder.forward_batched``: the image
   embedding is broadcast, never copied per prompt), ``prompts_per_batch`` prompts per image at a time;
4. post-processing (:func:`postprocess_masks`, SAM semantics): upsample the low-res logits to the input
   size, crop the padding, upsample to the original size, stability score, threshold, inclusive box, area,
   bit-packed mask (``ops.bitmask`` layout);
5. filtering by predicted IoU (``>``) and stability (``>=``) as SAM does, box NMS per image
   (``ops.batched_nms``, scores = predicted IoU);
6. one device-to-host copy of everything kept; then RLE / binary masks and the records on the host.

Host synchronisation: only for output sizes (the number of candidates passing the thresholds, the NMS keep
count); the data crosses to the host once, at the end.

Records follow SAM's ``SamAutomaticMaskGenerator.generate`` (segmentation, area, bbox XYWH from the
inclusive box, predicted_iou, point_coords in original pixels, stability_score, crop_box), in decreasing
predicted-IoU order per image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from litesam_kernels.ops import batched_nms, ppn_decode
from litesam_kernels.ops.bitmask import pack_masks

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
PROMPT_MODES = ("box", "point", "point+box")
ImageLike = Union[np.ndarray, torch.Tensor]


# ------------------------------------------------------------------------------------------ input checks
def as_image_list(images) -> List[torch.Tensor]:
    """Validate ``images`` and return them as a list of uint8 (H, W, 3) tensors (not yet on the device).

    Accepts one (H, W, 3) image, a (B, H, W, 3) batch, or a list/tuple of (H, W, 3) images of any sizes,
    as numpy arrays or torch tensors.
    """
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == 4:
            images = list(images)
        elif images.ndim == 3:
            images = [images]
        else:
            raise ValueError(f"images must be (H, W, 3), (B, H, W, 3) or a list of (H, W, 3), "
                             f"got an array of shape {tuple(images.shape)}")
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"images must be a uint8 array/tensor or a list of them, got {type(images).__name__}")
    checked = []
    for i, image in enumerate(images):
        name = f"images[{i}]"
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise TypeError(f"{name} must have dtype uint8 (0..255 RGB), got {image.dtype}")
            image = torch.from_numpy(np.ascontiguousarray(image))
        elif isinstance(image, torch.Tensor):
            if image.dtype != torch.uint8:
                raise TypeError(f"{name} must have dtype uint8 (0..255 RGB), got {image.dtype}")
        else:
            raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(image).__name__}")
        if image.dim() != 3:
            raise ValueError(f"{name} must be (H, W, 3), got shape {tuple(image.shape)}")
        if image.shape[2] != 3:
            raise ValueError(f"{name} must have 3 channels (RGB, channels last), got shape {tuple(image.shape)}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"{name} is empty: shape {tuple(image.shape)}")
        checked.append(image)
    return checked


# ------------------------------------------------------------------------------------------ preprocessing
def resized_shape(height: int, width: int, long_side: int) -> Tuple[int, int]:
    """SAM's ``ResizeLongestSide.get_preprocess_shape``."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess(images: Sequence[torch.Tensor], image_size: int, pixel_mean: torch.Tensor, pixel_std: torch.Tensor
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 (H, W, 3) images -> (B, 3, S, S) normalised padded batch and (B, 2) resized (h, w), on the
    device of ``pixel_mean``."""
    device = pixel_mean.device
    batch = torch.zeros(len(images), 3, image_size, image_size, device=device)
    sizes = []
    for i, image in enumerate(images):
        h, w = resized_shape(image.shape[0], image.shape[1], image_size)
        pixels = image.to(device, non_blocking=True).permute(2, 0, 1)[None].float()
        if (h, w) != tuple(image.shape[:2]):
            pixels = F.interpolate(pixels, (h, w), mode="bilinear", align_corners=False, antialias=True)
        batch[i, :, :h, :w] = ((pixels[0] - pixel_mean) / pixel_std)
        sizes.append((h, w))
    return batch, torch.tensor(sizes, dtype=torch.int64, device=device)


# ------------------------------------------------------------------------------------------ post-processing
def _masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """SAM's ``batched_mask_to_box``: (N, H, W) bool -> (N, 4) int64 inclusive XYXY, zeros when empty."""
    n, h, w = masks.shape
    in_height = masks.any(dim=2)
    in_width = masks.any(dim=1)
    rows = torch.arange(h, device=masks.device)
    cols = torch.arange(w, device=masks.device)
    bottom = (in_height * rows).amax(dim=1)
    top = (in_height * rows + h * ~in_height).amin(dim=1)
    right = (in_width * cols).amax(dim=1)
    left = (in_width * cols + w * ~in_width).amin(dim=1)
    boxes = torch.stack([left, top, right, bottom], dim=1)
    empty = (right < left) | (bottom < top)
    return boxes * (~empty).unsqueeze(1)


def postprocess_masks(low_res_logits: torch.Tensor, input_size: Tuple[int, int], original_size: Tuple[int, int],
                      image_size: int, mask_threshold: float = 0.0, stability_offset: float = 1.0
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SAM's mask post-processing for N masks of one image, in plain torch (the fused
    ``ops.postprocess_masks`` replaces this function).

    low-res logits (N, h, w) -> upsample to (image_size, image_size) -> crop to ``input_size`` -> upsample to
    ``original_size`` (bilinear, align_corners=False, as ``Sam.postprocess_masks``); then
    stability = #(logits > t + offset) / #(logits > t - offset) (int32 counts, NaN when both are 0),
    mask = logits > t, inclusive XYXY box (``batched_mask_to_box``), area.

    Returns:
        packed masks (N, H, ceil(W/32)) int32 (``ops.bitmask`` layout), stability (N,) float32,
        boxes (N, 4) int64, areas (N,) int64.
    """
    logits = F.interpolate(low_res_logits[:, None].float(), (image_size, image_size), mode="bilinear",
                           align_corners=False)
    logits = logits[..., : input_size[0], : input_size[1]]
    logits = F.interpolate(logits, tuple(original_size), mode="bilinear", align_corners=False)[:, 0]
    intersections = (logits > (mask_threshold + stability_offset)).sum((-1, -2), dtype=torch.int32)
    unions = (logits > (mask_threshold - stability_offset)).sum((-1, -2), dtype=torch.int32)
    masks = logits > mask_threshold
    return pack_masks(masks), intersections / unions, _masks_to_boxes(masks), masks.sum((-1, -2))


# ------------------------------------------------------------------------------------------ records (host)
def rle_from_mask(mask: np.ndarray) -> Dict[str, Any]:
    """SAM's uncompressed RLE of an (H, W) bool mask: column-major runs, starting with a run of zeros."""
    h, w = mask.shape
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [h, w], "counts": counts}


def coco_rle_from_rle(rle: Dict[str, Any]) -> Dict[str, Any]:
    """COCO's compressed RLE string (pycocotools ``rleToString``) from an uncompressed RLE."""
    counts = rle["counts"]
    chars = []
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        while True:
            char = value & 0x1F
            value >>= 5
            more = value != -1 if char & 0x10 else value != 0
            if more:
                char |= 0x20
            chars.append(chr(char + 48))
            if not more:
                break
    return {"size": list(rle["size"]), "counts": "".join(chars)}


def unpack_mask_host(packed: np.ndarray, width: int) -> np.ndarray:
    """(H, words) int32 in the ``ops.bitmask`` layout -> (H, width) bool, on the host."""
    bits = np.unpackbits(packed.astype("<i4").view(np.uint8).reshape(packed.shape[0], -1), axis=1, bitorder="little")
    return bits[:, :width].astype(bool)


# ------------------------------------------------------------------------------------------ pipeline
@dataclass
class _Candidates:
    """Per image, fixed size K*M, on the device."""

    packed: torch.Tensor
    stability: torch.Tensor
    boxes: torch.Tensor
    areas: torch.Tensor
    iou: torch.Tensor
    points: torch.Tensor  # original-image pixels
    valid: torch.Tensor


class SegmentEverything:
    """Lite-SAM SegEvery. ``generate(images)`` returns, per image, a list of SAM-AMG-format records.

    Args:
        model: a :class:`litesam_kernels.model.LiteSAM` (eval mode is set on call).
        points_per_image: K, prompts per image from AutoPPN.
        ppn_score_threshold: AutoPPN peak score threshold.
        prompt: "box" (default; one mask per box), "point" (the peak's point; SAM's three masks) or "point+box".
        multimask_output: masks per prompt: 3 if True, 1 if False; default False for box prompts, True for points.
        pred_iou_thresh, stability_score_thresh, stability_score_offset, box_nms_thresh: as SAM's AMG
            (defaults 0.88, 0.95, 1.0, 0.7).
        output_mode: "binary_mask" (bool numpy), "uncompressed_rle" or "coco_rle".
        batch_size: images per encoder call; prompts_per_batch: prompts per image per decoder call (memory).
        batched_decoder: False runs SAM's per-prompt decoder path (the eager reference).
    """

    def __init__(self, model, *, points_per_image: int = 256, ppn_score_threshold: float = 0.1,
                 prompt: str = "box", multimask_output: bool = None, pred_iou_thresh: float = 0.88,
                 stability_score_thresh: float = 0.95, stability_score_offset: float = 1.0,
                 box_nms_thresh: float = 0.7, output_mode: str = "binary_mask", batch_size: int = 8,
                 prompts_per_batch: int = 64, batched_decoder: bool = True) -> None:
        if prompt not in PROMPT_MODES:
            raise ValueError(f"prompt must be one of {PROMPT_MODES}, got {prompt!r}")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        for name, value in (("points_per_image", points_per_image), ("batch_size", batch_size),
                            ("prompts_per_batch", prompts_per_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.model = model
        self.points_per_image = points_per_image
        self.ppn_score_threshold = ppn_score_threshold
        self.prompt = prompt
        self.multimask_output = (prompt == "point") if multimask_output is None else bool(multimask_output)
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.output_mode = output_mode
        self.batch_size = batch_size
        self.prompts_per_batch = prompts_per_batch
        self.batched_decoder = batched_decoder

    # -------------------------------------------------------------------------------- public
    @torch.inference_mode()
    def generate(self, images) -> List[List[Dict[str, Any]]]:
        images = as_image_list(images)
        self.model.eval()
        records: List[List[Dict[str, Any]]] = []
        for start in range(0, len(images), self.batch_size):
            records += self._generate_batch(images[start:start + self.batch_size])
        return records

    __call__ = generate

    # -------------------------------------------------------------------------------- device part
    def _sparse_embeddings(self, prompts, rank: slice) -> torch.Tensor:
        encoder = self.model.prompt_encoder
        points = boxes = None
        if "point" in self.prompt:
            coords = prompts.points[:, rank, None, :]
            points = (coords, torch.ones(coords.shape[:-1], dtype=torch.int64, device=coords.device))
        if "box" in self.prompt:
            boxes = prompts.boxes[:, rank]
        return encoder.embed_prompts(points, boxes)

    def _decode(self, embeddings: torch.Tensor, sparse: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        decoder, encoder = self.model.mask_decoder, self.model.prompt_encoder
        image_pe = encoder.get_dense_pe()
        if self.batched_decoder:
            return decoder.forward_batched(embeddings, image_pe, sparse, encoder.no_mask_embed.weight,
                                           self.multimask_output)
        masks, ious = [], []
        for i in range(embeddings.shape[0]):  # SAM's path: the embedding repeated per prompt
            dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(sparse.shape[1], -1, *embeddings.shape[-2:])
            m, q = decoder(embeddings[i:i + 1], image_pe, sparse[i], dense, self.multimask_output)
            masks.append(m)
            ious.append(q)
        return torch.stack(masks), torch.stack(ious)

    def _candidates(self, images: List[torch.Tensor]) -> List[_Candidates]:
        model, config = self.model, self.model.config
        batch, input_sizes = preprocess(images, config.image_size, model.pixel_mean, model.pixel_std)
        embeddings, heatmap_logits, box_regression = model(batch)
        stride = config.image_size / embeddings.shape[-1]
        prompts = ppn_decode(heatmap_logits, box_regression, k=self.points_per_image,
                             score_threshold=self.ppn_score_threshold, stride=stride, image_sizes=input_sizes)
        rank_valid = torch.arange(self.points_per_image, device=batch.device) < prompts.num_valid[:, None]
        input_hw = input_sizes.tolist()  # tiny, known before the model ran: not a pipeline sync
        per_image: List[Dict[str, List[torch.Tensor]]] = [dict() for _ in images]
        for start in range(0, self.points_per_image, self.prompts_per_batch):
            rank = slice(start, start + self.prompts_per_batch)
            low_res, iou = self._decode(embeddings, self._sparse_embeddings(prompts, rank))
            masks_per_prompt = low_res.shape[2]
            for i, image in enumerate(images):
                original = tuple(image.shape[:2])
                packed, stability, boxes, areas = postprocess_masks(
                    low_res[i].flatten(0, 1), input_hw[i], original, config.image_size, model.mask_threshold,
                    self.stability_score_offset)
                scale = torch.tensor([original[1] / input_hw[i][1], original[0] / input_hw[i][0]], device=batch.device)
                points = (prompts.points[i, rank] * scale).repeat_interleave(masks_per_prompt, dim=0)
                parts = dict(packed=packed, stability=stability, boxes=boxes, areas=areas, iou=iou[i].flatten(),
                             points=points, valid=rank_valid[i, rank].repeat_interleave(masks_per_prompt))
                for key, value in parts.items():
                    per_image[i].setdefault(key, []).append(value)
        return [_Candidates(**{k: torch.cat(v) for k, v in parts.items()}) for parts in per_image]

    def _select(self, candidates: List[_Candidates]) -> Tuple[torch.Tensor, ...]:
        """Threshold + NMS across the batch (groups = images); kept rows in (image, decreasing IoU) order."""
        iou = torch.cat([c.iou for c in candidates])
        stability = torch.cat([c.stability for c in candidates])
        boxes = torch.cat([c.boxes for c in candidates])
        image_index = torch.cat([torch.full_like(c.iou, i, dtype=torch.int64) for i, c in enumerate(candidates)])
        passing = torch.cat([c.valid for c in candidates]) & (iou > self.pred_iou_thresh) & \
            (stability >= self.stability_score_thresh)
        rows = torch.nonzero(passing).flatten()
        kept = rows[batched_nms(boxes[rows].float(), iou[rows], image_index[rows], self.box_nms_thresh)]
        kept = kept[torch.sort(image_index[kept], stable=True).indices]
        return kept, image_index[kept]

    def _generate_batch(self, images: List[torch.Tensor]) -> List[List[Dict[str, Any]]]:
        candidates = self._candidates(images)
        kept, kept_image = self._select(candidates)
        height = max(c.packed.shape[1] for c in candidates)
        words = max(c.packed.shape[2] for c in candidates)
        packed = torch.cat([F.pad(c.packed, (0, words - c.packed.shape[2], 0, height - c.packed.shape[1]))
                            for c in candidates])
        fields = {
            "image": kept_image,
            "packed": packed[kept],
            "boxes": torch.cat([c.boxes for c in candidates])[kept],
            "areas": torch.cat([c.areas for c in candidates])[kept],
            "iou": torch.cat([c.iou for c in candidates])[kept].float(),
            "stability": torch.cat([c.stability for c in candidates])[kept].float(),
            "points": torch.cat([c.points for c in candidates])[kept].float(),
        }
        host = to_host_once(fields)
        return self._records(images, host)

    # -------------------------------------------------------------------------------- host part
    def _records(self, images: List[torch.Tensor], host: Dict[str, np.ndarray]) -> List[List[Dict[str, Any]]]:
        out: List[List[Dict[str, Any]]] = [[] for _ in images]
        for row, i in enumerate(host["image"].tolist()):
            h, w = images[i].shape[:2]
            mask = unpack_mask_host(host["packed"][row, :h, : (w + 31) // 32], w)
            if self.output_mode == "binary_mask":
                segmentation = mask
            else:
                segmentation = rle_from_mask(mask)
                if self.output_mode == "coco_rle":
                    segmentation = coco_rle_from_rle(segmentation)
            x0, y0, x1, y1 = host["boxes"][row].tolist()
            out[i].append({
                "segmentation": segmentation,
                "area": int(host["areas"][row]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "predicted_iou": float(host["iou"][row]),
                "point_coords": [host["points"][row].tolist()],
                "stability_score": float(host["stability"][row]),
                "crop_box": [0, 0, w, h],
            })
        return out


def to_host_once(tensors: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """Copy several device tensors to the host in one transfer (their bytes concatenated)."""
    parts = [t.contiguous().view(-1).view(torch.uint8) for t in tensors.values()]
    buffer = torch.cat(parts).cpu().numpy() if parts else np.zeros(0, np.uint8)
    out, offset = {}, 0
    for (name, t), part in zip(tensors.items(), parts):
        size = part.numel()
        dtype = np.dtype(str(t.dtype).replace("torch.", ""))
        out[name] = buffer[offset:offset + size].view(dtype).reshape(tuple(t.shape))
        offset += size
    return out


def segment_everything(model, images, **kwargs) -> List[List[Dict[str, Any]]]:
    """SegEvery on ``images`` (one (H, W, 3) uint8 image, a (B, H, W, 3) batch, or a list of images of any
    sizes): per image, a list of SAM-AMG records. Keyword arguments: see :class:`SegmentEverything`."""
    return SegmentEverything(model, **kwargs).generate(images)


def rle_to_mask(rle: Dict[str, Any]) -> np.ndarray:
    """(H, W) bool mask from an uncompressed RLE or a COCO RLE (string counts) record."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = _coco_string_to_counts(counts if isinstance(counts, str) else counts.decode())
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE counts sum to {flat.size}, expected {h * w} for size {[h, w]}")
    return flat.reshape(w, h).T


def _coco_string_to_counts(text: str) -> List[int]:
    """Inverse of :func:`coco_rle_from_rle` (pycocotools ``rleFrString``)."""
    counts: List[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            char = ord(text[position]) - 48
            value |= (char & 0x1F) << (5 * shift)
            more = bool(char & 0x20)
            position += 1
            shift += 1
            if not more and char & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts
