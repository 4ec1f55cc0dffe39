"""SAM / COCO uncompressed RLE: ``mask_to_rle`` (on the device, one bulk transfer per batch),
``rle_to_mask``, ``area_from_rle``, ``coco_encode_rle``.

Format (SAM's ``mask_to_rle_pytorch``): ``{"size": [h, w], "counts": [...]}``; pixels in column-major
(Fortran) order; counts alternate runs of 0s and 1s **starting with the 0-run** (a leading ``0`` when the
first pixel is set); ``sum(counts) == h * w``. A mask with no pixels (h * w == 0, where SAM fails) gives
``counts == [0]``.

Device work: run boundaries are found on the device (Triton, CUDA or C++ kernels); the run lengths of
the whole batch are assembled there into one flat int64 tensor that reaches the host in **one**
transfer (plus one small read of the total size needed to allocate it), instead of SAM's transfer per mask.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import torch

from litesam_kernels import _backend
from litesam_kernels.ops.mask_postprocess import _check_masks
from litesam_kernels.ops.bitmask import unpack_masks

_RLE = _backend.register(
    _backend.OpImplementations("mask_to_rle", compiled_kernel="_mask_to_rle_kernel", has_triton=True)
)


# ------------------------------------------------------------------------------------------ public API
def mask_to_rle(masks: torch.Tensor, *, width: int | None = None) -> List[Dict[str, Any]]:
    """SAM's ``mask_to_rle_pytorch``: one uncompressed RLE dict per mask, identical output.

    Args:
        masks: bool ``(N, H, W)``, or bit-packed int32 ``(N, H, ceil(W/32))`` with ``width=W``.
        width: the mask width, required for (and only for) packed masks.

    Returns:
        ``[{"size": [H, W], "counts": [int, ...]}, ...]`` (N dicts, Python ints).

    Raises:
        TypeError: wrong dtype. ValueError: not 3-D, ``width`` missing/inconsistent.
    """
    _check_rle_input(masks, width)
    counts, lengths = torch.ops.litesam.mask_to_rle_counts(masks, width)
    host = torch.cat([lengths, counts]).cpu().numpy()  # the one bulk device-to-host transfer
    n = masks.shape[0]
    return rles_from_counts(host[n:], host[:n], masks.shape[1], masks.shape[2] if width is None else width)


def rles_from_counts(counts, lengths, height: int, width: int) -> List[Dict[str, Any]]:
    """The host half of :func:`mask_to_rle`: RLE dicts from ``torch.ops.litesam.mask_to_rle_counts``'s
    ``(counts, lengths)`` once they are on the host (numpy arrays or CPU tensors). For callers that fold
    the counts into a larger single device-to-host copy (``segment_everything``)."""
    flat = np.asarray(counts).tolist()
    ends = np.cumsum(np.asarray(lengths)).tolist()
    out, start = [], 0
    for end in ends:
        out.append({"size": [int(height), int(width)], "counts": flat[start:end]})
        start = end
    return out


def rle_to_mask(rle: Dict[str, Any]) -> np.ndarray:
    """SAM's ``rle_to_mask``: bool ``(h, w)`` numpy array (C order) from an uncompressed RLE.

    Raises:
        TypeError: ``rle`` not a dict, compressed (str) or non-integer counts.
        ValueError: a missing key, a size that is not two non-negative ints, negative counts or counts that
            do not sum to ``h * w``."""
    height, width, counts = _check_rle("rle", rle)
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(width, height).transpose()


def area_from_rle(rle: Dict[str, Any]) -> int:
    """SAM's ``area_from_rle``: the number of set pixels (sum of the odd-position counts). Raises as
    :func:`rle_to_mask`."""
    return int(_check_rle("rle", rle)[2][1::2].sum())


def coco_encode_rle(uncompressed_rle: Dict[str, Any]) -> Dict[str, Any]:
    """SAM's ``coco_encode_rle``: COCO compressed RLE (``counts`` as a str), via pycocotools. Raises as
    :func:`rle_to_mask` (counts that do not cover ``h * w`` would encode into a wrong COCO RLE)."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("coco_encode_rle needs pycocotools (pip install pycocotools)") from exc
    height, width, _ = _check_rle("uncompressed_rle", uncompressed_rle)
    rle = mask_utils.frPyObjects(uncompressed_rle, height, width)
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


