"""SAM's geometry for segment-everything: point grids, crop boxes, the crop-edge test, coordinate transforms.

The same arithmetic as ``segment_anything.utils.amg`` / ``utils.transforms`` (and sam2's "very lightly
adapted" copies), written here so the engine depends on neither package:

- ``build_point_grid(n)``: ``np.linspace(1/2n, 1 - 1/2n, n)`` per side (float64), x fastest;
  ``build_all_layer_point_grids``: layer i has ``int(n / scale**i)`` points per side;
- ``generate_crop_boxes``: crop 0 is the image; layer i has ``2**i`` crops per side overlapping by
  ``int(overlap_ratio * short_side * 2 / 2**i)``, XYXY, x-major order (``product(x0s, y0s)``);
- ``is_box_near_crop_edge``: boxes (crop frame) are uncropped, cast to float32 and compared with the crop
  and image boxes by ``|a - b| <= atol`` (``torch.isclose(..., rtol=0)``); a box is dropped when a
  coordinate is near the crop edge but not near the image edge;
- ``longest_side_coords`` (SAM 1's ``ResizeLongestSide.apply_coords``, float64) and
  ``normalized_coords`` (SAM 2's ``SAM2Transforms.transform_coords(normalize=True)``, float32).
"""
from __future__ import annotations

import math
from itertools import product
from typing import List, Sequence, Tuple

import numpy as np
import torch

Box = Tuple[int, int, int, int]  # XYXY, exclusive end


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n², 2) float64 points (x, y) evenly spaced in [0, 1]², x fastest (SAM's ``build_point_grid``).
    ValueError for n < 1 (SAM divides by zero)."""
    if n_per_side < 1:
        raise ValueError(f"a point grid needs at least 1 point per side, got {n_per_side} (points_per_side "
                         f"divided by crop_n_points_downscale_factor ** layer must stay >= 1)")
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> List[np.ndarray]:
    """One grid per crop layer 0..n_layers: ``int(n_per_side / scale_per_layer**i)`` points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer ** i))) for i in range(n_layers + 1)]


def generate_crop_boxes(image_size: Sequence[int], n_layers: int, overlap_ratio: float
                        ) -> Tuple[List[List[int]], List[int]]:
    """SAM's crop boxes (XYXY ints) of an (H, W) image and the layer index of each."""
    height, width = image_size
    short_side = min(height, width)
    boxes, layers = [[0, 0, width, height]], [0]

    def crop_length(length, n_crops, overlap):
        return int(math.ceil((overlap * (n_crops - 1) + length) / n_crops))

    for layer in range(n_layers):
        per_side = 2 ** (layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = crop_length(width, per_side, overlap)
        crop_h = crop_length(height, per_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
            layers.append(layer + 1)
    return boxes, layers


def is_box_near_crop_edge(boxes: torch.Tensor, crop_box: Sequence[int], image_box: Sequence[int],
                          atol: float = 20.0) -> torch.Tensor:
    """(N,) bool: boxes (crop frame, XYXY) touching the crop's edge but not the image's (within ``atol``)."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float, device=boxes.device)
    x0, y0 = crop_box[0], crop_box[1]
    uncropped = (boxes + torch.tensor([[x0, y0, x0, y0]], device=boxes.device)).float()
    near_crop = torch.isclose(uncropped, crop[None, :], atol=atol, rtol=0)
    near_image = torch.isclose(uncropped, image[None, :], atol=atol, rtol=0)
    return torch.any(near_crop & ~near_image, dim=1)


def box_xyxy_to_xywh(box: np.ndarray) -> np.ndarray:
    """XYXY -> XYWH (the records' ``bbox`` and ``crop_box``), same dtype."""
    out = np.array(box, copy=True)
    out[2] = out[2] - out[0]
    out[3] = out[3] - out[1]
    return out


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """torchvision's ``box_area``: (x2 - x1) * (y2 - y1), in the boxes' dtype."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def resized_shape(height: int, width: int, long_side: int) -> Tuple[int, int]:
    """SAM's ``ResizeLongestSide.get_preprocess_shape``: (h, w) with the longest side ``long_side``."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def longest_side_coords(points: np.ndarray, original_size: Sequence[int], long_side: int) -> np.ndarray:
    """SAM 1's ``ResizeLongestSide.apply_coords``: (..., 2) pixel points of an ``original_size`` (H, W)
    image -> the resized model input's pixels, float64."""
    old_h, old_w = original_size
    new_h, new_w = resized_shape(old_h, old_w, long_side)
    coords = np.array(points, dtype=float, copy=True)
    coords[..., 0] = coords[..., 0] * (new_w / old_w)
    coords[..., 1] = coords[..., 1] * (new_h / old_h)
    return coords


def normalized_coords(points: torch.Tensor, original_size: Sequence[int], resolution: int) -> torch.Tensor:
    """SAM 2's ``SAM2Transforms.transform_coords(points, normalize=True, orig_hw=original_size)``:
    divide by (W, H), then scale to the square ``resolution`` input, in the points' dtype (float32)."""
    height, width = original_size
    coords = points.clone()
    coords[..., 0] = coords[..., 0] / width
    coords[..., 1] = coords[..., 1] / height
    return coords * resolution


__all__ = ["Box", "box_area", "box_xyxy_to_xywh", "build_all_layer_point_grids", "build_point_grid",
           "generate_crop_boxes", "is_box_near_crop_edge", "longest_side_coords", "normalized_coords",
           "resized_shape"]
