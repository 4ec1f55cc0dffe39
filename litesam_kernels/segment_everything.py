"""SegEvery with Lite-SAM: uint8 images in, SAM automatic-mask-generator records out.

Pipeline (``ARCHITECTURE.md``, "Data flow of SegEvery"), all on the model's device:
1. preprocessing: resize the longest side to ``image_size`` (bilinear, antialiased), normalise with the
   model's pixel mean/std, zero-pad bottom-right to a square (SAM's convention);
2. LiteViT -> image embeddings; AutoPPN -> heatmap + box regression; ``ops.ppn_decode`` -> up to K point
   and box prompts per image (fixed size, no host sync);
3. prompt encoder + mask decoder over all prompts of all images (``MaskDecoder.forward_batched``: the image
   embedding is broadcast, never copied per prompt), ``prompts_per_batch`` prompts per image at a time;
4. post-processing (``ops.postprocess_masks``, SAM semantics, one pass over the low-res logits): upsample
   to the input size, crop the padding, upsample to the original size, threshold, stability score,
   inclusive box, area, bit-packed mask (``ops.bitmask`` layout);
5. filtering by predicted IoU (``>``) and stability (``>=``) as SAM does, then NMS per image, scores =
   predicted IoU: box NMS (``ops.batched_nms``, SAM's) or mask NMS on the packed masks (``ops.mask_nms``);
6. the kept masks stay packed: ``mask_to_rle``'s device half runs on them (run lengths found on the device)
   or, for binary masks, they cross packed (1 bit per pixel); run lengths and every other field cross in
   one device-to-host copy; the records are assembled on the host.

Host synchronisation: only for output sizes (the number of candidates passing the thresholds, the NMS keep
count, the kept count per image, the RLE size) and the transfers of step 6.

Every op the pipeline calls dispatches like any ``litesam_kernels.ops`` call (``LITESAM_BACKEND``,
``use_backend`` or the ``backend`` argument); ``SegmentEverything.eager_reference`` is the same pipeline
with every op on its pure-torch reference and SAM's per-prompt decoder (the benchmarks' baseline).

Records follow SAM's ``SamAutomaticMaskGenerator.generate`` (segmentation, area, bbox XYWH from the
inclusive box, predicted_iou, point_coords, stability_score, crop_box = the whole image), in decreasing
predicted-IoU order per image. ``point_coords`` is the AutoPPN peak (its cell centre) that produced the
prompt, in original-image pixels, where SAM reports its grid point. Not implemented: crops
(``crop_n_layers``), ``min_mask_region_area``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from litesam_kernels._backend import BACKENDS, use_backend
from litesam_kernels._checks import check_real
from litesam_kernels.ops import batched_nms, coco_encode_rle, mask_nms, postprocess_masks, ppn_decode, rle_to_mask
from litesam_kernels.ops.bitmask import unpack_masks
from litesam_kernels.ops.rle import rles_from_counts

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
PROMPT_MODES = ("box", "point", "point+box")
NMS_MODES = ("box", "mask")
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
    device of ``pixel_mean``. The resize is bilinear with antialiasing on float pixels: close to, not
    bitwise equal to, SAM's PIL resize (which also rounds the resized image to uint8)."""
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


