"""SAM-consistent preprocessing and augmentation: one :class:`View` of an image renders its pixels and its masks.

A view is a crop of the original image (integer pixel box), an optional horizontal flip and colour factors.
Rendering follows SAM 1's preprocessing (what Lite-SAM's SegEvery does at inference): the crop's longest side
is resized to ``image_size`` (bilinear, antialiased; the identity view gives SegEvery's resize), the pixels
are rounded to uint8 (as SAM's ``ResizeLongestSide`` does) and zero-padded bottom-right to a square; the
normalisation with the model's pixel mean/std happens on the device (:func:`normalize`), after which the
padding is zero, as in ``Sam.preprocess``.

Masks of the same view are rendered on the decoder's low-resolution grid (``image_size / 4`` on a side, the
grid of the mask decoder's logits): each cell holds the fraction of its 4x4 input pixels inside the mask,
sampled from the mask at whatever resolution it is stored with ``torchvision.ops.roi_align`` over the cell's
exact footprint in the original image, so image and masks stay aligned whatever the two resolutions.

Randomness comes only from the ``numpy.random.Generator`` given to :meth:`Augmentation.sample`; callers seed
one per sample from (seed, epoch, item), which is what makes a run resumable at any step.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from litesam_kernels.segment_everything import resized_shape

MASK_STRIDE = 4  # input pixels per cell of the decoder's low-res mask grid (SAM: 1024 -> 256)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 grey, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class View:
    """Crop ``(x0, y0, x1, y1)`` (original pixels, end exclusive), then flip, then colour factors."""

    crop: Tuple[int, int, int, int]
    flip: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0

    @classmethod
    def identity(cls, height: int, width: int) -> "View":
        return cls((0, 0, int(width), int(height)))

    @property
    def crop_size(self) -> Tuple[int, int]:
        x0, y0, x1, y1 = self.crop
        return y1 - y0, x1 - x0

    def input_size(self, image_size: int) -> Tuple[int, int]:
        """(h, w) of the rendered pixels inside the ``image_size`` square."""
        return resized_shape(*self.crop_size, image_size)


@dataclass(frozen=True)
class Augmentation:
    """Random views: a crop of ``min_area``..1 of the image area whose aspect ratio changes by up to
    ``max_aspect_change`` (RandomResizedCrop-style, relative to the image), a horizontal flip with
    ``flip_probability``, brightness/contrast/saturation factors in ``1 +- colour_jitter``."""

    min_area: float = 0.3
    max_aspect_change: float = 4 / 3
    flip_probability: float = 0.5
    colour_jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.min_area <= 1:
            raise ValueError(f"min_area must be in (0, 1], got {self.min_area}")
        if self.max_aspect_change < 1:
            raise ValueError(f"max_aspect_change must be >= 1, got {self.max_aspect_change}")
        if not 0 <= self.flip_probability <= 1:
            raise ValueError(f"flip_probability must be in [0, 1], got {self.flip_probability}")
        if not 0 <= self.colour_jitter < 1:
            raise ValueError(f"colour_jitter must be in [0, 1), got {self.colour_jitter}")

    def to_dict(self) -> dict:
        return asdict(self)

    def sample(self, rng: np.random.Generator, height: int, width: int) -> View:
        area = rng.uniform(self.min_area, 1.0)
        log_aspect = math.log(self.max_aspect_change)
        aspect = math.exp(rng.uniform(-log_aspect, log_aspect))
        crop_w = min(width, max(1, int(round(width * math.sqrt(area * aspect)))))
        crop_h = min(height, max(1, int(round(height * math.sqrt(area / aspect)))))
        x0 = int(rng.integers(0, width - crop_w + 1))
        y0 = int(rng.integers(0, height - crop_h + 1))
        flip = bool(rng.random() < self.flip_probability)
        jitter = rng.uniform(1 - self.colour_jitter, 1 + self.colour_jitter, size=3)
        return View((x0, y0, x0 + crop_w, y0 + crop_h), flip, *(float(j) for j in jitter))


def render_image(image: np.ndarray, view: View, image_size: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """(3, S, S) uint8 pixels of ``view`` of an (H, W, 3) uint8 image, zero-padded, and their (h, w)."""
    x0, y0, x1, y1 = view.crop
    pixels = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()
    if view.flip:
        pixels = pixels.flip(-1)
    h, w = view.input_size(image_size)
    if (h, w) != view.crop_size:
        pixels = F.interpolate(pixels, (h, w), mode="bilinear", align_corners=False, antialias=True)
    pixels = _colour(pixels[0], view)
    out = torch.zeros(3, image_size, image_size, dtype=torch.uint8)
    out[:, :h, :w] = pixels.round_().clamp_(0, 255).to(torch.uint8)
    return out, (h, w)


def _colour(pixels: torch.Tensor, view: View) -> torch.Tensor:
    if view.brightness == view.contrast == view.saturation == 1.0:
        return pixels
    luma = torch.tensor(_LUMA).view(3, 1, 1)
    pixels = pixels * view.brightness
    mean_grey = (pixels * luma).sum(0).mean()
    pixels = (pixels - mean_grey) * view.contrast + mean_grey
    grey = (pixels * luma).sum(0, keepdim=True)
    return (pixels - grey) * view.saturation + grey


def render_masks(masks: torch.Tensor, original_size: Tuple[int, int], view: View, image_size: int) -> torch.Tensor:
    """Masks of ``view`` on the low-res grid: (N, S/4, S/4) float coverage in [0, 1] (0 in the padding).

    Args:
        masks: (N, hm, wm) bool masks of the whole original image, at any resolution (hm, wm).
        original_size: (H, W) of the original image (the frame of ``view.crop``).
    """
    from torchvision.ops import roi_align

    grid = image_size // MASK_STRIDE
    out = torch.zeros(masks.shape[0], grid, grid)
    if masks.shape[0] == 0:
        return out
    height, width = original_size
    mask_h, mask_w = masks.shape[-2:]
    x0, y0, x1, y1 = view.crop
    # Mask pixels whose centre lies outside the crop count as empty, so that the cells straddling its far
    # edges (whose footprint reaches into the padding) count only pixels the rendered image shows.
    rows_at = (torch.arange(mask_h) + 0.5) * (height / mask_h)
    cols_at = (torch.arange(mask_w) + 0.5) * (width / mask_w)
    window = ((rows_at >= y0) & (rows_at < y1))[:, None] & ((cols_at >= x0) & (cols_at < x1))[None, :]
    if view.flip:  # flipping after the crop = cropping the mirrored box of the flipped image
        x0, x1 = width - x1, width - x0
    h, w = view.input_size(image_size)
    rows, cols = -(-h // MASK_STRIDE), -(-w // MASK_STRIDE)
    to_mask_x, to_mask_y = mask_w / width, mask_h / height
    # Cell (r, c)'s footprint in (flipped) mask pixels starts at (top + r * cell_h, left + c * cell_w).
    left, top = x0 * to_mask_x, y0 * to_mask_y
    cell_w = MASK_STRIDE * (x1 - x0) / w * to_mask_x
    cell_h = MASK_STRIDE * (y1 - y0) / h * to_mask_y
    # Each mask is sampled only around its extent (+1 pixel: bilinear samples reach one neighbour), most
    # masks being small; the sub-grids' bins are exactly the whole grid's.
    for i, extent in enumerate(_extents(masks & window)):
        if extent is None:
            continue
        (ya, yb), (xa, xb) = extent
        ya, yb, xa, xb = max(ya - 1, 0), min(yb + 1, mask_h - 1), max(xa - 1, 0), min(xb + 1, mask_w - 1)
        part = (masks[i, ya:yb + 1, xa:xb + 1] & window[ya:yb + 1, xa:xb + 1]).float()
        if view.flip:
            part, (xa, xb) = part.flip(-1), (mask_w - 1 - xb, mask_w - 1 - xa)
        r0, r1 = _cell_span((ya, yb), top, cell_h, rows)
        c0, c1 = _cell_span((xa, xb), left, cell_w, cols)
        if r0 >= r1 or c0 >= c1:
            continue
        box = torch.tensor([[0.0, left + c0 * cell_w - xa, top + r0 * cell_h - ya,
                             left + c1 * cell_w - xa, top + r1 * cell_h - ya]])
        sampled = roi_align(part[None, None], box, (r1 - r0, c1 - c0), spatial_scale=1.0, sampling_ratio=-1,
                            aligned=True)
        out[i, r0:r1, c0:c1] = sampled[0, 0].clamp_(0, 1)
    return out


def _extents(masks: torch.Tensor):
    """Per (bool) mask, its ((first, last) row, (first, last) column) holding a pixel, or None when empty."""
    rows_any, cols_any = masks.any(2), masks.any(1)
    out = []
    for rows_i, cols_i in zip(rows_any, cols_any):
        ys, xs = torch.nonzero(rows_i).flatten(), torch.nonzero(cols_i).flatten()
        out.append(None if ys.numel() == 0 else ((int(ys[0]), int(ys[-1])), (int(xs[0]), int(xs[-1]))))
    return out


def _cell_span(extent: Tuple[int, int], start: float, cell: float, count: int) -> Tuple[int, int]:
    """The cells [c0, c1) whose footprint meets mask pixels extent[0]..extent[1] (inclusive)."""
    first = math.floor((extent[0] - start) / cell)
    last = math.ceil((extent[1] + 1 - start) / cell)
    return max(first, 0), min(last, count)


def normalize(pixels: torch.Tensor, sizes: torch.Tensor, pixel_mean: torch.Tensor, pixel_std: torch.Tensor
              ) -> torch.Tensor:
    """(B, 3, S, S) uint8 padded pixels -> float, normalised with the model's mean/std, padding zero
    (``Sam.preprocess``); ``sizes`` (B, 2) are the rendered (h, w)."""
    mean = pixel_mean.to(pixels.device, torch.float32).view(1, 3, 1, 1)
    std = pixel_std.to(pixels.device, torch.float32).view(1, 3, 1, 1)
    side = pixels.shape[-1]
    index = torch.arange(side, device=pixels.device)
    valid = (index[None, :, None] < sizes[:, 0, None, None]) & (index[None, None, :] < sizes[:, 1, None, None])
    return ((pixels.float() - mean) / std) * valid[:, None]
