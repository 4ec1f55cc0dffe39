"""What the SAM 1 and SAM 2 drop-ins share: argument checks, point grids, ``generate`` / ``generate_batch``."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from litesam_kernels import _backend
from litesam_kernels._checks import check_int, check_real
from litesam_kernels.engine.geometry import build_all_layer_point_grids
from litesam_kernels.engine.pipeline import Engine, EngineOptions, check_positive_ints  # noqa: F401 (re-exported)
from litesam_kernels.engine.prompts import PointGridPrompts
from litesam_kernels.engine.records import check_output_mode


def check_image(image, name: str = "image") -> np.ndarray:
    """An (H, W, 3) uint8 numpy image, as upstream's generators take; TypeError / ValueError otherwise."""
    if isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array (HxWx3 uint8, as for the upstream generator), "
                        f"got a torch.Tensor")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of shape (H, W, 3) and dtype uint8, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8 (pixel values 0..255), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3) (RGB, channels last), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    return image


# The generators' number arguments (SAM's names; SegEvery's too): (low, high) for reals (None: unbounded; NaN is
# always rejected: it compares False with every score, so a NaN threshold silently keeps or drops everything),
# the minimum for ints. Thresholds that SAM compares scores with may be any real (-inf keeps everything).
REAL_ARGUMENTS = {
    "pred_iou_thresh": (None, None), "stability_score_thresh": (None, None), "stability_score_offset": (None, None),
    "mask_threshold": (None, None), "box_nms_thresh": (0.0, 1.0), "crop_nms_thresh": (0.0, 1.0),
    "mask_nms_thresh": (0.0, 1.0), "crop_overlap_ratio": (0.0, 1.0), "min_mask_region_area": (0.0, None),
    "ppn_score_threshold": (0.0, 1.0),
}
INT_ARGUMENTS = {"points_per_side": 1, "crop_n_layers": 0, "crop_n_points_downscale_factor": 1}


def check_generator_arguments(**values) -> None:
    """TypeError / ValueError naming the argument for a generator's number argument of the wrong type or out
    of range (see ``REAL_ARGUMENTS`` and ``INT_ARGUMENTS``); None passes for ``points_per_side`` (point
    grids given) and ``mask_threshold`` (the model's). Names without a range are not checked here."""
    for name, value in values.items():
        if value is None and name in ("points_per_side", "mask_threshold"):
            continue
        if name in REAL_ARGUMENTS:
            low, high = REAL_ARGUMENTS[name]
            check_real(name, value, low=low, high=high)
        elif name in INT_ARGUMENTS:
            check_int(name, value, low=INT_ARGUMENTS[name])


def layer_point_grids(points_per_side: Optional[int], point_grids: Optional[List[np.ndarray]], crop_n_layers: int,
                      crop_n_points_downscale_factor: int) -> List[np.ndarray]:
    """SAM's grids per crop layer, from ``points_per_side`` or given (exactly one of the two)."""
    if (points_per_side is None) == (point_grids is None):
        raise ValueError("Exactly one of points_per_side or point_grids must be provided.")
    if points_per_side is not None:
        grids = build_all_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
    else:
        grids = list(point_grids)
    if len(grids) < crop_n_layers + 1:
        raise ValueError(f"point_grids needs one grid per crop layer ({crop_n_layers + 1}), got {len(grids)}")
    return grids


def fused_postprocess_default(device: torch.device) -> bool:
    """Fuse post-processing only where a compiled or Triton kernel runs it: the op's reference fallback is
    slower than the model's own resizes."""
    return _backend.choose(_backend.implementations("postprocess_masks"), torch.device(device)) != "reference"


