"""The segment-everything engine: crops -> encoder -> prompts -> decoder -> post-processing -> filters ->
NMS within and across crops -> small regions -> records, for any model adapter and prompt source.

Per image (SAM's ``SamAutomaticMaskGenerator._generate_masks``, which SAM 2 and SegEvery share):

1. crops: the image, then ``crop_n_layers`` layers of overlapping crops (``geometry.generate_crop_boxes``);
   the crops of all images go through the image encoder ``crops_per_encoder_call`` at a time;
2. per crop, its prompts (SAM's point grid of its layer, or AutoPPN's), ``prompts_per_decoder_call`` per
   decoder call (several of SAM's point batches in one call); optionally SAM 2's m2m pass re-decodes each
   mask with its own low-res logits as mask prompt;
3. post-processing straight to bit-packed masks (``ops.postprocess_masks``: the model's resize plan,
   threshold, stability, box, area); SAM 2's ``min_mask_region_area`` fills holes / sprinkles on the low-res
   logits first (``ops.small_regions.fill_small_regions``);
4. filters (``iou > pred_iou_thresh``, ``stability >= stability_score_thresh``, prompt padding, the
   crop-edge test), then compaction of the survivors, their masks packed or as runs of equal packed words,
   whichever is smaller (``mask_runs``): **one host wait per decoder call** (:func:`survivor_counts`, the
   survivor counts of its crops and the sizes of their runs);
5. NMS within the crop (box NMS with torchvision's exact order, or mask NMS; the NMS waits once for its
   keep list), the kept masks unpacked into one packed tensor, boxes and points to the image frame;
6. when all crops of an image are done: NMS across crops (scores 1 / crop area), SAM 1's small-region pass
   (``min_mask_region_area``: holes then islands on the full-resolution masks, then NMS), image-frame masks
   ``masks_per_chunk`` at a time -> RLE run lengths on the device (or the packed masks themselves), and one
   device-to-host copy for the image's records (each of these waits for the device: per image, not per call).

Host waits happen only there (and in SAM 2's ``min_mask_region_area`` hole filling, which sizes its
connected components). Nothing else in the loops copies host data with a wait: crop offsets, crop edges and
thresholds are cached device constants, host data (point grids, images, sizes) is copied ``non_blocking``
(``litesam_kernels._device_data``); ``tests/test_host_syncs.py`` counts them.

Masks stay bit-packed in their crop's frame from step 3 on (32x smaller than bool); a crop's candidates wait
for its NMS as runs of equal words where that is smaller (one run for an empty or full mask, about four per
row a blob covers, rather than 128 KB each at 1024²); full-resolution float logits exist only in the unfused
path, one point batch at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from litesam_kernels import ops
from litesam_kernels._device_data import host_to_device
from litesam_kernels.engine import records as rec
from litesam_kernels.engine import stages
from litesam_kernels.engine.adapters import Encoded, Prompts
from litesam_kernels.engine.geometry import crop_offset, generate_crop_boxes, is_box_near_crop_edge
from litesam_kernels.engine.mask_runs import compact_masks, run_starts, take_masks, unpack_all
from litesam_kernels.ops.bitmask import packed_width, unpack_masks
from litesam_kernels.ops.small_regions import fill_small_regions

SMALL_REGION_SEMANTICS = ("sam1", "sam2")
NMS_MODES = ("box", "mask")
FIELD_TYPES = ("sam1", "sam2", "plain")


def check_positive_ints(**values) -> None:
    """ValueError naming the first argument that is not a positive int (a bool or a float is not)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class EngineOptions:
    """Everything the engine does differently per front end (defaults: segment_anything's AMG).

    small_regions: "sam1" (holes then islands of area < a on the full-resolution masks, then NMS; SAM 1's
        ``postprocess_small_regions``) or "sam2" (holes and sprinkles of area <= a on the low-res logits,
        before upsampling; SAM 2's predictor). Off when ``min_mask_region_area`` is 0.
    mask_threshold: None: the model's (``adapter.mask_threshold``).
    points_per_batch: SAM's point batch: the unit of SAM 1's box-dtype quirk, of the m2m refinement and
        of the unfused resize (memory); None: ``prompts_per_decoder_call``.
    crops_per_decoder_call: crops whose prompts one decoder call takes (None: every crop of the encoder call).
        The decoder's activations (about 30 MB per prompt at SAM's 1024 input) set the pipeline's peak
        memory: 1 keeps it at ``prompts_per_decoder_call`` prompts whatever ``crops_per_encoder_call`` is.
    field_types: the record dtypes of which upstream: "sam1" (segment_anything: int64 boxes and crop boxes,
        float64 points, with its ``torch.cat`` promotions: boxes become float32 when some point batch kept
        no mask after the score filters, crop boxes when some crop kept no mask), "sam2" (``MaskData.to_numpy``
        casts every tensor to float32) or "plain" (int boxes, float32 points: SegEvery).
    """

    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: Optional[float] = None
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    min_mask_region_area: float = 0
    small_regions: str = "sam1"
    multimask_output: bool = True
    use_m2m: bool = False
    nms: str = "box"
    mask_nms_thresh: float = 0.7
    output_mode: str = "binary_mask"
    prompts_per_decoder_call: int = 256
    points_per_batch: Optional[int] = None
    crops_per_encoder_call: int = 1
    crops_per_decoder_call: Optional[int] = None
    masks_per_chunk: int = 64
    fused_postprocess: bool = True
    field_types: str = "sam1"

    def __post_init__(self) -> None:
        rec.check_output_mode(self.output_mode)
        for name, allowed in (("small_regions", SMALL_REGION_SEMANTICS), ("nms", NMS_MODES),
                              ("field_types", FIELD_TYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        optional = ("points_per_batch", "crops_per_decoder_call")  # None: see the docstring
        check_positive_ints(**{name: getattr(self, name) for name in (
            "prompts_per_decoder_call", "crops_per_encoder_call", "masks_per_chunk", *optional)
            if not (name in optional and getattr(self, name) is None)})
        if isinstance(self.crop_n_layers, bool) or not isinstance(self.crop_n_layers, (int, np.integer)) \
                or self.crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be an int >= 0, got {self.crop_n_layers!r}")
        if not self.min_mask_region_area >= 0:
            raise ValueError(f"min_mask_region_area must be >= 0, got {self.min_mask_region_area!r}")


@dataclass
class CropMasks:
    """The masks one crop kept after its NMS: bit-packed in the crop frame, everything else image frame."""

    crop_box: Tuple[int, int, int, int]
    packed: torch.Tensor     # (K, crop_h, ceil(crop_w / 32)) int32
    boxes: torch.Tensor      # (K, 4) int64 XYXY inclusive
    iou_preds: torch.Tensor  # (K,)
    stability: torch.Tensor  # (K,) float32
    points: torch.Tensor     # (K, 2) the records' point dtype
    # (1,) bool on the device, read with the image's records: did every point batch keep a mask after the
    # score filters? (segment_anything quirk: float32 boxes when not); None when not tracked.
    all_scored: Optional[torch.Tensor] = None


def survivor_counts(valid: Sequence[torch.Tensor], runs: Sequence[torch.Tensor]) -> List[Tuple[int, int]]:
    """The one host wait of a decoder call: per crop, how many candidates survived the filters and how many
    word runs their masks take (the sizes of their compaction); ``runs[c]`` is the runs per candidate."""
    totals = torch.stack([torch.stack([flags.sum(), (count * flags).sum()]) for flags, count in zip(valid, runs)])
    return [tuple(pair) for pair in totals.tolist()]


class Engine:
    """Segment everything with one model adapter and one prompt source (see the module docstring).

    ``run(images)`` takes a list of (H, W, 3) uint8 images (numpy arrays or tensors, as the adapter takes
    them) and returns one list of records per image. Inputs are validated by the front ends.
    """

    def __init__(self, adapter, prompt_source, options: EngineOptions) -> None:
        self.adapter = adapter
        self.prompts = prompt_source
        self.options = options

    @property
    def mask_threshold(self) -> float:
        threshold = self.options.mask_threshold
        return self.adapter.mask_threshold if threshold is None else threshold

    # ------------------------------------------------------------------------------------------ run
    def run(self, images: Sequence[Any]) -> List[List[Dict[str, Any]]]:
        self.adapter.reset()
        opts = self.options
        crops = []  # (image index, crop box, layer)
        for i, image in enumerate(images):
            boxes, layers = generate_crop_boxes(tuple(image.shape[:2]), opts.crop_n_layers, opts.crop_overlap_ratio)
            crops += [(i, tuple(int(v) for v in box), layer) for box, layer in zip(boxes, layers)]
        per_image: List[List[CropMasks]] = [[] for _ in images]
        crops_left = [0] * len(images)
        for i, _, _ in crops:
            crops_left[i] += 1
        records: List[Optional[List[Dict[str, Any]]]] = [None] * len(images)
        for start in range(0, len(crops), opts.crops_per_encoder_call):
            group = crops[start:start + opts.crops_per_encoder_call]
            done = self._process_group(group, images)
            for (i, _, _), crop_masks in zip(group, done):
                per_image[i].append(crop_masks)
                crops_left[i] -= 1
                if crops_left[i] == 0:  # finish an image as soon as its crops are done: frees its masks
                    records[i] = self._finish_image(per_image[i], tuple(images[i].shape[:2]))
                    per_image[i] = []
        return records

    # ------------------------------------------------------------------------------------------ crops
    def _process_group(self, group, images) -> List[CropMasks]:
        opts, adapter = self.options, self.adapter
        crop_images = [images[i][box[1]:box[3], box[0]:box[2]] for i, box, _ in group]
        encoded = adapter.encode(crop_images)
        prompts = self.prompts.for_crops(adapter, [layer for _, _, layer in group], encoded)
        image_sizes = [tuple(images[i].shape[:2]) for i, _, _ in group]
        kept: List[List[Dict[str, torch.Tensor]]] = [[] for _ in group]
        scored: List[List[torch.Tensor]] = [[] for _ in group]
        step = opts.prompts_per_decoder_call
        for start in range(0, max((len(p) for p in prompts), default=0), step):
            active = [c for c in range(len(group)) if len(prompts[c]) > start]
            parts = [p.slice(start, start + step) for p in (prompts[c] for c in active)]
            outputs = self._decode([encoded[c] for c in active], parts)
            candidates = []
            for c, part, (low_res, iou) in zip(active, parts, outputs):
                masks_per_prompt = low_res.shape[1]
                if opts.use_m2m:
                    low_res, iou = self._refine(encoded[c], part, low_res)
                candidates.append(self._candidates(encoded[c], part, low_res, iou, group[c][1], image_sizes[c],
                                                   start, masks_per_prompt))
            starts = [run_starts(cand["packed"]) for cand in candidates]
            counts = survivor_counts([cand["valid"] for cand in candidates], [s.sum(1) for s in starts])
            for c, cand, start, (count, runs) in zip(active, candidates, starts, counts):
                if "scored" in cand:
                    scored[c].append(cand.pop("scored"))
                valid, packed = cand.pop("valid"), cand.pop("packed")
                rows = torch.nonzero_static(valid, size=count).squeeze(1)
                kept[c].append({"masks": compact_masks(packed[rows], start[rows], runs),
                                **{k: v[rows] for k, v in cand.items()}})
        return [self._crop_nms(box, encoded[c], prompts[c], kept[c], scored[c])
                for c, (_, box, _) in enumerate(group)]

    def _decode(self, encoded: List[Encoded], prompts: List[Prompts]):
        """``adapter.decode`` over ``crops_per_decoder_call`` crops at a time (all at once when None)."""
        step = self.options.crops_per_decoder_call or len(encoded)
        return [out for s in range(0, len(encoded), step)
                for out in self.adapter.decode(encoded[s:s + step], prompts[s:s + step], self.options.multimask_output)]

    def _refine(self, encoded: Encoded, prompts: Prompts, low_res: torch.Tensor):
        """SAM 2's m2m pass: every mask re-decoded from its point with its own (clamped) low-res logits as
        the mask prompt, single-mask output, ``points_per_batch`` masks per SAM 2 batch."""
        adapter, opts = self.adapter, self.options
        masks_per_prompt = low_res.shape[1]
        points = prompts.record_points.repeat_interleave(masks_per_prompt, dim=0)
        refine = Prompts(points, points=adapter.transform_points(points, encoded))
        mask_input = adapter.mask_prompts(low_res.flatten(0, 1))[:, None]
        step = opts.prompts_per_decoder_call  # masks per refinement call: several of SAM 2's batches
        outs = [adapter.decode([encoded], [refine.slice(s, s + step)], False, [mask_input[s:s + step]])[0]
                for s in range(0, len(refine), step)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def _candidates(self, encoded: Encoded, prompts: Prompts, low_res: torch.Tensor, iou: torch.Tensor,
                    crop_box, image_size, first_prompt: int, masks_per_prompt: int) -> Dict[str, torch.Tensor]:
        """SAM's ``_process_batch`` for the prompts of one decoder call of one crop, with validity flags
        instead of filtering; masks come out bit-packed."""
        opts, adapter = self.options, self.adapter
        logits = adapter.logits_for_upscale(low_res)
        if opts.small_regions == "sam2" and opts.min_mask_region_area > 0:
            # SAM 2's predictor: threshold 0.0 (its own, not the generator's mask_threshold).
            logits = fill_small_regions(logits, opts.min_mask_region_area, opts.min_mask_region_area, 0.0)
        input_size, image_size_in = adapter.resize_plan(encoded, logits.shape[-2:])
        post = stages.postprocess(
            logits, input_size, encoded.crop_size, image_size_in, self.mask_threshold, opts.stability_score_offset,
            opts.fused_postprocess, upscale=lambda x: adapter.upscale(x, encoded),
            chunk=opts.points_per_batch or opts.prompts_per_decoder_call,
            fused_op=getattr(adapter, "fused_postprocess_op", None),
        )
        iou = iou.flatten()
        valid = stages.score_filter(iou, post.stability_scores, opts.pred_iou_thresh, opts.stability_score_thresh)
        index = torch.arange(valid.shape[0], device=valid.device) // masks_per_prompt
        if prompts.valid is not None:
            valid &= prompts.valid[index]
        out = {}
        if opts.field_types == "sam1" and opts.points_per_batch is not None:
            out["scored"] = stages.any_per_batch(valid, opts.points_per_batch * low_res.shape[1])
        valid &= ~is_box_near_crop_edge(post.boxes, list(crop_box), [0, 0, image_size[1], image_size[0]])
        out.update(packed=post.masks, boxes=post.boxes, iou_preds=iou, stability=post.stability_scores,
                   point_index=first_prompt + index, valid=valid)
        return out

    def _crop_nms(self, crop_box, encoded: Encoded, prompts: Prompts, kept: List[Dict[str, torch.Tensor]],
                  scored: List[torch.Tensor]) -> CropMasks:
        opts = self.options
        device = self.adapter.device
        h, w = encoded.crop_size
        masks = [d.pop("masks") for d in kept] or [torch.zeros((0, h, packed_width(w)), dtype=torch.int32,
                                                               device=device)]
        if kept:
            data = {k: torch.cat([d[k] for d in kept]) for k in kept[0]}
            kept.clear()
        else:  # a crop without prompts
            data = {"boxes": torch.zeros((0, 4), dtype=torch.int64, device=device),
                    "iou_preds": torch.zeros(0, device=device), "stability": torch.zeros(0, device=device),
                    "point_index": torch.zeros(0, dtype=torch.int64, device=device)}
        if opts.nms == "box":
            keep = stages.sam_batched_nms(data["boxes"].float(), data["iou_preds"], opts.box_nms_thresh)
        else:  # mask NMS reads every candidate's packed mask
            masks = [torch.cat([unpack_all(m) for m in masks])]
            keep = ops.mask_nms(masks[0], data["iou_preds"].float(), opts.mask_nms_thresh, boxes=data["boxes"],
                                width=w)
        data = {k: v[keep] for k, v in data.items()}
        packed = take_masks(masks, keep)
        points = prompts.record_points[data["point_index"].to(prompts.record_points.device)]
        points = points + crop_offset(crop_box, points.device, points.dtype, xyxy=False)
        all_scored = torch.cat(scored).all().reshape(1) if scored else None
        return CropMasks(crop_box, packed, data["boxes"] + crop_offset(crop_box, data["boxes"].device),
                         data["iou_preds"], data["stability"], points, all_scored)

    # ------------------------------------------------------------------------------------------ images
    def _finish_image(self, crops: List[CropMasks], image_size) -> List[Dict[str, Any]]:
        opts = self.options
        crop_of = torch.cat([torch.full((c.packed.shape[0],), i, dtype=torch.long) for i, c in enumerate(crops)])
        row_of = torch.cat([torch.arange(c.packed.shape[0]) for c in crops])
        fields = {"boxes": torch.cat([c.boxes for c in crops]), "iou_preds": torch.cat([c.iou_preds for c in crops]),
                  "stability": torch.cat([c.stability for c in crops]), "points": torch.cat([c.points for c in crops])}

        def select(keep: torch.Tensor):
            nonlocal crop_of, row_of
            keep = keep.cpu()
            crop_of, row_of = crop_of[keep], row_of[keep]
            for key, value in fields.items():
                fields[key] = value[keep.to(value.device)]

        if len(crops) > 1:
            crop_boxes = torch.tensor([list(c.crop_box) for c in crops])
            scores = host_to_device(stages.crop_nms_scores(crop_boxes)[crop_of], fields["boxes"].device)
            select(stages.sam_batched_nms(fields["boxes"].float(), scores, opts.crop_nms_thresh))
        packed_full = None
        if opts.small_regions == "sam1" and opts.min_mask_region_area > 0 and len(row_of) > 0:
            new_boxes, packed_full, changed = self._small_regions(crops, crop_of, row_of, image_size)
            boxes = fields["boxes"]
            fields["boxes"] = torch.where(changed[:, None].to(boxes.device), new_boxes.to(boxes.device), boxes)
            keep = stages.small_region_nms(changed, new_boxes, max(opts.box_nms_thresh, opts.crop_nms_thresh))
            packed_full = packed_full[keep.to(packed_full.device)]
            select(keep)
        if len(row_of) == 0:
            return []

        height, width = image_size
        mask_parts: Dict[str, List[torch.Tensor]] = {}
        for start in range(0, len(row_of), opts.masks_per_chunk):
            stop = start + opts.masks_per_chunk
            packed = (packed_full[start:stop] if packed_full is not None
                      else self._image_frame(crops, crop_of[start:stop], row_of[start:stop], image_size))
            for key, value in rec.device_fields(packed, width, opts.output_mode).items():
                mask_parts.setdefault(key, []).append(value)
        fields["iou_preds"] = fields["iou_preds"].float()  # numpy has no bfloat16
        fields["stability"] = fields["stability"].float()
        scored = [c.all_scored for c in crops if c.all_scored is not None]
        quirks = {"all_scored": torch.cat(scored).to(fields["boxes"].device)} if scored else {}
        host = rec.to_host_once({**fields, **{k: torch.cat(v) for k, v in mask_parts.items()}, **quirks})
        segmentation, areas = rec.segmentations(opts.output_mode, host, height, width)
        box_dtype, crop_box_dtype = self._box_dtypes(crops, "all_scored" in host and not host["all_scored"].all())
        crop_boxes = np.array([c.crop_box for c in crops], dtype=crop_box_dtype)[crop_of.numpy()]
        return rec.build_records(segmentation, areas, host["boxes"].astype(box_dtype), host["iou_preds"],
                                 host["points"], host["stability"], crop_boxes)

    def _box_dtypes(self, crops: List[CropMasks], float_boxes: bool):
        style = self.options.field_types
        if style == "sam2":
            return np.float32, np.float32
        if style == "plain":
            return np.int64, np.int64
        # segment_anything's torch.cat promotions (EngineOptions.field_types).
        return (np.float32 if float_boxes else np.int64,
                np.float32 if any(c.packed.shape[0] == 0 for c in crops) else np.int64)

    def _image_frame(self, crops: List[CropMasks], crop_of: torch.Tensor, row_of: torch.Tensor,
                     image_size) -> torch.Tensor:
        """Packed (k, H, ceil(W/32)) image-frame masks of the records (crop_of[j], row_of[j]): rows of a
        full-image crop as they are, the others uncropped (segment_anything's ``uncrop_masks``)."""
        height, width = image_size
        full_box = (0, 0, width, height)
        device = crops[0].packed.device
        out = torch.zeros((len(row_of), height, packed_width(width)), dtype=torch.int32, device=device)
        for c in torch.unique(crop_of).tolist():
            crop = crops[c]
            where = torch.nonzero(crop_of == c).squeeze(1)
            rows = crop.packed[row_of[where].to(device)]
            if crop.crop_box != full_box:
                rows = stages.pack_stack(stages.uncrop_packed(rows, crop.crop_box, image_size))
            out[where.to(device)] = rows
        return out

    def _small_regions(self, crops, crop_of, row_of, image_size):
        """SAM 1's ``postprocess_small_regions`` with the mask work on the device: (new boxes, packed
        image-frame masks after removal, changed flags), in the records' order."""
        width = image_size[1]
        packed, changed, new_boxes = [], [], []
        for start in range(0, len(row_of), self.options.masks_per_chunk):
            stop = start + self.options.masks_per_chunk
            chunk = self._image_frame(crops, crop_of[start:stop], row_of[start:stop], image_size)
            masks, chunk_changed = stages.small_region_pass(unpack_masks(chunk, width),
                                                            self.options.min_mask_region_area)
            changed.append(chunk_changed)
            new_boxes.append(ops.masks_to_boxes(masks))
            packed.append(stages.pack_stack(masks))
        return torch.cat(new_boxes), torch.cat(packed), torch.cat(changed)


__all__ = ["CropMasks", "Engine", "EngineOptions", "FIELD_TYPES", "NMS_MODES", "SMALL_REGION_SEMANTICS"]
