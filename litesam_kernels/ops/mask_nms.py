"""Mask IoU, greedy mask-IoU NMS and Matrix NMS (SOLOv2) on bit-packed masks.

Masks come as bool ``(N, H, W)`` or bit-packed int32 ``(N, H, ceil(W/32))`` in the layout of
:mod:`litesam_kernels.ops.bitmask` (words along W, LSB first, zero padding bits; pass ``width=W`` with
packed masks). Bool masks are packed first: every kernel works on the packed form, where an
intersection is AND + popcount, 32 pixels per instruction, and the stack is 32x smaller than bool.

Semantics shared by the three ops (every backend returns identical IoUs and keep lists):
- IoU(a, b) = |a & b| / (|a| + |b| - |a & b|): exact integer counts, divided in float64 and rounded once
  to float32. A pair with an empty union (both masks empty) has IoU 0, not NaN; an empty mask has IoU 0
  with everything.
- Boxes are SAM's (``batched_mask_to_box``): int64 inclusive XYXY pixel indices, ``[0, 0, 0, 0]`` for an
  empty mask. The kernels only read pairs whose boxes overlap and, for those, only the rows and words of
  the boxes' intersection. Boxes passed in must enclose their masks (tight boxes, as computed here when
  none are given, or larger); a box that cuts off part of its mask gives a wrong IoU.
- Score order: decreasing score, equal scores by increasing index (a stable sort); a NaN score sorts
  first, as in ``torch.sort``.

Backends: ``cuda`` (tiles of 64 x 64 pairs; box-overlapping pairs compacted, one warp per pair ANDs and
``__popc``-s the boxes' intersection; mask NMS writes box NMS's N x ceil(N/64) int64 suppression bitmask
and reuses its device-side greedy walk: one host sync, for the kept count); ``triton`` (the box-overlapping
pairs are compacted first, each pair ANDs and popcounts only its own boxes' intersection, in equal-sized
work items; hardware popcount on the GPU; mask NMS thresholds those pairs' IoUs straight into the same
bitmask and reuses box NMS's Triton walk: one host sync for the pair count, one for the kept count; see
``triton/mask_nms.py``); ``cpu`` (C++: lazy greedy, only (kept, not yet suppressed) pairs are evaluated,
in parallel per kept mask); ``reference`` (dense float64 matmul and a Python loop). Matrix NMS uses the
backend's IoU kernel, then the decay in torch (O(N^2) memory).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from litesam_kernels import _backend
from litesam_kernels._checks import call_op, check_int, check_length, check_real, check_same_device, check_tensor
from litesam_kernels.ops.bitmask import BITS_PER_WORD, pack_masks, packed_width, unpack_masks
from litesam_kernels.ops.nms import _BOXES_PER_WORD, group_block_ends, in_score_order, nms_visit_order

_MASK_IOU = _backend.register(
    _backend.OpImplementations("mask_iou", compiled_kernel="_mask_iou_kernel", has_triton=True)
)
_MASK_NMS = _backend.register(
    _backend.OpImplementations("mask_nms", compiled_kernel="_mask_nms_kernel", has_triton=True)
)
# Matrix NMS runs the mask-IoU kernel of the chosen backend, then the (parallel) decay in torch.
_MATRIX_NMS = _backend.register(
    _backend.OpImplementations("matrix_nms", compiled_kernel="_mask_iou_kernel", has_triton=True)
)
MATRIX_NMS_KERNELS = ("gaussian", "linear")


def mask_iou(masks_a: torch.Tensor, masks_b: torch.Tensor, width: Optional[int] = None) -> torch.Tensor:
    """Pairwise IoU of two mask stacks.

    Args:
        masks_a: bool ``(Na, H, W)`` or packed int32 ``(Na, H, ceil(W/32))``.
        masks_b: bool ``(Nb, H, W)`` or packed int32 ``(Nb, H, ceil(W/32))``, same H and W, same device.
        width: W; required for packed input, optional (must equal W) for bool input.

    Returns:
        float32 ``(Na, Nb)`` on the masks' device; IoU 0 where the union is empty (see the module docstring).

    Raises:
        TypeError: non-tensor masks, a dtype other than bool/int32, a non-integer width.
        ValueError: wrong ranks, mismatched H/W, a packed shape that does not fit ``width``, a missing
            ``width`` for packed masks, different devices.
    """
    packed_a, width_a = _as_packed("masks_a", masks_a, width)
    packed_b, width_b = _as_packed("masks_b", masks_b, width)
    if width_a != width_b:
        raise ValueError(f"masks_a and masks_b must have the same (H, W), got ({packed_a.shape[1]}, {width_a}) "
                         f"and ({packed_b.shape[1]}, {width_b})")
    return torch.ops.litesam.mask_iou(packed_a, packed_b, width_a)


def mask_nms(
    masks: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    idxs: Optional[torch.Tensor] = None,
    boxes: Optional[torch.Tensor] = None,
    width: Optional[int] = None,
) -> torch.Tensor:
    """Greedy non-maximum suppression of masks by mask IoU (the box-NMS rule with mask IoU).

    Masks are visited by decreasing score (ties: lower index first); a mask is discarded when its IoU
    with an already kept mask of the same ``idxs`` group is **strictly greater** than ``iou_threshold``.

    Args:
        masks: bool ``(N, H, W)`` or packed int32 ``(N, H, ceil(W/32))`` (then pass ``width``).
        scores: floating ``(N,)`` on the masks' device.
        iou_threshold: real in [0, 1].
        idxs: optional integer ``(N,)``: only masks with equal idxs (image, crop, category) suppress each
            other. Groups are compared, never offset, so any values work.
        boxes: optional integer ``(N, 4)`` XYXY inclusive boxes enclosing the masks (SAM's
            ``batched_mask_to_box`` output); computed from the masks when not given.
        width: W for packed masks.

    Returns:
        int64 ``(K,)`` kept indices in decreasing score order, equal scores by increasing index.

    Raises:
        TypeError / ValueError for bad types / shapes, devices, lengths or a threshold outside [0, 1].
    """
    packed, width = _as_packed("masks", masks, width)
    threshold = check_real("iou_threshold", iou_threshold, low=0.0, high=1.0)
    return call_op(torch.ops.litesam.mask_nms, packed, scores, threshold, idxs, _boxes_or_none(boxes, packed), width)


def matrix_nms(
    masks: torch.Tensor,
    scores: torch.Tensor,
    idxs: Optional[torch.Tensor] = None,
    kernel: str = "gaussian",
    sigma: float = 2.0,
    width: Optional[int] = None,
) -> torch.Tensor:
    """Matrix NMS (SOLOv2): every mask's score decayed by its overlaps with higher-scoring masks, in parallel.

    With masks ranked by decreasing score (ties: lower index first) and ``iou[i, j]`` the IoU for ranks
    i < j of the same ``idxs`` group (0 otherwise), ``comp[i] = max_k iou[k, i]`` (how much mask i was
    itself suppressed) and

    - gaussian: ``decay[j] = min_i exp(-sigma * iou[i, j]**2) / exp(-sigma * comp[i]**2)``,
    - linear:   ``decay[j] = min_i (1 - iou[i, j]) / (1 - comp[i])``,

    the minimum over all ranks i (as mmdet's ``mask_matrix_nms`` / SOLO's ``matrix_nms``). Returns
    ``scores * decay``. Differences from mmdet, by design: the input need not be sorted (results are
    returned aligned with the input order: entry k is mask k's decayed score); no ``nms_pre``/``max_num``
    truncation and no ``filter_thr`` (filter the returned scores yourself); empty masks have IoU 0 where
    mmdet gets NaN; a linear 0/0 term (mask i is a copy of a higher mask and j a copy of i, which a third
    term already decays to 0) is ignored where mmdet's ``min`` would return NaN.

    Args:
        masks: bool ``(N, H, W)`` or packed int32 ``(N, H, ceil(W/32))`` (then pass ``width``).
        scores: floating ``(N,)`` on the masks' device.
        idxs: optional integer ``(N,)`` labels: only masks with equal idxs decay each other.
        kernel: ``"gaussian"`` or ``"linear"``.
        sigma: gaussian width, a real >= 0 (unused by the linear kernel).
        width: W for packed masks.

    Returns:
        ``(N,)`` decayed scores in the dtype of ``scores`` (computed in float32, float64 for float64 scores).

    Raises:
        TypeError / ValueError for bad types / shapes, devices, lengths, an unknown kernel or a bad sigma.
    """
    packed, width = _as_packed("masks", masks, width)
    sigma = check_real("sigma", sigma, low=0.0)
    return call_op(torch.ops.litesam.matrix_nms, packed, scores, idxs, kernel, sigma, width)


# ------------------------------------------------------------------------------------------ helpers
def _as_packed(name: str, masks, width) -> Tuple[torch.Tensor, int]:
    """(packed int32 masks, W) from bool or packed input, with the argument named in every error."""
    check_tensor(name, masks, dim=3, dtypes=(torch.bool, torch.int32),
                 expected="(N, H, W) bool or (N, H, ceil(W/32)) int32 packed")
    if width is not None:
        width = check_int("width", width, low=0)
    if masks.dtype == torch.bool:
        if width is not None and width != masks.shape[2]:
            raise ValueError(f"width={width} does not match the bool {name} of width {masks.shape[2]}")
        return pack_masks(masks), masks.shape[2]
    if width is None:
        raise ValueError(f"width is required with packed int32 {name} (the padding of the last word hides W)")
    _check_packed(name, masks, width)
    return masks.contiguous(), width


def _check_packed(name: str, packed, width: int) -> None:
    check_tensor(name, packed, dim=3, dtypes=(torch.int32,), expected="(N, H, ceil(W/32)) int32 packed")
    if packed.shape[2] != packed_width(width):
        raise ValueError(f"{name} must have shape (N, H, {packed_width(width)}) for width={width}, "
                         f"got {tuple(packed.shape)}")


def _boxes_or_none(boxes, packed: torch.Tensor) -> Optional[torch.Tensor]:
    if boxes is None:
        return None
    check_tensor("boxes", boxes, dim=2, last_dims=(4,), integral=True, expected="(N, 4) int64 XYXY inclusive")
    return boxes.to(torch.int64)


def packed_mask_boxes(packed: torch.Tensor, width: int) -> torch.Tensor:
    """SAM's ``batched_mask_to_box`` on packed masks: int64 (N, 4) inclusive XYXY, zeros for empty masks.

    Reads the packed words only (rows: any word set; columns: the rows OR-ed together by halving, then
    unpacked once per mask), so it never materialises the bool masks."""
    n, height, _ = packed.shape
    boxes = torch.zeros(n, 4, dtype=torch.int64, device=packed.device)
    if n == 0 or height == 0 or width == 0:
        return boxes
    columns = packed
    while columns.shape[1] > 1:
        half = columns.shape[1] // 2
        folded = columns[:, :half] | columns[:, half:2 * half]
        if columns.shape[1] % 2:
            folded = torch.cat([folded[:, :1] | columns[:, -1:], folded[:, 1:]], dim=1)
        columns = folded
    x0, x1 = _extent(unpack_masks(columns, width)[:, 0])
    y0, y1 = _extent((packed != 0).any(-1))
    return torch.stack([x0, y0, x1, y1], dim=1)


def _extent(occupied: torch.Tensor):
    """First and last True position per row of a bool (N, L); (0, 0) for an all-False row."""
    coords = torch.arange(occupied.shape[1], device=occupied.device)
    last = torch.where(occupied, coords, -1).amax(1)
    first = torch.where(occupied, coords, occupied.shape[1]).amin(1)
    empty = last < 0
    return first.masked_fill(empty, 0), last.masked_fill(empty, 0)


def _windows(boxes: torch.Tensor, height: int, words: int) -> torch.Tensor:
    """Boxes clipped to the packed mask, int32 (N, 4): as ``window_boxes`` in csrc/common/mask_nms_common.h."""
    x = boxes[:, 0::2].clamp(0, words * BITS_PER_WORD - 1)
    y = boxes[:, 1::2].clamp(0, height - 1)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1).to(torch.int32).contiguous()


# ------------------------------------------------------------------------------------------ validation
def _check_scores(scores, n: int, masks: torch.Tensor, idxs) -> None:
    check_tensor("scores", scores, dim=1, floating=True, expected="(N,)")
    check_length("scores", scores, n, "one per mask")
    if idxs is not None:
        check_tensor("idxs", idxs, dim=1, integral=True, expected="(N,)")
        check_length("idxs", idxs, n, "one per mask")
    check_same_device("masks", masks, scores=scores, idxs=idxs)


def _check_iou_inputs(packed_a, packed_b, width) -> None:
    """Both stacks packed for ``width``, of one height, on one device: the kernels build both stacks' windows
    from ``packed_a``'s height (another height reads out of bounds on a GPU)."""
    _check_packed("masks_a", packed_a, width)
    _check_packed("masks_b", packed_b, width)
    if packed_a.shape[1] != packed_b.shape[1]:
        raise ValueError(f"masks_a and masks_b must have the same (H, W), got ({packed_a.shape[1]}, {width}) "
                         f"and ({packed_b.shape[1]}, {width})")
    check_same_device("masks_a", packed_a, masks_b=packed_b)


def _check_nms_inputs(packed, scores, iou_threshold, idxs, boxes, width) -> None:
    _check_packed("masks", packed, width)
    _check_scores(scores, packed.shape[0], packed, idxs)
    check_real("iou_threshold", iou_threshold, low=0.0, high=1.0)
    if boxes is not None:
        check_tensor("boxes", boxes, dim=2, last_dims=(4,), dtypes=(torch.int64,), expected="(N, 4) XYXY inclusive")
        check_length("boxes", boxes, packed.shape[0], "one per mask")
        check_same_device("masks", packed, boxes=boxes)


def _check_matrix_inputs(packed, scores, idxs, kernel, sigma, width) -> None:
    _check_packed("masks", packed, width)
    _check_scores(scores, packed.shape[0], packed, idxs)
    if kernel not in MATRIX_NMS_KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(MATRIX_NMS_KERNELS)}, got {kernel!r}")
    check_real("sigma", sigma, low=0.0)