# ------------------------------------------------------------------------------------------ validation
def _check_rle(name: str, rle) -> tuple:
    """(h, w, int64 counts) of an uncompressed RLE dict ``{"size": [h, w], "counts": [...]}``, or a
    TypeError/ValueError naming the argument and the key."""
    what = "an uncompressed rle dict {'size': [h, w], 'counts': [...]}"
    if not isinstance(rle, dict):
        raise TypeError(f"{name} must be {what}, got {type(rle).__name__}")
    for key in ("size", "counts"):
        if key not in rle:
            raise ValueError(f"{name} must be {what}: it has no {key!r} ({key} is missing)")
    size = rle["size"]
    if (not isinstance(size, (list, tuple, np.ndarray)) or len(size) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in size)):
        raise ValueError(f"{name}['size'] must be [h, w], two non-negative ints, got {size!r}")
    raw = rle["counts"]
    if isinstance(raw, (str, bytes)):
        raise TypeError(f"{name}['counts'] is a compressed COCO string: decode it with pycocotools.mask.decode "
                        "(this takes uncompressed counts, a list of ints)")
    counts = np.asarray(raw)
    if counts.ndim != 1 or not (counts.size == 0 or np.issubdtype(counts.dtype, np.integer)):
        raise TypeError(f"{name}['counts'] must be a flat list of ints, got {np.asarray(raw).dtype} "
                        f"of shape {counts.shape}")
    counts = counts.astype(np.int64)
    height, width = int(size[0]), int(size[1])
    if (counts < 0).any() or counts.sum() != height * width:
        raise ValueError(f"{name}['counts'] must be non-negative and sum to h * w = {height * width}, got "
                         f"sum {int(counts.sum())}{' with negative counts' if (counts < 0).any() else ''}")
    return height, width, counts


def _check_rle_input(masks, width) -> None:
    _check_masks(masks, width)
    if masks.dim() != 3:
        raise ValueError(f"masks must be a 3-D (N, H, W) tensor, got shape {tuple(masks.shape)}")


# ------------------------------------------------------------------------------------------ reference
def _mask_to_rle_reference(masks: torch.Tensor):
    """SAM's mask_to_rle_pytorch algorithm (per-mask gather), kept on the device; returns
    (counts of all masks concatenated, count-list length per mask)."""
    b, h, w = masks.shape
    device = masks.device
    if h * w == 0:
        return torch.zeros(b, dtype=torch.int64, device=device), torch.ones(b, dtype=torch.int64, device=device)
    tensor = masks.permute(0, 2, 1).flatten(1)
    diff = tensor[:, 1:] ^ tensor[:, :-1]
    change_indices = diff.nonzero()
    pieces, lengths = [torch.empty(0, dtype=torch.int64, device=device)], []
    for i in range(b):
        cur_idxs = change_indices[change_indices[:, 0] == i, 1]
        cur_idxs = torch.cat([torch.tensor([0], dtype=cur_idxs.dtype, device=device), cur_idxs + 1,
                              torch.tensor([h * w], dtype=cur_idxs.dtype, device=device)])
        btw_idxs = cur_idxs[1:] - cur_idxs[:-1]
        if tensor[i, 0]:
            btw_idxs = torch.cat([torch.zeros(1, dtype=btw_idxs.dtype, device=device), btw_idxs])
        pieces.append(btw_idxs)
        lengths.append(btw_idxs.numel())
    return torch.cat(pieces), torch.tensor(lengths, dtype=torch.int64, device=device)


