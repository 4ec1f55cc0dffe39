"""Lite-SAM's image preprocessing on the device: SAM's longest-side resize, normalisation and padding.

``normalize_and_pad`` is a fixed-shape stage (one resized image in, one ``S x S`` model input out) that
``torch.compile(fullgraph=True)`` captures; the resize before it depends on the image's size.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from litesam_kernels.engine.geometry import resized_shape


def as_pixel_tensor(image) -> torch.Tensor:
    """An (H, W, 3) uint8 numpy array or tensor as a tensor (no copy for a contiguous array)."""
    if isinstance(image, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(image))
    return image


def resize_longest_side(image: torch.Tensor, image_size: int, device) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, h, w) float32 on ``device``, the longest side resized to ``image_size``
    (bilinear, antialiased, on float pixels: close to, not bitwise equal to, SAM's PIL resize, which also
    rounds the resized image to uint8)."""
    h, w = resized_shape(image.shape[0], image.shape[1], image_size)
    pixels = as_pixel_tensor(image).to(device, non_blocking=True).permute(2, 0, 1)[None].float()
    if (h, w) != tuple(image.shape[:2]):
        pixels = F.interpolate(pixels, (h, w), mode="bilinear", align_corners=False, antialias=True)
    return pixels


def normalize_and_pad(pixels: torch.Tensor, pixel_mean: torch.Tensor, pixel_std: torch.Tensor,
                      image_size: int) -> torch.Tensor:
    """(1, 3, h, w) float pixels -> (1, 3, S, S) normalised with the model's mean/std (float32) and
    zero-padded bottom-right (SAM's convention)."""
    normalized = (pixels - pixel_mean.float()) / pixel_std.float()
    h, w = pixels.shape[-2:]
    return F.pad(normalized, (0, image_size - w, 0, image_size - h))


def preprocess_longest_side(images: Sequence, image_size: int, pixel_mean: torch.Tensor, pixel_std: torch.Tensor,
                            normalize=normalize_and_pad) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
    """uint8 (H, W, 3) images -> (B, 3, S, S) float32 normalised padded batch on the device of
    ``pixel_mean``, and the resized (h, w) of each. ``normalize`` may be a compiled ``normalize_and_pad``."""
    device = pixel_mean.device
    batch, sizes = [], []
    for image in images:
        pixels = resize_longest_side(image, image_size, device)
        batch.append(normalize(pixels, pixel_mean, pixel_std, image_size))
        sizes.append(tuple(int(s) for s in pixels.shape[-2:]))
    return torch.cat(batch), sizes


__all__ = ["as_pixel_tensor", "normalize_and_pad", "preprocess_longest_side", "resize_longest_side"]