# ------------------------------------------------------------------------------------------ pipeline
@dataclass
class _Candidates:
    """Per image, fixed size K*M, on the device."""

    packed: torch.Tensor  # (K*M, H, ceil(W/32)) int32, ops.bitmask layout
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
        nms: "box" (SAM's: box IoU, ``ops.batched_nms``) or "mask" (mask IoU on the packed masks,
            ``ops.mask_nms``, threshold ``mask_nms_thresh``); both per image, scores = predicted IoU.
        mask_nms_thresh: the mask-IoU threshold of ``nms="mask"`` (a mask is dropped when its IoU with a kept
            one is > this).
        output_mode: "binary_mask" (bool numpy), "uncompressed_rle" or "coco_rle" (needs pycocotools).
        batch_size: images per encoder call; prompts_per_batch: prompts per image per decoder call (memory).
        batched_decoder: False runs SAM's per-prompt decoder path (the eager reference).
        backend: force every ``litesam_kernels.ops`` call of the pipeline onto one backend
            (``"reference"``, ``"triton"``, ``"cuda"``, ``"cpu"``; see ``use_backend``; an op without that
            backend raises ``BackendUnavailableError``); None: each op's default.

    :meth:`eager_reference` builds the baseline: the same pipeline with every op on its torch reference and
    SAM's per-prompt decoder.
    """

    def __init__(self, model, *, points_per_image: int = 256, ppn_score_threshold: float = 0.1,
                 prompt: str = "box", multimask_output: bool = None, pred_iou_thresh: float = 0.88,
                 stability_score_thresh: float = 0.95, stability_score_offset: float = 1.0,
                 box_nms_thresh: float = 0.7, nms: str = "box", mask_nms_thresh: float = 0.7,
                 output_mode: str = "binary_mask", batch_size: int = 8, prompts_per_batch: int = 64,
                 batched_decoder: bool = True, backend: Optional[str] = None) -> None:
        if prompt not in PROMPT_MODES:
            raise ValueError(f"prompt must be one of {PROMPT_MODES}, got {prompt!r}")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if output_mode == "coco_rle":
            try:  # fail before the model runs, not after (ops.coco_encode_rle uses it)
                import pycocotools.mask  # noqa: F401
            except ImportError as exc:
                raise ImportError("output_mode='coco_rle' needs pycocotools (pip install pycocotools)") from exc
        if nms not in NMS_MODES:
            raise ValueError(f"nms must be one of {NMS_MODES}, got {nms!r}")
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
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
        self.nms = nms
        self.mask_nms_thresh = check_real("mask_nms_thresh", mask_nms_thresh, low=0.0, high=1.0)
        self.output_mode = output_mode
        self.batch_size = batch_size
        self.prompts_per_batch = prompts_per_batch
        self.batched_decoder = batched_decoder
        self.backend = backend

    @classmethod
    def eager_reference(cls, model, **kwargs) -> "SegmentEverything":
        """The baseline pipeline: every op on its pure-torch reference, SAM's per-prompt decoder."""
        return cls(model, **{**kwargs, "batched_decoder": False, "backend": "reference"})

    # -------------------------------------------------------------------------------- public
    @torch.inference_mode()
    def generate(self, images) -> List[List[Dict[str, Any]]]:
        images = as_image_list(images)
        self.model.eval()
        records: List[List[Dict[str, Any]]] = []
        with use_backend(self.backend) if self.backend is not None else contextlib.nullcontext():
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
            dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(sparse.shape[1], -1,
                                                                             *embeddings.shape[-2:])
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
        input_hw = [resized_shape(image.shape[0], image.shape[1], config.image_size) for image in images]
        per_image: List[Dict[str, List[torch.Tensor]]] = [dict() for _ in images]
        for start in range(0, self.points_per_image, self.prompts_per_batch):
            rank = slice(start, start + self.prompts_per_batch)
            low_res, iou = self._decode(embeddings, self._sparse_embeddings(prompts, rank))
            masks_per_prompt = low_res.shape[2]
            for i, image in enumerate(images):
                original = tuple(image.shape[:2])
                processed = postprocess_masks(low_res[i].flatten(0, 1), input_hw[i], original, model.mask_threshold,
                                              self.stability_score_offset, packed=True, image_size=config.image_size)
                scale = torch.tensor([original[1] / input_hw[i][1], original[0] / input_hw[i][0]], device=batch.device)
                points = (prompts.points[i, rank] * scale).repeat_interleave(masks_per_prompt, dim=0)
                parts = dict(packed=processed.masks, stability=processed.stability_scores, boxes=processed.boxes,
                             areas=processed.areas, iou=iou[i].flatten(), points=points,
                             valid=rank_valid[i, rank].repeat_interleave(masks_per_prompt))
                for key, value in parts.items():
                    per_image[i].setdefault(key, []).append(value)
        return [_Candidates(**{k: torch.cat(v) for k, v in parts.items()}) for parts in per_image]

    def _select(self, images: List[torch.Tensor], candidates: List[_Candidates]) -> Tuple[torch.Tensor, ...]:
        """Threshold + NMS across the batch (groups = images); kept rows in (image, decreasing IoU) order."""
        iou = torch.cat([c.iou for c in candidates])
        stability = torch.cat([c.stability for c in candidates])
        boxes = torch.cat([c.boxes for c in candidates])
        image_index = torch.cat([torch.full_like(c.iou, i, dtype=torch.int64) for i, c in enumerate(candidates)])
        passing = torch.cat([c.valid for c in candidates]) & (iou > self.pred_iou_thresh) & \
            (stability >= self.stability_score_thresh)
        rows = torch.nonzero(passing).flatten()
        if self.nms == "box":
            keep = batched_nms(boxes[rows].float(), iou[rows], image_index[rows], self.box_nms_thresh)
        else:
            # Masks of different images never meet (idxs), so zero-padding them to a common size is harmless.
            packed = _padded_cat(_gather_packed(candidates, rows, image_index[rows]))
            keep = mask_nms(packed, iou[rows], self.mask_nms_thresh, idxs=image_index[rows], boxes=boxes[rows],
                            width=max(image.shape[1] for image in images))
        kept = rows[keep]
        kept = kept[torch.sort(image_index[kept], stable=True).indices]
        return kept, image_index[kept]

    def _generate_batch(self, images: List[torch.Tensor]) -> List[List[Dict[str, Any]]]:
        candidates = self._candidates(images)
        kept, kept_image = self._select(images, candidates)
        fields = {
            "boxes": torch.cat([c.boxes for c in candidates])[kept],
            "areas": torch.cat([c.areas for c in candidates])[kept],
            "iou": torch.cat([c.iou for c in candidates])[kept].float(),
            "stability": torch.cat([c.stability for c in candidates])[kept].float(),
            "points": torch.cat([c.points for c in candidates])[kept].float(),
        }
        masks = _gather_packed(candidates, kept, kept_image)
        groups = _size_groups(images)
        for size, members in groups.items():
            group = torch.cat([masks[i] for i in members])
            if self.output_mode == "binary_mask":
                fields[f"packed{size}"] = group
            elif group.shape[0]:
                # Run lengths found on the device; they cross with every other field in one copy.
                fields[f"rle_counts{size}"], fields[f"rle_lengths{size}"] = torch.ops.litesam.mask_to_rle_counts(group, size[1])
        host = to_host_once(fields)
        segmentations = [[] for _ in images]
        for size, members in groups.items():
            if self.output_mode == "binary_mask":
                # Mask by mask: unpacking goes through 32 bits per pixel, so bound it to one mask.
                group = [unpack_masks(torch.from_numpy(packed), size[1]).numpy() for packed in host[f"packed{size}"]]
            else:
                group = (rles_from_counts(host[f"rle_counts{size}"], host[f"rle_lengths{size}"], *size)
                         if f"rle_counts{size}" in host else [])
                if self.output_mode == "coco_rle":
                    group = [coco_encode_rle(rle) for rle in group]
            for i in members:
                segmentations[i], group = group[:masks[i].shape[0]], group[masks[i].shape[0]:]
        return self._records(images, host, segmentations)

    # -------------------------------------------------------------------------------- host part
    def _records(self, images: List[torch.Tensor], host: Dict[str, np.ndarray],
                 segmentations: List[List[Any]]) -> List[List[Dict[str, Any]]]:
        out: List[List[Dict[str, Any]]] = [[] for _ in images]
        row = 0
        for i, (image, per_image) in enumerate(zip(images, segmentations)):
            h, w = image.shape[:2]
            for segmentation in per_image:
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
                row += 1
        return out


