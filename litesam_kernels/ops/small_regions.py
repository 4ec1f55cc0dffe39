"""Batched connected components (8-connectivity) with per-component areas, SAM 1's
``remove_small_regions`` and SAM 2's hole/sprinkle filling, on the device.

``remove_small_regions`` reproduces ``segment_anything.utils.amg.remove_small_regions`` (OpenCV
``connectedComponentsWithStats(working, 8)``) for a whole stack of masks at once:

- ``working = mask`` for ``"islands"``, ``~mask`` for ``"holes"``; components of ``working`` under
  8-connectivity;
- a component is small when its pixel count is **strictly less** than ``area_thresh``;
- no small component: the mask is returned unchanged and its flag is False;
- ``"holes"``: every small background component is filled, **including those touching the border**;
- ``"islands"``: every small foreground component is removed; if that would remove all of them, the
  largest one is kept (equal sizes: the one OpenCV labels first, i.e. the component whose first 2x2 pixel
  block in block-raster order comes first; OpenCV's block-based labelling numbers components that way).

``fill_small_regions`` reproduces SAM 2's ``SAM2Transforms.postprocess_masks`` (the ``max_hole_area`` /
``max_sprinkle_area`` step that sam2 runs with its CUDA extension ``sam2._C`` and skips without it), on
low-resolution logits before upsampling:

- components are 8-connected; a region is small when its pixel count is **<=** the area (SAM 1: ``<``);
- holes: components of ``logits <= threshold`` with area <= ``max_hole_area`` get ``threshold + 10``;
- sprinkles: components of ``logits > threshold`` **of the input** (not of the hole-filled logits) with area
  <= ``max_sprinkle_area`` get ``threshold - 10``; an area of 0 switches a step off.

Component ids (``connected_components``) are ``1 + code`` of the component's first pixel in that order,
where ``code(y, x) = 4 * ((y // 2) * ceil(W / 2) + x // 2) + 2 * (y % 2) + (x % 2)``: sorting ids gives
OpenCV's label order; ids are not consecutive. 0 is the background (pixels that are False).
"""
from __future__ import annotations

from typing import Tuple

import torch

from litesam_kernels import _backend
from litesam_kernels._checks import check_real, check_tensor

MODES = ("holes", "islands")
_CC = _backend.register(_backend.OpImplementations("connected_components", compiled_kernel="_connected_components_kernel"))
_RSR = _backend.register(_backend.OpImplementations("remove_small_regions", compiled_kernel="_remove_small_regions_kernel"))
# Holes / sprinkles are filled with threshold -/+ this (sam2's constant).
_FILL_OFFSET = 10.0


def connected_components(masks: torch.Tensor) -> torch.Tensor:
    """8-connected components of every mask in a stack.

    Args:
        masks: bool ``(..., H, W)``.

    Returns:
        int32 ``(..., H, W)``: 0 where ``masks`` is False, else the component id (see the module docstring:
        ``1 + `` the block-raster code of the component's first pixel; ids increase in OpenCV's label order).

    Raises:
        TypeError: non-tensor or non-bool ``masks``. ValueError: fewer than 2 dims, or H*W too large for int32 ids.
    """
    _check_masks(masks)
    return torch.ops.litesam.connected_components(masks)