# ------------------------------------------------------------------------------------------ device paths
def counts_from_boundaries(boundaries: torch.Tensor, changes_per_mask: torch.Tensor, first_pixels: torch.Tensor,
                           pixels: int, total_counts: int):
    """Assemble SAM's count lists on the device from run boundaries.

    boundaries: (K,) int64, per mask ascending (pixel index after each change), masks in order;
    changes_per_mask: (N,) int64 summing to K; first_pixels: (N,) int64 0/1; pixels: h * w;
    total_counts: K + N + first_pixels.sum() (known to the caller: it sized the allocation).
    Returns (counts (total_counts,) int64, lengths (N,) int64)."""
    n = changes_per_mask.shape[0]
    device = boundaries.device
    lengths = first_pixels + changes_per_mask + 1
    out_start = torch.cumsum(lengths, 0) - lengths
    counts = torch.zeros(total_counts, dtype=torch.int64, device=device)  # the leading 0-runs stay 0
    change_start = torch.cumsum(changes_per_mask, 0) - changes_per_mask
    k = boundaries.shape[0]
    if k > 0:
        owner = torch.repeat_interleave(torch.arange(n, device=device), changes_per_mask, output_size=k)
        rank = torch.arange(k, device=device) - change_start[owner]
        previous = torch.cat([boundaries.new_zeros(1), boundaries[:-1]])
        previous = torch.where(rank == 0, torch.zeros_like(previous), previous)
        counts[out_start[owner] + first_pixels[owner] + rank] = boundaries - previous
    last_index = change_start + changes_per_mask - 1
    last = torch.where(changes_per_mask > 0, boundaries[last_index.clamp(min=0)] if k > 0 else 0,
                       torch.zeros_like(changes_per_mask))
    counts[out_start + first_pixels + changes_per_mask] = pixels - last
    return counts, lengths


def _first_pixels(masks: torch.Tensor) -> torch.Tensor:
    return (masks[:, 0, 0] & 1 if masks.dtype == torch.int32 else masks[:, 0, 0]).to(torch.int64)


def _mask_to_rle_triton(masks: torch.Tensor, width):
    from litesam_kernels.triton.rle import change_boundaries, column_change_counts, rows_per_program

    packed = masks.dtype == torch.int32
    masks = masks.contiguous()
    n, height = masks.shape[:2]
    mask_width = width if packed else masks.shape[2]
    row_block = rows_per_program(n, height, mask_width)
    per_block = column_change_counts(masks, mask_width, packed, row_block).to(torch.int64)  # (N, W, row blocks)
    changes_per_mask = per_block.sum((1, 2))
    first = _first_pixels(masks)
    flat = per_block.flatten()
    offsets = (torch.cumsum(flat, 0) - flat).view(per_block.shape)
    changes, leading = torch.stack([changes_per_mask.sum(), first.sum()]).tolist()  # the size read
    boundaries = change_boundaries(masks, mask_width, packed, offsets, changes, row_block)
    return counts_from_boundaries(boundaries, changes_per_mask, first, height * mask_width, changes + n + leading)


def _run(masks, width):
    n, height = masks.shape[:2]
    mask_width = width if masks.dtype == torch.int32 else masks.shape[2]
    device = masks.device
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device), torch.empty(0, dtype=torch.int64, device=device)
    if height * mask_width == 0:
        return torch.zeros(n, dtype=torch.int64, device=device), torch.ones(n, dtype=torch.int64, device=device)
    backend = _backend.choose(_RLE, device)
    if backend in ("cuda", "cpu"):
        return _backend.compiled_op(_RLE)(masks.contiguous(), mask_width)
    if backend == "triton":
        return _mask_to_rle_triton(masks, width)
    bool_masks = unpack_masks(masks, width) if masks.dtype == torch.int32 else masks
    return _mask_to_rle_reference(bool_masks)


# ------------------------------------------------------------------------------------------ custom ops
@torch.library.custom_op("litesam::mask_to_rle_counts", mutates_args=())
def _mask_to_rle_counts_op(masks: torch.Tensor, width: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts of all masks concatenated, count-list length per mask), both int64 on the masks' device."""
    _check_rle_input(masks, width)
    return _run(masks, width)


def _counts_like(masks):
    total = torch.library.get_ctx().new_dynamic_size()
    return (masks.new_empty((total,), dtype=torch.int64), masks.new_empty((masks.shape[0],), dtype=torch.int64))


@_mask_to_rle_counts_op.register_fake
def _mask_to_rle_counts_fake(masks, width):
    _check_rle_input(masks, width)
    return _counts_like(masks)


def _register_compiled_kernel_fake() -> None:
    if _backend.extension() is None or not hasattr(torch.ops.litesam, "_mask_to_rle_kernel"):
        return

    @torch.library.register_fake("litesam::_mask_to_rle_kernel")
    def _mask_to_rle_kernel_fake(masks, width):
        return _counts_like(masks)


_register_compiled_kernel_fake()
