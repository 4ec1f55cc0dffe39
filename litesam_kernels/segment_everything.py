"""SegEvery with Lite-SAM: uint8 images in, SAM automatic-mask-generator records out.

A thin front end over :mod:`litesam_kernels.engine` (AutoPPN prompts, the Lite-SAM adapter, SAM 1's
post-processing semantics). Pipeline, all on the model's device:

1. crops (``crop_n_layers``, SAM's crop boxes; default: the image only), ``batch_size`` crops per encoder
   call; preprocessing: resize the longest side to ``image_size`` (bilinear, antialiased), normalise with
   the model's pixel mean/std, zero-pad bottom-right to a square (SAM's convention);
2. LiteViT -> image embeddings; AutoPPN -> heatmap + box regression; ``ops.ppn_decode`` -> up to K point
   and box prompts per crop (fixed size, no host sync);
3. prompt encoder + mask decoder over all prompts of all crops of an encoder call
   (``MaskDecoder.forward_batched``: the image embedding is broadcast, never copied per prompt),
   ``prompts_per_batch`` prompts per crop at a time;
4. post-processing (``ops.postprocess_masks``, SAM semantics, one pass over the low-res logits): upsample
   to the input size, crop the padding, upsample to the crop size, threshold, stability score, inclusive
   box, area, bit-packed mask (``ops.bitmask`` layout);
5. filtering by predicted IoU (``>``) and stability (``>=``) as SAM does, the crop-edge test, then NMS per
   crop, scores = predicted IoU: box NMS (SAM's) or mask NMS on the packed masks (``ops.mask_nms``); across
   crops SAM's box NMS preferring smaller crops; ``min_mask_region_area``: SAM 1's holes/islands removal;
6. RLE run lengths found on the device (or, for binary masks, the packed masks at 1 bit per pixel) cross
   with every other field in one device-to-host copy per image; the records are assembled on the host.

Host synchronisation: one survivor count per decoder call, the NMS keep lists, the one copy of step 6.

Every op the pipeline calls dispatches like any ``litesam_kernels.ops`` call (``LITESAM_BACKEND``,
``use_backend`` or the ``backend`` argument); ``SegmentEverything.eager_reference`` is the same pipeline
with every op on its pure-torch reference and SAM's per-prompt decoder (the benchmarks' baseline).

Records follow SAM's ``SamAutomaticMaskGenerator.generate`` (segmentation, area, bbox XYWH from the
inclusive box, predicted_iou, point_coords, stability_score, crop_box), in decreasing predicted-IoU order
per image without crops. ``point_coords`` is the AutoPPN peak (its cell centre) that produced the prompt, in
original-image pixels, where SAM reports its grid point.

Half precision: ``model.to(torch.bfloat16)`` / ``.half()`` runs the encoder and decoder in that dtype
(images are cast to it, prompts encoded under autocast), post-processing thresholds the half logits as SAM
does (thresholds rounded to the logits' dtype), scores are upcast before numpy; ``torch.autocast`` around
``generate`` works too.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from litesam_kernels._backend import BACKENDS, use_backend
from litesam_kernels.engine.adapters import LiteSamAdapter
from litesam_kernels.engine.frontend import check_generator_arguments, check_positive_ints
from litesam_kernels.engine.geometry import resized_shape
from litesam_kernels.engine.pipeline import NMS_MODES, Engine, EngineOptions
from litesam_kernels.engine.prompts import PROMPT_MODES, AutoPPNPrompts
from litesam_kernels.engine.records import OUTPUT_MODES, check_output_mode, segmentation_to_mask, to_host_once

__all__ = ["NMS_MODES", "OUTPUT_MODES", "PROMPT_MODES", "SegmentEverything", "as_image_list", "resized_shape",
           "segment_everything", "segmentation_to_mask", "to_host_once"]


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


# ------------------------------------------------------------------------------------------ pipeline
class SegmentEverything:
    """Lite-SAM SegEvery. ``generate(images)`` returns, per image, a list of SAM-AMG-format records.

    Args:
        model: a :class:`litesam_kernels.model.LiteSAM` (eval mode is set on call); any dtype.
        points_per_image: K, prompts per crop from AutoPPN.
        ppn_score_threshold: AutoPPN peak score threshold.
        prompt: "box" (default; one mask per box), "point" (the peak's point; SAM's three masks) or "point+box".
        multimask_output: masks per prompt: 3 if True, 1 if False; default False for box prompts, True for points.
        pred_iou_thresh, stability_score_thresh, stability_score_offset, box_nms_thresh: as SAM's AMG
            (defaults 0.88, 0.95, 1.0, 0.7).
        nms: "box" (SAM's: box IoU) or "mask" (mask IoU on the packed masks, ``ops.mask_nms``, threshold
            ``mask_nms_thresh``); within each crop, scores = predicted IoU.
        mask_nms_thresh: the mask-IoU threshold of ``nms="mask"`` (a mask is dropped when its IoU with a kept
            one is > this).
        crop_n_layers, crop_nms_thresh, crop_overlap_ratio: SAM's crops (layer i: 2**i x 2**i crops of the
            image, each segmented with its own K prompts; masks touching a crop's inner edge are dropped;
            NMS across crops prefers smaller crops). Default 0: the image only.
        min_mask_region_area: SAM 1's post-pass: holes and islands smaller than this (pixels, original
            image) are removed from each mask, then NMS prefers the unchanged masks. 0: off.
        output_mode: "binary_mask" (Fortran-ordered bool numpy), "uncompressed_rle" or "coco_rle" (needs pycocotools).
        batch_size: crops (images) per encoder call; prompts_per_batch: prompts per crop per decoder call;
            crops_per_decoder_call: crops whose prompts one decoder call takes (None: all ``batch_size``). The
            decoder's activations (about 30 MB per prompt at a 1024 input) set the peak memory: the default 1
            keeps it at ``prompts_per_batch`` prompts (64: segment_anything's point batch, and below its peak);
            more crops per call mean fewer, larger decoder calls.
        batched_decoder: False runs SAM's per-prompt decoder path (the eager reference).
        backend: force every ``litesam_kernels.ops`` call of the pipeline onto one backend
            (``"reference"``, ``"triton"``, ``"cuda"``, ``"cpu"``; see ``use_backend``; an op without that
            backend raises ``BackendUnavailableError``); None: each op's default.
        compile: run the fixed-size stages (normalise+pad, encoder + AutoPPN, prompt encoder + decoder over
            ``prompts_per_batch`` prompts, fused post-processing) through ``torch.compile(fullgraph=True)``;
            a dict is passed to ``torch.compile`` as options (e.g. ``{"mode": "reduce-overhead"}`` for CUDA
            graphs at batch 1). See :mod:`litesam_kernels.engine.compiled`.

    :meth:`eager_reference` builds the baseline: the same pipeline with every op on its torch reference and
    SAM's per-prompt decoder.
    """

    def __init__(self, model, *, points_per_image: int = 256, ppn_score_threshold: float = 0.1,
                 prompt: str = "box", multimask_output: Optional[bool] = None, pred_iou_thresh: float = 0.88,
                 stability_score_thresh: float = 0.95, stability_score_offset: float = 1.0,
                 box_nms_thresh: float = 0.7, nms: str = "box", mask_nms_thresh: float = 0.7,
                 crop_n_layers: int = 0, crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 min_mask_region_area: float = 0, output_mode: str = "binary_mask", batch_size: int = 8,
                 prompts_per_batch: int = 64, crops_per_decoder_call: Optional[int] = 1,
                 batched_decoder: bool = True, backend: Optional[str] = None,
                 compile=False) -> None:
        if prompt not in PROMPT_MODES:
            raise ValueError(f"prompt must be one of {PROMPT_MODES}, got {prompt!r}")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        check_output_mode(output_mode)
        if nms not in NMS_MODES:
            raise ValueError(f"nms must be one of {NMS_MODES}, got {nms!r}")
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
        check_positive_ints(points_per_image=points_per_image, batch_size=batch_size,
                            prompts_per_batch=prompts_per_batch)
        check_generator_arguments(
            ppn_score_threshold=ppn_score_threshold, pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh, stability_score_offset=stability_score_offset,
            box_nms_thresh=box_nms_thresh, mask_nms_thresh=mask_nms_thresh, crop_n_layers=crop_n_layers,
            crop_nms_thresh=crop_nms_thresh, crop_overlap_ratio=crop_overlap_ratio,
            min_mask_region_area=min_mask_region_area)
        self.model = model
        self.points_per_image = points_per_image
        self.ppn_score_threshold = ppn_score_threshold
        self.prompt = prompt
        self.multimask_output = (prompt == "point") if multimask_output is None else bool(multimask_output)
        self.backend = backend
        self.batched_decoder = batched_decoder
        self.options = EngineOptions(
            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh, crop_n_layers=crop_n_layers,
            crop_nms_thresh=crop_nms_thresh, crop_overlap_ratio=crop_overlap_ratio,
            min_mask_region_area=float(min_mask_region_area),
            small_regions="sam1", multimask_output=self.multimask_output, nms=nms,
            mask_nms_thresh=mask_nms_thresh,
            output_mode=output_mode, prompts_per_decoder_call=prompts_per_batch, crops_per_encoder_call=batch_size,
            crops_per_decoder_call=crops_per_decoder_call, field_types="plain",
        )
        self.adapter = LiteSamAdapter(model, batched_decoder=batched_decoder)
        if compile:
            from litesam_kernels.engine.compiled import CompiledLiteSamAdapter

            self.adapter = CompiledLiteSamAdapter(model, batched_decoder=batched_decoder,
                                                  prompts_per_call=prompts_per_batch,
                                                  compile_options=compile if isinstance(compile, dict) else None)
        self.engine = Engine(self.adapter, AutoPPNPrompts(points_per_image, ppn_score_threshold, prompt),
                             self.options)

    @classmethod
    def eager_reference(cls, model, **kwargs) -> "SegmentEverything":
        """The baseline pipeline: every op on its pure-torch reference, SAM's per-prompt decoder."""
        return cls(model, **{**kwargs, "batched_decoder": False, "backend": "reference", "compile": False})

    @torch.inference_mode()
    def generate(self, images) -> List[List[Dict[str, Any]]]:
        images = as_image_list(images)
        self.model.eval()
        with use_backend(self.backend) if self.backend is not None else contextlib.nullcontext():
            return self.engine.run(images)

    __call__ = generate


def segment_everything(model, images, **kwargs) -> List[List[Dict[str, Any]]]:
    """SegEvery on ``images`` (one (H, W, 3) uint8 image, a (B, H, W, 3) batch, or a list of images of any
    sizes): per image, a list of SAM-AMG records. Keyword arguments: see :class:`SegmentEverything`."""
    return SegmentEverything(model, **kwargs).generate(images)