# ------------------------------------------------------------------------------------------ reference
def _mask_iou_reference(packed_a: torch.Tensor, packed_b: torch.Tensor, width: int) -> torch.Tensor:
    """Dense and obvious: unpack, float64 matmul (exact counts), divide; 0 where the union is empty."""
    a = unpack_masks(packed_a, width).flatten(1).double()
    b = unpack_masks(packed_b, width).flatten(1).double()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), 0.0).float()


def _mask_nms_reference(packed, scores, iou_threshold: float, idxs, width: int) -> torch.Tensor:
    """Greedy NMS as a Python loop over masks in score order, with the dense IoU matrix."""
    n = packed.shape[0]
    order = torch.sort(scores, stable=True, descending=True).indices
    iou = _mask_iou_reference(packed[order], packed[order], width).double()
    allowed = torch.ones(n, n, dtype=torch.bool, device=packed.device).triu(1)
    if idxs is not None:
        allowed &= idxs[order][:, None] == idxs[order][None, :]
    suppressed = torch.zeros(n, dtype=torch.bool, device=packed.device)
    kept = []
    for i in range(n):
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed |= allowed[i] & (iou[i] > iou_threshold)
    return order[torch.tensor(kept, dtype=torch.long, device=packed.device)]


def _matrix_decay(iou_upper: torch.Tensor, groups_sorted: Optional[torch.Tensor], kernel: str, sigma: float):
    """mmdet's ``mask_matrix_nms`` decay, step for step, on the upper-triangular IoU of score-ranked masks."""
    n = iou_upper.shape[0]
    if groups_sorted is None:
        label_matrix = torch.ones(n, n, dtype=torch.float32, device=iou_upper.device).triu(1)
    else:
        label_matrix = (groups_sorted[:, None] == groups_sorted[None, :]).float().triu(1)
    decay_iou = iou_upper.triu(1) * label_matrix
    compensate_iou = decay_iou.max(0).values.expand(n, n).transpose(1, 0)  # [i, j] = comp[i]
    if kernel == "gaussian":
        decay_matrix = torch.exp(-1 * sigma * (decay_iou**2))
        compensate_matrix = torch.exp(-1 * sigma * (compensate_iou**2))
        matrix = decay_matrix / compensate_matrix
    else:
        matrix = (1 - decay_iou) / (1 - compensate_iou)
        matrix = torch.where(torch.isnan(matrix), torch.inf, matrix)  # 0/0: see matrix_nms's docstring
    return matrix.min(0).values


