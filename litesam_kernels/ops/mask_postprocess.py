"""SAM's mask post-processing with its exact semantics: ``stability_score``, ``masks_to_boxes`` and the
fused ``postprocess_masks`` (two bilinear resizes + threshold + stability + box + area in one pass).

Semantics (segment_anything ``utils/amg.py`` and ``Sam.postprocess_masks``; every backend identical):
- comparisons with thresholds are **strict** (``logits > t``); a Python threshold is first computed in
  float64 (``mask_threshold + offset``) and then **rounded to the logits dtype**, as torch does when it
  compares a tensor with a Python number (bf16: 0.7 -> 0.69921875);
- stability = intersection / union of ``logits > thr + offset`` and ``logits > thr - offset``, the counts
  summed per row in **int16** (wraps past 32767, as SAM) and per mask in int32, divided in float32:
  **NaN** when the union is empty;
- boxes: int64 XYXY with **inclusive** max indices; an empty mask gives ``[0, 0, 0, 0]``; input of
  ``numel() == 0`` gives **float32** zeros of shape ``(..., 4)``, like SAM's ``batched_mask_to_box``;
- resizing: ``F.interpolate(bilinear, align_corners=False)`` to ``image_size``², crop to ``input_size``,
  ``F.interpolate`` to ``original_size``; the 1024-grid values are rounded to the logits dtype between
  the two resizes, as torch stores them. The fused kernel reproduces torch's index arithmetic and its
  FMA-contracted blend ``fma(a, w0, b * w1)`` (what torch's CPU kernels compute on FMA hardware, bit for
  bit in float32; verified in the tests). Results that can differ from torch's path: pixels whose value
  lands within one rounding of a threshold if a platform's torch kernel rounds differently (torch's CPU
  kernel for float16/bfloat16 keeps the weights in the reduced dtype; CUDA contraction unverified here).
  Non-finite logits may differ on axes the second resize keeps (torch copies, we blend with weight 0).

Backends of ``postprocess_masks``: ``triton`` (CUDA: one fused kernel computing every output pixel from
the low-res logits), ``cpu`` (C++, float32 logits: per mask, two cached rows of the 1024 grid; float16/
bfloat16 on CPU run the reference, which is SAM's CPU arithmetic), ``reference`` (SAM's torch path a few
masks at a time). torch's CPU resize takes another kernel, with other float32 roundings, for outputs of
``height + width <= 128`` (``_use_vectorized_kernel_cond_2d`` in ATen's UpSampleKernel.cpp): where either
resize does (``image_size <= 64``, or ``original_size`` summing to at most 128), CPU tensors run the
reference unless a backend is forced (a forced kernel then matches SAM except where a value lands exactly
on a threshold). ``stability_score`` / ``masks_to_boxes``: ``triton`` and ``reference``.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from litesam_kernels import _backend
from litesam_kernels._checks import call_op, check_int, check_real, check_tensor
from litesam_kernels._device_data import DeviceCache
from litesam_kernels.ops.bitmask import pack_masks, packed_width, unpack_masks

SAM_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_REFERENCE_CHUNK = 8  # masks resized at once by the reference (bounds its full-resolution memory)
# (low_h, low_w, image_size, input_size, original_size, layout, device) -> resize tables; graph-safe: a
# table a CUDA graph captured (SegmentEverything(compile={"mode": "reduce-overhead"})) is never evicted.
_TABLES = DeviceCache(64)

_STABILITY = _backend.register(_backend.OpImplementations("stability_score", has_triton=True))
_BOXES = _backend.register(_backend.OpImplementations("masks_to_boxes", has_triton=True))
_POSTPROCESS = _backend.register(
    _backend.OpImplementations("postprocess_masks", compiled_kernel="_postprocess_masks_kernel", has_triton=True)
)


class PostprocessedMasks(NamedTuple):
    """Output of :func:`postprocess_masks` for N masks at the original size (H, W)."""

    masks: torch.Tensor  # bool (N, H, W), or int32 (N, H, ceil(W/32)) bit-packed (ops/bitmask.py)
    stability_scores: torch.Tensor  # float32 (N,), NaN for an empty union
    boxes: torch.Tensor  # int64 (N, 4) XYXY inclusive, zeros for an empty mask
    areas: torch.Tensor  # int64 (N,) pixels above mask_threshold


# ------------------------------------------------------------------------------------------ public API
def stability_score(mask_logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """SAM's ``calculate_stability_score``: IoU of the masks thresholded at ``mask_threshold ± offset``.

    Args:
        mask_logits: floating ``(..., H, W)``.
        mask_threshold, offset: real numbers (see the module docstring for rounding).

    Returns:
        float32 tensor of shape ``mask_logits.shape[:-2]``; NaN where the union is empty.

    Raises:
        TypeError: not a floating tensor, non-real thresholds. ValueError: fewer than 2 dims, NaN thresholds.
    """
    return call_op(torch.ops.litesam.stability_score, mask_logits, _real("mask_threshold", mask_threshold),
                   _real("offset", offset))


def masks_to_boxes(masks: torch.Tensor, *, width: int | None = None) -> torch.Tensor:
    """SAM's ``batched_mask_to_box``: XYXY boxes, int64, inclusive max pixel indices.

    Args:
        masks: bool ``(..., H, W)``, or bit-packed int32 ``(..., H, ceil(W/32))`` with ``width=W``.
        width: the mask width, required for (and only for) packed masks.

    Returns:
        int64 ``(..., 4)``; ``[0, 0, 0, 0]`` for an empty mask; float32 zeros ``(..., 4)`` when the
        (unpacked) input has no elements, exactly as SAM.

    Raises:
        TypeError: wrong dtype. ValueError: fewer than 2 dims, ``width`` missing/inconsistent/given for bool.
    """
    return call_op(torch.ops.litesam.masks_to_boxes, masks, width)


def postprocess_masks(
    low_res_logits: torch.Tensor,
    input_size: Sequence[int],
    original_size: Sequence[int],
    mask_threshold: float = 0.0,
    stability_offset: float = 1.0,
    packed: bool = False,
    image_size: int = 1024,
) -> PostprocessedMasks:
    """SAM's ``Sam.postprocess_masks`` followed by threshold, stability score, box and area, fused.

    Never materialises the full-resolution float logits of all masks (the Triton kernel computes each
    output pixel from the low-res logits; the reference resizes a few masks at a time).

    Args:
        low_res_logits: ``(N, h, w)`` float16/bfloat16/float32 decoder logits (SAM: h = w = 256).
        input_size: ``(H_in, W_in)``, the resized image inside the padded ``image_size`` square.
        original_size: ``(H, W)`` of the output masks.
        mask_threshold: pixels with logit > this are in the mask (SAM: 0.0).
        stability_offset: SAM's ``stability_score_offset`` (1.0).
        packed: return int32 bit-packed masks (``ops/bitmask.py``) instead of bool.
        image_size: the encoder's square input side (SAM: 1024).

    Returns:
        :class:`PostprocessedMasks` ``(masks, stability_scores, boxes, areas)``.

    Raises:
        TypeError: wrong dtype or argument types. ValueError: wrong shapes, sizes not positive,
        ``input_size`` larger than ``image_size``.
    """
    input_size = _size("input_size", input_size)
    original_size = _size("original_size", original_size)
    result = call_op(
        torch.ops.litesam.postprocess_masks, low_res_logits, input_size, original_size, _real("mask_threshold", mask_threshold),
        _real("stability_offset", stability_offset), bool(packed), _positive_int("image_size", image_size),
    )
    return PostprocessedMasks(*result)


# ------------------------------------------------------------------------------------------ validation
def _real(name, value) -> float:
    return check_real(name, value)


# The largest image side, input side and output side: a mask's pixel counts (intersection, union, area) are
# int32 totals (SAM's own dtype) and the resize tables hold source indices in float32 (exact below 2**24);
# 32768**2 = 2**30 pixels keeps both exact, and stops a typo (2**40) before a terabyte allocation.
MAX_SIDE = 32768


def _positive_int(name, value) -> int:
    return check_int(name, value, low=1, high=MAX_SIDE)


def _size(name, value) -> list:
    """A (height, width) pair of ints in [1, MAX_SIDE]: TypeError for anything but a pair, ValueError for a
    pair out of range (the op's schema takes a list of any length: a wrong length is a ValueError there)."""
    if isinstance(value, torch.Size):
        value = tuple(value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a (height, width) pair of ints, got {value!r}")
    return [_positive_int(f"{name}[{i}]", int(v) if hasattr(v, "__index__") and not isinstance(v, bool) else v)
            for i, v in enumerate(value)]


def _op_size(name, value) -> list:
    """:func:`_size` inside the op, where the dispatcher already made ``value`` a list of ints."""
    if len(value) != 2:
        raise ValueError(f"{name} must be a (height, width) pair, got {len(value)} entries {list(value)}")
    return _size(name, value)


def _check_logits(mask_logits) -> None:
    check_tensor("mask_logits", mask_logits, floating=True, expected="(..., H, W) floating")
    if mask_logits.dim() < 2:
        raise ValueError(f"mask_logits must have at least 2 dims (..., H, W), got shape {tuple(mask_logits.shape)}")


def _check_stability_inputs(mask_logits, mask_threshold, offset) -> None:
    """The op's checks: a NaN threshold compares False everywhere (a silent all-NaN answer)."""
    _check_logits(mask_logits)
    check_real("mask_threshold", mask_threshold)
    check_real("offset", offset)


def _check_masks(masks, width) -> None:
    check_tensor("masks", masks, dtypes=(torch.bool, torch.int32), expected="(..., H, W) bool or packed int32")
    if masks.dim() < 2:
        raise ValueError(f"masks must have at least 2 dims (..., H, W), got shape {tuple(masks.shape)}")
    if masks.dtype == torch.bool and width is not None:
        raise ValueError("width is only for bit-packed int32 masks; bool masks carry their width")
    if masks.dtype == torch.int32:
        if width is None:
            raise ValueError("width is required with bit-packed int32 masks (the layout does not store it)")
        if isinstance(width, bool) or not isinstance(width, int) or width < 0:
            raise ValueError(f"width must be a non-negative int, got {width!r}")
        if masks.shape[-1] != packed_width(width):
            raise ValueError(f"masks must have shape (..., H, {packed_width(width)}) for width={width}, "
                             f"got {tuple(masks.shape)}")


def _check_postprocess(low_res_logits, input_size, original_size, mask_threshold, stability_offset,
                       image_size) -> None:
    check_tensor("low_res_logits", low_res_logits, dim=3, dtypes=SAM_FLOAT_DTYPES, expected="(N, h, w)")
    if min(low_res_logits.shape[1:]) == 0:
        raise ValueError(f"low_res_logits must have non-empty masks, got shape {tuple(low_res_logits.shape)}")
    input_size, _ = _op_size("input_size", input_size), _op_size("original_size", original_size)
    check_real("mask_threshold", mask_threshold)
    check_real("stability_offset", stability_offset)
    _positive_int("image_size", image_size)
    if input_size[0] > image_size or input_size[1] > image_size:
        raise ValueError(f"input_size {tuple(input_size)} must fit in image_size {image_size}")


def rounded_threshold(value: float, dtype: torch.dtype) -> float:
    """``value`` as torch compares it with a ``dtype`` tensor: rounded to that dtype."""
    return float(torch.tensor(value, dtype=torch.float64).to(dtype).item())


# ------------------------------------------------------------------------------------------ references
def _stability_score_reference(mask_logits, mask_threshold: float, offset: float) -> torch.Tensor:
    """SAM's calculate_stability_score, verbatim."""
    intersections = (mask_logits > (mask_threshold + offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    unions = (mask_logits > (mask_threshold - offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return intersections / unions


def _masks_to_boxes_reference(masks: torch.Tensor) -> torch.Tensor:
    """SAM's batched_mask_to_box, verbatim (bool masks)."""
    if torch.numel(masks) == 0:
        return torch.zeros(*masks.shape[:-2], 4, device=masks.device)
    shape = masks.shape
    h, w = shape[-2:]
    masks = masks.flatten(0, -3) if len(shape) > 2 else masks.unsqueeze(0)
    in_height, _ = torch.max(masks, dim=-1)
    in_height_coords = in_height * torch.arange(h, device=in_height.device)[None, :]
    bottom_edges, _ = torch.max(in_height_coords, dim=-1)
    in_height_coords = in_height_coords + h * (~in_height)
    top_edges, _ = torch.min(in_height_coords, dim=-1)
    in_width, _ = torch.max(masks, dim=-2)
    in_width_coords = in_width * torch.arange(w, device=in_width.device)[None, :]
    right_edges, _ = torch.max(in_width_coords, dim=-1)
    in_width_coords = in_width_coords + w * (~in_width)
    left_edges, _ = torch.min(in_width_coords, dim=-1)
    empty_filter = (right_edges < left_edges) | (bottom_edges < top_edges)
    out = torch.stack([left_edges, top_edges, right_edges, bottom_edges], dim=-1)
    out = out * (~empty_filter).unsqueeze(-1)
    return out.reshape(*shape[:-2], 4) if len(shape) > 2 else out[0]


def sam_upscale(low_res_logits, input_size, original_size, image_size: int = 1024) -> torch.Tensor:
    """``Sam.postprocess_masks`` on (N, h, w) logits -> (N, H, W) logits (full resolution, torch)."""
    x = F.interpolate(low_res_logits[:, None], (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)[:, 0]


def _postprocess_masks_reference(low_res_logits, input_size, original_size, mask_threshold: float,
                                 stability_offset: float, packed: bool, image_size: int):
    """SAM's path a few masks at a time: resize twice, then the reference ops."""
    chunks = ([], [], [], [])
    for start in range(0, low_res_logits.shape[0], _REFERENCE_CHUNK):
        logits = sam_upscale(low_res_logits[start:start + _REFERENCE_CHUNK], input_size, original_size, image_size)
        masks = logits > mask_threshold
        chunks[0].append(pack_masks(masks) if packed else masks)
        chunks[1].append(_stability_score_reference(logits, mask_threshold, stability_offset))
        chunks[2].append(_masks_to_boxes_reference(masks))
        chunks[3].append(masks.sum((-1, -2)))
    if not chunks[0]:
        return _empty_postprocess(low_res_logits, original_size, packed)
    return tuple(torch.cat(c) for c in chunks)


def _empty_postprocess(low_res_logits, original_size, packed: bool):
    height, width = original_size
    device = low_res_logits.device
    masks = (torch.empty((0, height, packed_width(width)), dtype=torch.int32, device=device) if packed
             else torch.empty((0, height, width), dtype=torch.bool, device=device))
    return (masks, torch.empty(0, dtype=torch.float32, device=device),
            torch.empty((0, 4), dtype=torch.int64, device=device), torch.empty(0, dtype=torch.int64, device=device))


# ------------------------------------------------------------------------------------------ triton path
def bilinear_table(in_size: int, out_size: int, device) -> torch.Tensor:
    """(out_size, 4) float32 rows ``[i0, i1, w0, w1]``: torch's bilinear (align_corners=False) source
    indices and weights along one axis, with its float32 arithmetic (source index in FMA form), built
    with device-side ops (no host-to-device copy)."""
    if in_size == out_size:  # torch copies
        index = torch.arange(out_size, dtype=torch.float32, device=device)
        return torch.stack([index, index, torch.ones_like(index), torch.zeros_like(index)], dim=1)
    scale = float(np.float32(in_size) / np.float32(out_size))  # torch's float32 ratio, held exactly
    centres = torch.arange(out_size, dtype=torch.float64, device=device) + 0.5
    # fma(scale, d + 0.5, -0.5): the float64 product is exact, so one rounding to float32.
    source = (scale * centres - 0.5).float().clamp(min=0)
    i0 = torch.floor(source).clamp(max=in_size - 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    w1 = (source - i0).clamp(0, 1)
    return torch.stack([i0, i1, 1 - w1, w1], dim=1)


def _interpret(device) -> bool:
    return torch.device(device).type == "cpu"


def _stability_score_triton(mask_logits, mask_threshold: float, offset: float) -> torch.Tensor:
    from litesam_kernels.triton.mask_postprocess import stability_counts

    lead, (height, width) = mask_logits.shape[:-2], mask_logits.shape[-2:]
    logits = mask_logits.reshape(-1, height, width).contiguous()
    high = rounded_threshold(mask_threshold + offset, logits.dtype)
    low = rounded_threshold(mask_threshold - offset, logits.dtype)
    counts = stability_counts(logits, high, low).sum(1, dtype=torch.int32)
    return (counts[:, 0] / counts[:, 1]).reshape(lead)


def _boxes_from_partials(partial: torch.Tensor) -> torch.Tensor:
    left = partial[:, :, 0].amin(1)
    top = partial[:, :, 1].amin(1)
    right = partial[:, :, 2].amax(1)
    bottom = partial[:, :, 3].amax(1)
    boxes = torch.stack([left, top, right, bottom], dim=-1).to(torch.int64)
    return boxes * (right >= left).unsqueeze(-1)


def _masks_to_boxes_triton(masks, width) -> torch.Tensor:
    from litesam_kernels.triton.mask_postprocess import box_partials

    packed = masks.dtype == torch.int32
    lead, height, last = masks.shape[:-2], masks.shape[-2], masks.shape[-1]
    flat = masks.reshape(-1, height, last).contiguous()
    partial = box_partials(flat, width if packed else last, packed)
    return _boxes_from_partials(partial).reshape(*lead, 4)


def _resize_tables(low_res_logits, input_size, original_size, image_size, struct_of_arrays: bool = False):
    """(y1, x1, y2, x2): stage-1 tables cropped to input_size, stage-2 tables to original_size, (size, 4)
    rows (the C++ kernel's layout) or, with ``struct_of_arrays``, (4, size) contiguous (the Triton kernel's:
    consecutive columns are consecutive addresses); built on the logits' device once per (sizes, layout,
    device) and cached (a pipeline calls with the same sizes; ``DeviceCache``: safe under CUDA graphs)."""
    _, low_h, low_w = low_res_logits.shape
    device = low_res_logits.device

    def build():
        tables = (bilinear_table(low_h, image_size, device)[: input_size[0]].contiguous(),
                  bilinear_table(low_w, image_size, device)[: input_size[1]].contiguous(),
                  bilinear_table(input_size[0], original_size[0], device),
                  bilinear_table(input_size[1], original_size[1], device))
        if struct_of_arrays:
            tables = tuple(table.t().contiguous() for table in tables)
        return tables

    key = (low_h, low_w, int(image_size), tuple(input_size), tuple(original_size), struct_of_arrays, device)
    return _TABLES.get(key, build)


def _rounded_thresholds(dtype, mask_threshold: float, stability_offset: float):
    return [rounded_threshold(t, dtype) for t in
            (mask_threshold, mask_threshold + stability_offset, mask_threshold - stability_offset)]


def _postprocess_masks_cpu(low_res_logits, input_size, original_size, mask_threshold: float,
                           stability_offset: float, packed: bool, image_size: int):
    tables = _resize_tables(low_res_logits, input_size, original_size, image_size)
    return _backend.compiled_op(_POSTPROCESS)(low_res_logits.contiguous(), *tables,
                                              *_rounded_thresholds(torch.float32, mask_threshold, stability_offset),
                                              packed)


def _postprocess_masks_triton(low_res_logits, input_size, original_size, mask_threshold: float,
                              stability_offset: float, packed: bool, image_size: int):
    from litesam_kernels.triton.mask_postprocess import fused_postprocess

    logits = low_res_logits.contiguous()
    n = logits.shape[0]
    height, width = original_size
    device = logits.device
    y1, x1, y2, x2 = _resize_tables(logits, input_size, original_size, image_size, struct_of_arrays=True)
    thresholds = _rounded_thresholds(logits.dtype, mask_threshold, stability_offset)
    masks, counts, box_partial = fused_postprocess(logits, y1, x1, y2, x2, thresholds, height, width, packed,
                                                   _interpret(device))
    if n == 0:
        return _empty_postprocess(logits, original_size, packed)
    inter_union = counts[:, :, :2].sum(1, dtype=torch.int32)
    stability = inter_union[:, 0] / inter_union[:, 1]
    areas = counts[:, :, 2].sum(1, dtype=torch.int64)
    return masks, stability, _boxes_from_partials(box_partial), areas


# ------------------------------------------------------------------------------------------ custom ops
@torch.library.custom_op("litesam::stability_score", mutates_args=())
def _stability_score_op(mask_logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    _check_stability_inputs(mask_logits, mask_threshold, offset)
    if mask_logits.numel() == 0:
        return _stability_score_reference(mask_logits, mask_threshold, offset)
    backend = _backend.choose(_STABILITY, mask_logits.device)
    if backend == "triton":
        return _stability_score_triton(mask_logits, mask_threshold, offset)
    return _stability_score_reference(mask_logits, mask_threshold, offset)


@_stability_score_op.register_fake
def _stability_score_fake(mask_logits, mask_threshold, offset):
    _check_stability_inputs(mask_logits, mask_threshold, offset)
    return mask_logits.new_empty(mask_logits.shape[:-2], dtype=torch.float32)


def _logical_numel(masks, width) -> int:
    if masks.dtype != torch.int32:
        return masks.numel()
    count = width
    for s in masks.shape[:-1]:
        count *= s
    return count


@torch.library.custom_op("litesam::masks_to_boxes", mutates_args=())
def _masks_to_boxes_op(masks: torch.Tensor, width: int | None) -> torch.Tensor:
    _check_masks(masks, width)
    if _logical_numel(masks, width) == 0:
        return torch.zeros(*masks.shape[:-2], 4, device=masks.device)
    backend = _backend.choose(_BOXES, masks.device)
    if backend == "triton":
        return _masks_to_boxes_triton(masks, width)
    bool_masks = unpack_masks(masks, width) if masks.dtype == torch.int32 else masks
    return _masks_to_boxes_reference(bool_masks)


@_masks_to_boxes_op.register_fake
def _masks_to_boxes_fake(masks, width):
    _check_masks(masks, width)
    dtype = torch.float32 if _logical_numel(masks, width) == 0 else torch.int64
    return masks.new_empty((*masks.shape[:-2], 4), dtype=dtype)


def _torch_resizes_with_small_output_kernel(original_size, image_size) -> bool:
    """Whether torch's CPU bilinear resize of SAM's (N, 1, h, w) logits takes its vectorized kernel for either of
    the two resizes (output height + width <= 128, ATen's ``_use_vectorized_kernel_cond_2d``)."""
    return 2 * image_size <= 128 or original_size[0] + original_size[1] <= 128


@torch.library.custom_op("litesam::postprocess_masks", mutates_args=())
def _postprocess_masks_op(low_res_logits: torch.Tensor, input_size: Sequence[int], original_size: Sequence[int],
                          mask_threshold: float, stability_offset: float, packed: bool, image_size: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_postprocess(low_res_logits, input_size, original_size, mask_threshold, stability_offset, image_size)
    backend = _backend.choose(_POSTPROCESS, low_res_logits.device)
    if backend == "cpu" and low_res_logits.dtype != torch.float32:
        # torch's CPU resize keeps reduced-precision weights in that dtype; only the reference matches it.
        if _backend.forced_backend() == "cpu":
            raise _backend.BackendUnavailableError(
                f"backend 'cpu' was forced but its postprocess_masks kernel takes float32 logits, got "
                f"{low_res_logits.dtype}")
        backend = "reference"
    if (backend != "reference" and low_res_logits.device.type == "cpu" and _backend.forced_backend() is None
            and _torch_resizes_with_small_output_kernel(original_size, image_size)):
        backend = "reference"  # SAM's arithmetic there is not the separable kernel's that the kernels reproduce
    run = {"triton": _postprocess_masks_triton, "cpu": _postprocess_masks_cpu}.get(backend,
                                                                                  _postprocess_masks_reference)
    return run(low_res_logits, list(input_size), list(original_size), mask_threshold, stability_offset, packed,
               image_size)


@_postprocess_masks_op.register_fake
def _postprocess_masks_fake(low_res_logits, input_size, original_size, mask_threshold, stability_offset, packed,
                            image_size):
    _check_postprocess(low_res_logits, input_size, original_size, mask_threshold, stability_offset, image_size)
    n = low_res_logits.shape[0]
    height, width = original_size
    masks = (low_res_logits.new_empty((n, height, packed_width(width)), dtype=torch.int32) if packed
             else low_res_logits.new_empty((n, height, width), dtype=torch.bool))
    return (masks, low_res_logits.new_empty((n,), dtype=torch.float32),
            low_res_logits.new_empty((n, 4), dtype=torch.int64), low_res_logits.new_empty((n,), dtype=torch.int64))


def _register_compiled_kernel_fake() -> None:
    if _backend.extension() is None or not hasattr(torch.ops.litesam, "_postprocess_masks_kernel"):
        return

    @torch.library.register_fake("litesam::_postprocess_masks_kernel")
    def _postprocess_masks_kernel_fake(logits, y1, x1, y2, x2, mask_threshold, high, low, packed):
        n, height, width = logits.shape[0], y2.shape[0], x2.shape[0]
        masks = (logits.new_empty((n, height, packed_width(width)), dtype=torch.int32) if packed
                 else logits.new_empty((n, height, width), dtype=torch.bool))
        return (masks, logits.new_empty((n,), dtype=torch.float32), logits.new_empty((n, 4), dtype=torch.int64),
                logits.new_empty((n,), dtype=torch.int64))


_register_compiled_kernel_fake()