def _gather_packed(candidates: List[_Candidates], rows: torch.Tensor, row_image: torch.Tensor) -> List[torch.Tensor]:
    """Per image, the packed masks of ``rows`` (global candidate rows, ascending by image)."""
    counts = torch.bincount(row_image, minlength=len(candidates)).tolist()  # a size read
    starts = np.cumsum([0] + [c.iou.shape[0] for c in candidates[:-1]]).tolist()
    return [c.packed[part - start] for c, part, start in zip(candidates, rows.split(counts), starts)]


def _padded_cat(masks: List[torch.Tensor]) -> torch.Tensor:
    """Packed mask stacks of different (H, words), zero-padded bottom/right to the largest and concatenated."""
    height = max(m.shape[1] for m in masks)
    words = max(m.shape[2] for m in masks)
    return torch.cat([F.pad(m, (0, words - m.shape[2], 0, height - m.shape[1])) for m in masks])


def _size_groups(images: List[torch.Tensor]) -> Dict[Tuple[int, int], List[int]]:
    """Image indices by (H, W): the masks of one group go through one ``mask_to_rle_counts`` call."""
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault((int(image.shape[0]), int(image.shape[1])), []).append(i)
    return groups


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


def segmentation_to_mask(segmentation) -> np.ndarray:
    """(H, W) bool mask of a record's ``segmentation``, whatever the output mode: a binary mask, an
    uncompressed RLE (``ops.rle_to_mask``) or a COCO RLE with string counts (pycocotools)."""
    if isinstance(segmentation, np.ndarray):
        return segmentation.astype(bool, copy=False)
    if isinstance(segmentation["counts"], (str, bytes)):
        from pycocotools import mask as mask_utils

        return mask_utils.decode(segmentation).astype(bool)
    return rle_to_mask(segmentation)