def _decayed_scores(scores, order, iou_ranked_upper, idxs, kernel: str, sigma: float) -> torch.Tensor:
    """``scores * decay`` in the input order, from the IoU of the score-ranked masks (``order``)."""
    decay = _matrix_decay(iou_ranked_upper, None if idxs is None else idxs[order], kernel, sigma)
    compute = torch.float64 if scores.dtype == torch.float64 else torch.float32
    decayed = torch.empty_like(scores)
    decayed[order] = (scores[order].to(compute) * decay.to(compute)).to(scores.dtype)
    return decayed


def _matrix_nms_reference(packed, scores, idxs, kernel: str, sigma: float, width: int) -> torch.Tensor:
    """mmdet's Matrix NMS on the dense IoU of the score-ranked masks, scores returned in input order."""
    order = torch.sort(scores, stable=True, descending=True).indices
    iou = _mask_iou_reference(packed[order], packed[order], width).triu(1)
    return _decayed_scores(scores, order, iou, idxs, kernel, sigma)


# ------------------------------------------------------------------------------------------ kernel paths
def _iou_from_counts(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """Exact counts divided in float64, rounded once to float32; 0 for an empty union (as the reference)."""
    return torch.where(union > 0, (inter.double() / union.clamp(min=1).double()).float(), 0.0)


# The Triton pair-count and pair-emit grids hold ceil(Na / 32) tiles of the first stack on grid axis 1 (at most
# 65535 programs): mask_iou runs a longer masks_a in slices; the ranked passes (NMS) reject more masks, whose
# (N, N) suppression bitmask (N^2 / 8 bytes: 550 GB here) could not be allocated anyway. CUDA's plan has the
# same limit (csrc/common/launch_plans.h, plan_pair_tiles).
TRITON_MAX_FIRST_STACK = 32 * 65535


def _check_ranked_stack(n: int) -> None:
    if n > TRITON_MAX_FIRST_STACK:
        raise ValueError(f"mask NMS takes at most {TRITON_MAX_FIRST_STACK} masks, got {n}")


def _triton_pair_ious(packed_a, boxes_a, packed_b, boxes_b, upper: bool, groups=None):
    """``(a index, b index, IoU)`` per pass of the pairs whose boxes intersect (the others have IoU 0)."""
    from litesam_kernels.triton.mask_nms import mask_areas, overlapping_pair_intersections

    _check_ranked_stack(packed_a.shape[0])
    height, words = packed_a.shape[1], packed_a.shape[2]
    area_a = mask_areas(packed_a)
    area_b = area_a if packed_b is packed_a else mask_areas(packed_b)
    for first, second, inter in overlapping_pair_intersections(
            packed_a, _windows(boxes_a, height, words), packed_b, _windows(boxes_b, height, words), upper, groups):
        yield first, second, _iou_from_counts(inter, area_a[first] + area_b[second] - inter)


def _triton_dense_iou(packed_a, boxes_a, packed_b, boxes_b, upper: bool) -> torch.Tensor:
    step = TRITON_MAX_FIRST_STACK
    if not upper and packed_a.shape[0] > step:  # rows of the IoU matrix are independent: slices are exact
        return torch.cat([_triton_dense_iou(packed_a[i:i + step], boxes_a[i:i + step], packed_b, boxes_b, False)
                          for i in range(0, packed_a.shape[0], step)])
    iou = torch.zeros(packed_a.shape[0], packed_b.shape[0], dtype=torch.float32, device=packed_a.device)
    for first, second, pair_iou in _triton_pair_ious(packed_a, boxes_a, packed_b, boxes_b, upper):
        iou[first, second] = pair_iou
    return iou


def _ranked_iou_upper(backend: str, packed_sorted, boxes_sorted) -> torch.Tensor:
    """IoU of masks already in rank order, entries j > i only (the rest 0), on a kernel backend."""
    if backend == "triton":
        return _triton_dense_iou(packed_sorted, boxes_sorted, packed_sorted, boxes_sorted, upper=True)
    return _backend.compiled_op(_MASK_IOU)(packed_sorted, boxes_sorted, packed_sorted, boxes_sorted, True)


def _mask_nms_triton(packed, boxes, scores, iou_threshold: float, idxs) -> torch.Tensor:
    """IoUs of the ranked, box-overlapping, same-group pairs only (Triton), thresholded straight into box
    NMS's suppression bitmask, then box NMS's greedy walk (triton/nms.py): no dense IoU, no host loop."""
    from litesam_kernels.triton.nms import greedy_keep_from_mask

    n = packed.shape[0]
    _check_ranked_stack(n)  # before the (N, N / 64) bitmask is allocated
    order = nms_visit_order(scores, idxs)
    groups_sorted = None if idxs is None else idxs[order].to(torch.int64).contiguous()
    packed_sorted = packed[order].contiguous()
    col_blocks = -(-n // _BOXES_PER_WORD)
    bitmask = torch.zeros(n * col_blocks, dtype=torch.int64, device=packed.device)
    boxes_sorted = boxes[order]
    for first, second, pair_iou in _triton_pair_ious(packed_sorted, boxes_sorted, packed_sorted, boxes_sorted,
                                                     upper=True, groups=groups_sorted):
        bit = torch.bitwise_left_shift(torch.ones_like(second), second % _BOXES_PER_WORD)
        # Each (first, second) pair is listed once, so the bits added into a word are distinct: the sum is
        # their OR (bit 63 is the sign bit; two's complement keeps it exact).
        bitmask.index_put_((first * col_blocks + second // _BOXES_PER_WORD,),
                           torch.where(pair_iou.double() > iou_threshold, bit, 0), accumulate=True)
    keep = greedy_keep_from_mask(bitmask, group_block_ends(groups_sorted, n, packed.device), n)
    kept = order[keep]
    return kept if idxs is None else in_score_order(kept, scores)


def _no_pixels(packed, width: int) -> bool:
    """Masks of H = 0 or W = 0: all empty, IoU 0 everywhere; answered without a kernel."""
    return packed.shape[1] == 0 or width == 0


def _run_mask_iou(packed_a, packed_b, width: int) -> torch.Tensor:
    backend = _backend.choose(_MASK_IOU, packed_a.device)
    if backend == "reference" or packed_a.shape[0] == 0 or packed_b.shape[0] == 0 or _no_pixels(packed_a, width):
        return _mask_iou_reference(packed_a, packed_b, width)
    boxes_a, boxes_b = packed_mask_boxes(packed_a, width), packed_mask_boxes(packed_b, width)
    if backend == "triton":
        return _triton_dense_iou(packed_a, boxes_a, packed_b, boxes_b, upper=False)
    return _backend.compiled_op(_MASK_IOU)(packed_a, boxes_a, packed_b, boxes_b, False)


def _run_mask_nms(packed, scores, iou_threshold: float, idxs, boxes, width: int) -> torch.Tensor:
    if packed.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=packed.device)
    backend = _backend.choose(_MASK_NMS, packed.device)
    if _no_pixels(packed, width):
        return torch.sort(scores, stable=True, descending=True).indices  # nothing overlaps: all kept
    if backend == "reference":
        return _mask_nms_reference(packed, scores, iou_threshold, idxs, width)
    if boxes is None:
        boxes = packed_mask_boxes(packed, width)
    if backend == "triton":
        return _mask_nms_triton(packed, boxes, scores, iou_threshold, idxs)
    return _backend.compiled_op(_MASK_NMS)(packed, boxes, scores, idxs, iou_threshold)


def _run_matrix_nms(packed, scores, idxs, kernel: str, sigma: float, width: int) -> torch.Tensor:
    backend = _backend.choose(_MATRIX_NMS, packed.device)
    if packed.shape[0] == 0 or _no_pixels(packed, width):
        return scores.clone()  # no overlaps: no decay
    if backend == "reference":
        return _matrix_nms_reference(packed, scores, idxs, kernel, sigma, width)
    order = torch.sort(scores, stable=True, descending=True).indices
    packed_sorted = packed[order].contiguous()
    iou = _ranked_iou_upper(backend, packed_sorted, packed_mask_boxes(packed_sorted, width))
    return _decayed_scores(scores, order, iou, idxs, kernel, sigma)


# ------------------------------------------------------------------------------------------ custom ops
@torch.library.custom_op("litesam::mask_iou", mutates_args=())
def _mask_iou_op(packed_a: torch.Tensor, packed_b: torch.Tensor, width: int) -> torch.Tensor:
    _check_iou_inputs(packed_a, packed_b, width)
    return _run_mask_iou(packed_a.contiguous(), packed_b.contiguous(), width)


@_mask_iou_op.register_fake
def _mask_iou_fake(packed_a, packed_b, width):
    _check_iou_inputs(packed_a, packed_b, width)
    return packed_a.new_empty((packed_a.shape[0], packed_b.shape[0]), dtype=torch.float32)


@torch.library.custom_op("litesam::mask_nms", mutates_args=())
def _mask_nms_op(packed: torch.Tensor, scores: torch.Tensor, iou_threshold: float, idxs: Optional[torch.Tensor],
                 boxes: Optional[torch.Tensor], width: int) -> torch.Tensor:
    _check_nms_inputs(packed, scores, iou_threshold, idxs, boxes, width)
    return _run_mask_nms(packed.contiguous(), scores, iou_threshold, idxs, boxes, width)


def _kept_indices_like(packed: torch.Tensor) -> torch.Tensor:
    kept_count = torch.library.get_ctx().new_dynamic_size()
    return packed.new_empty((kept_count,), dtype=torch.long)


@_mask_nms_op.register_fake
def _mask_nms_fake(packed, scores, iou_threshold, idxs, boxes, width):
    _check_nms_inputs(packed, scores, iou_threshold, idxs, boxes, width)
    return _kept_indices_like(packed)


@torch.library.custom_op("litesam::matrix_nms", mutates_args=())
def _matrix_nms_op(packed: torch.Tensor, scores: torch.Tensor, idxs: Optional[torch.Tensor], kernel: str,
                   sigma: float, width: int) -> torch.Tensor:
    _check_matrix_inputs(packed, scores, idxs, kernel, sigma, width)
    return _run_matrix_nms(packed.contiguous(), scores, idxs, kernel, sigma, width)


@_matrix_nms_op.register_fake
def _matrix_nms_fake(packed, scores, idxs, kernel, sigma, width):
    _check_matrix_inputs(packed, scores, idxs, kernel, sigma, width)
    return torch.empty_like(scores)


def _register_compiled_kernel_fakes() -> None:
    if _backend.extension() is None or not hasattr(torch.ops.litesam, "_mask_nms_kernel"):
        return

    @torch.library.register_fake("litesam::_mask_iou_kernel")
    def _mask_iou_kernel_fake(packed_a, boxes_a, packed_b, boxes_b, upper):
        return packed_a.new_empty((packed_a.shape[0], packed_b.shape[0]), dtype=torch.float32)

    @torch.library.register_fake("litesam::_mask_nms_kernel")
    def _mask_nms_kernel_fake(packed, boxes, scores, idxs, iou_threshold):
        return _kept_indices_like(packed)


_register_compiled_kernel_fakes()