def connected_component_areas(masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """8-connected components of every mask and, per pixel, the area of its component.

    The interface of sam2's ``get_connected_components`` (``sam2.utils.misc``, CUDA-only there).

    Args:
        masks: bool ``(..., H, W)``.

    Returns:
        ``(labels, areas)``, both int32 ``(..., H, W)``: ``labels`` as :func:`connected_components` (0 on
        False pixels), ``areas`` the pixel count of the pixel's component (0 on False pixels).

    Raises:
        TypeError / ValueError: as :func:`connected_components`.
    """
    _check_masks(masks)
    return torch.ops.litesam.connected_component_areas(masks)


def fill_small_regions(logits: torch.Tensor, max_hole_area: float, max_sprinkle_area: float,
                       threshold: float = 0.0) -> torch.Tensor:
    """SAM 2's hole and sprinkle filling on mask logits (module docstring), without leaving the device.

    Args:
        logits: floating ``(..., H, W)`` (SAM 2: the 256x256 low-res logits, cast to float32).
        max_hole_area, max_sprinkle_area: real >= 0; 0 skips that step.
        threshold: the binarisation threshold of the logits (sam2's predictor: 0.0).

    Returns:
        the logits (same dtype and shape) with small holes set to ``threshold + 10`` and small sprinkles to
        ``threshold - 10``.

    Raises:
        TypeError: non-floating logits, non-real areas. ValueError: fewer than 2 dims, negative/NaN areas.
    """
    check_tensor("logits", logits, floating=True, expected="(..., H, W) floating")
    if logits.dim() < 2:
        raise ValueError(f"logits must have at least 2 dims (..., H, W), got shape {tuple(logits.shape)}")
    max_hole_area = check_real("max_hole_area", max_hole_area, low=0.0)
    max_sprinkle_area = check_real("max_sprinkle_area", max_sprinkle_area, low=0.0)
    threshold = check_real("threshold", threshold)
    filled = logits
    if max_hole_area > 0:
        background = logits <= threshold
        _, areas = connected_component_areas(background)
        filled = torch.where(background & (areas <= max_hole_area), threshold + _FILL_OFFSET, filled)
    if max_sprinkle_area > 0:
        foreground = logits > threshold
        _, areas = connected_component_areas(foreground)
        filled = torch.where(foreground & (areas <= max_sprinkle_area), threshold - _FILL_OFFSET, filled)
    return filled


def remove_small_regions(masks: torch.Tensor, area_thresh: float, mode: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """SAM1's ``remove_small_regions`` (module docstring) for a stack of masks, without leaving the device.

    Args:
        masks: bool ``(..., H, W)``.
        area_thresh: components with fewer pixels than this (strict ``<``) are small. Real, >= 0.
        mode: ``"holes"`` or ``"islands"``.

    Returns:
        ``(new_masks, changed)``: bool ``(..., H, W)`` and bool ``(...)`` (True where a small region existed,
        i.e. where segment_anything returns ``changed=True``).

    Raises:
        TypeError: non-tensor/non-bool masks, non-real threshold, non-str mode.
        ValueError: fewer than 2 dims, negative/NaN threshold, unknown mode.
    """
    _check_masks(masks)
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a str ('holes' or 'islands'), got {type(mode).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    thresh = check_real("area_thresh", area_thresh, low=0.0)
    return torch.ops.litesam.remove_small_regions(masks, thresh, mode == "holes")


# ------------------------------------------------------------------------------------------ validation
def _check_masks(masks) -> None:
    check_tensor("masks", masks, dtypes=(torch.bool,), expected="(..., H, W) bool")
    if masks.dim() < 2:
        raise ValueError(f"masks must have at least 2 dims (..., H, W), got shape {tuple(masks.shape)}")
    h, w = masks.shape[-2:]
    if 4 * ((h + 1) // 2) * ((w + 1) // 2) >= 2**31 - 1:
        raise ValueError(f"masks of {h}x{w} pixels are too large for int32 component ids")


# ------------------------------------------------------------------------------------------ reference
def _block_codes(h: int, w: int, device) -> torch.Tensor:
    """code(y, x) of the module docstring, int64 (H, W)."""
    y = torch.arange(h, device=device)[:, None]
    x = torch.arange(w, device=device)[None, :]
    return 4 * ((y // 2) * ((w + 1) // 2) + x // 2) + 2 * (y % 2) + (x % 2)


def _connected_components_reference(masks: torch.Tensor) -> torch.Tensor:
    """Min-code propagation over 3x3 neighbourhoods plus pointer jumping, until nothing changes."""
    shape = masks.shape
    h, w = shape[-2:]
    stack = masks.reshape(-1, 1, h, w)
    codes = _block_codes(h, w, masks.device)
    n_codes = 4 * ((h + 1) // 2) * ((w + 1) // 2)
    pixel_of_code = torch.zeros(n_codes, dtype=torch.long, device=masks.device)
    pixel_of_code[codes.flatten()] = torch.arange(h * w, device=masks.device)
    big = float(n_codes)  # float64 holds every code exactly; max_pool2d needs a floating type
    labels = torch.where(stack, codes.double(), big)
    while True:
        neighbour_min = -torch.nn.functional.max_pool2d(-labels, 3, stride=1, padding=1)
        updated = torch.where(stack, torch.minimum(labels, neighbour_min), big)
        flat = updated.flatten(1)
        # A pixel's label is a code of its own component; jump to that pixel's label (never larger).
        jumped = flat.gather(1, pixel_of_code[flat.clamp(max=n_codes - 1).long()])
        updated = torch.where(stack, torch.minimum(updated, jumped.view_as(updated)), big)
        if torch.equal(updated, labels):
            break
        labels = updated
    out = torch.where(stack, labels + 1, 0.0).to(torch.int32)
    return out.reshape(shape)


def _id_areas(ids: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, n_ids) int32 pixel count per component id of (N, H*W) int64 ids; id 0 (background) counts 0."""
    n_ids = 4 * ((h + 1) // 2) * ((w + 1) // 2) + 1
    areas = torch.zeros(ids.shape[0], n_ids, dtype=torch.int32, device=ids.device)
    areas.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.int32))
    areas[:, 0] = 0
    return areas


def _component_areas(labels: torch.Tensor) -> torch.Tensor:
    """Per-pixel component area (int32, 0 on background) of ``connected_components`` labels (..., H, W)."""
    h, w = labels.shape[-2:]
    ids = labels.reshape(-1, h * w).long()
    return _id_areas(ids, h, w).gather(1, ids).reshape(labels.shape)


def _remove_small_regions_reference(masks: torch.Tensor, area_thresh: float, holes: bool):
    shape = masks.shape
    h, w = shape[-2:]
    stack = masks.reshape(-1, h * w)
    working = stack ^ holes
    ids = _connected_components_reference(working.view(-1, h, w)).flatten(1).long()
    areas = _id_areas(ids, h, w)
    small = working & (areas.gather(1, ids) < area_thresh)
    changed = small.any(1)
    if holes:
        out = stack | small
    else:
        large = working & ~small
        # argmax returns the first maximum: the smallest id, i.e. OpenCV's first-labelled component.
        largest = ids == areas.argmax(1, keepdim=True)
        out = torch.where(large.any(1, keepdim=True), large, working & largest)
    out = torch.where(changed[:, None], out, stack)
    return out.reshape(shape), changed.reshape(shape[:-2])


# ------------------------------------------------------------------------------------------ custom ops
@torch.library.custom_op("litesam::connected_components", mutates_args=())
def _connected_components_op(masks: torch.Tensor) -> torch.Tensor:
    _check_masks(masks)
    if masks.numel() == 0:
        return torch.zeros(masks.shape, dtype=torch.int32, device=masks.device)
    backend = _backend.choose(_CC, masks.device)
    if backend in ("cuda", "cpu"):
        h, w = masks.shape[-2:]
        out = _backend.compiled_op(_CC)(masks.reshape(-1, h, w).contiguous())
        return out.reshape(masks.shape)
    return _connected_components_reference(masks)


@_connected_components_op.register_fake
def _connected_components_fake(masks):
    _check_masks(masks)
    return torch.empty(masks.shape, dtype=torch.int32, device=masks.device)


@torch.library.custom_op("litesam::connected_component_areas", mutates_args=())
def _connected_component_areas_op(masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    labels = _connected_components_op(masks)
    if masks.numel() == 0:
        return labels, labels.clone()
    # The areas are one scatter-add and one gather over the labels, on the labels' device.
    return labels, _component_areas(labels)


@_connected_component_areas_op.register_fake
def _connected_component_areas_fake(masks):
    _check_masks(masks)
    return (torch.empty(masks.shape, dtype=torch.int32, device=masks.device),
            torch.empty(masks.shape, dtype=torch.int32, device=masks.device))


@torch.library.custom_op("litesam::remove_small_regions", mutates_args=())
def _remove_small_regions_op(masks: torch.Tensor, area_thresh: float, holes: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    _check_masks(masks)
    check_real("area_thresh", area_thresh, low=0.0)
    if masks.numel() == 0:
        return masks.clone(), torch.zeros(masks.shape[:-2], dtype=torch.bool, device=masks.device)
    backend = _backend.choose(_RSR, masks.device)
    if backend in ("cuda", "cpu"):
        h, w = masks.shape[-2:]
        out, changed = _backend.compiled_op(_RSR)(masks.reshape(-1, h, w).contiguous(), area_thresh, holes)
        return out.reshape(masks.shape), changed.reshape(masks.shape[:-2])
    return _remove_small_regions_reference(masks, area_thresh, holes)


@_remove_small_regions_op.register_fake
def _remove_small_regions_fake(masks, area_thresh, holes):
    _check_masks(masks)
    return torch.empty_like(masks), masks.new_empty(masks.shape[:-2])


def _register_compiled_kernel_fakes() -> None:
    if _backend.extension() is None:
        return
    if not hasattr(torch.ops.litesam, "_remove_small_regions_kernel"):
        return

    @torch.library.register_fake("litesam::_connected_components_kernel")
    def _cc_kernel_fake(masks):
        return torch.empty(masks.shape, dtype=torch.int32, device=masks.device)

    @torch.library.register_fake("litesam::_remove_small_regions_kernel")
    def _rsr_kernel_fake(masks, area_thresh, holes):
        return torch.empty_like(masks), masks.new_empty(masks.shape[:1])


_register_compiled_kernel_fakes()