class PointGridGenerator:
    """The point-grid drop-ins (SAM 1, SAM 2): their arguments as attributes (read at each call, as upstream
    does, so they may be changed), ``generate`` / ``generate_batch`` over the engine. Subclasses set the
    adapter and their upstream's semantics (``small_regions``, ``field_types``)."""

    small_regions = "sam1"
    field_types = "sam1"
    # SAM 1 has neither argument: its threshold is the model's, its masks three per point, no m2m pass.
    mask_threshold = None
    use_m2m = False
    multimask_output = True

    def _setup(self, adapter, *, points_per_side, point_grids, crop_n_layers, crop_n_points_downscale_factor,
               output_mode, points_per_batch, batches_per_decoder_call, masks_per_chunk, images_per_encoder_call,
               fused_postprocess, **attributes) -> None:
        check_output_mode(output_mode)
        check_generator_arguments(points_per_side=points_per_side, crop_n_layers=crop_n_layers,
                                  crop_n_points_downscale_factor=crop_n_points_downscale_factor, **attributes)
        check_positive_ints(points_per_batch=points_per_batch, batches_per_decoder_call=batches_per_decoder_call,
                            masks_per_chunk=masks_per_chunk, images_per_encoder_call=images_per_encoder_call)
        self.point_grids = layer_point_grids(points_per_side, point_grids, crop_n_layers,
                                             crop_n_points_downscale_factor)
        self.adapter = adapter
        self.crop_n_layers = crop_n_layers
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.output_mode = output_mode
        self.points_per_batch = int(points_per_batch)
        self.batches_per_decoder_call = int(batches_per_decoder_call)
        self.masks_per_chunk = int(masks_per_chunk)
        self.images_per_encoder_call = int(images_per_encoder_call)
        self.fused_postprocess = bool(fused_postprocess_default(adapter.device) if fused_postprocess is None
                                      else fused_postprocess)
        for name, value in attributes.items():
            setattr(self, name, value)

    def _options(self) -> EngineOptions:
        return EngineOptions(
            pred_iou_thresh=self.pred_iou_thresh, stability_score_thresh=self.stability_score_thresh,
            stability_score_offset=self.stability_score_offset, mask_threshold=self.mask_threshold,
            box_nms_thresh=self.box_nms_thresh, crop_n_layers=self.crop_n_layers,
            crop_nms_thresh=self.crop_nms_thresh, crop_overlap_ratio=self.crop_overlap_ratio,
            min_mask_region_area=self.min_mask_region_area, small_regions=self.small_regions,
            multimask_output=bool(self.multimask_output), use_m2m=bool(self.use_m2m), output_mode=self.output_mode,
            prompts_per_decoder_call=self.points_per_batch * self.batches_per_decoder_call,
            points_per_batch=self.points_per_batch, crops_per_encoder_call=self.images_per_encoder_call,
            masks_per_chunk=self.masks_per_chunk, fused_postprocess=self.fused_postprocess,
            field_types=self.field_types,
        )

    @property
    def model(self):
        return self.adapter.model

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> List[Dict[str, Any]]:
        """Masks for one HWC uint8 RGB image: the records of the upstream generator's ``generate``.

        Raises:
            TypeError: ``image`` is not a numpy array, or not uint8.
            ValueError: not HxWx3, or empty.
        """
        return self.generate_batch([image])[0]

    @torch.no_grad()
    def generate_batch(self, images: Sequence[np.ndarray]) -> List[List[Dict[str, Any]]]:
        """``[generate(image) for image in images]`` in one call (images may differ in size); the crops of
        all images go through the image encoder ``images_per_encoder_call`` at a time."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if not isinstance(images, (list, tuple)):
            raise TypeError(f"images must be a list of HxWx3 uint8 arrays, got {type(images).__name__}")
        images = [check_image(image, f"images[{i}]") for i, image in enumerate(images)]
        return Engine(self.adapter, PointGridPrompts(self.point_grids), self._options()).run(images)


__all__ = ["PointGridGenerator", "check_generator_arguments", "check_image", "check_positive_ints", "fused_postprocess_default",
           "layer_point_grids"]
