"""What the SAM 1 and SAM 2 drop-ins share: argument checks, point grids, ``generate`` / ``generate_batch``."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from litesam_kernels import _backend
from litesam_kernels.engine.geometry import build_all_layer_point_grids
from litesam_kernels.engine.pipeline import Engine, EngineOptions
from litesam_kernels.engine.prompts import PointGridPrompts
from litesam_kernels.engine.records import check_output_mode


def check_image(image, name: str = "image") -> np.ndarray:
    """An (H, W, 3) uint8 numpy image, as upstream's generators take; TypeError / ValueError otherwise."""
    if isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array (HxWx3 uint8, as for the upstream generator), got a torch.Tensor")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of shape (H, W, 3) and dtype uint8, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8 (pixel values 0..255), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3) (RGB, channels last), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    return image


def check_positive_ints(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


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
    """``generate`` / ``generate_batch`` of the point-grid drop-ins; subclasses say what :meth:`_options`
    their upstream has. Attributes are read at each call (as upstream does), so they may be changed."""

    adapter = None
    point_grids: List[np.ndarray] = []

    def _check_common(self, output_mode: str, **counts) -> None:
        check_output_mode(output_mode)
        check_positive_ints(**counts)

    def _options(self) -> EngineOptions:
        raise NotImplementedError

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


__all__ = ["PointGridGenerator", "check_image", "check_positive_ints", "fused_postprocess_default",
           "layer_point_grids"]
