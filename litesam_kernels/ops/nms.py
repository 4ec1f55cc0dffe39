"""Box NMS with torchvision's semantics: ``nms`` and ``batched_nms``.

Semantics (every backend, identical keep lists):
- boxes are XYXY; IoU = inter / (area_a + area_b - inter), computed in float32 (float64 for float64
  input; float16/bfloat16 boxes are upcast to float32), compared with the threshold in float64;
- box j is suppressed by a kept box i when IoU(i, j) > iou_threshold (**strictly greater**);
- visit and output order: decreasing score, **ties by increasing index** (a stable sort), as torchvision's
  kernels: its CUDA kernel and, in torchvision 0.26 (verified on heavy ties: tests/test_nms.py), its CPU
  kernel sort stably too, so keep lists equal torchvision's on tied scores (older torchvision CPU kernels
  sorted unstably and could keep another equal-score box);
- degenerate boxes: a pair whose intersection has no positive width and height never suppresses, so
  zero-area and inverted (x2 < x1 or y2 < y1) boxes are never suppressed and suppress nothing;
- NaN: a NaN score sorts before every number (as in ``torch.sort``); a box with a NaN coordinate has a NaN
  IoU with every box, which never suppresses. Infinite coordinates follow the IEEE arithmetic of the
  formula (e.g. two boxes that extend to +inf in x have an IoU of inf/inf = NaN: no suppression).
"""
from __future__ import annotations

from typing import Optional

import torch

from litesam_kernels import _backend
from litesam_kernels._checks import call_op, check_length, check_real, check_same_device, check_tensor

_BOXES_PER_WORD = 64
_NMS = _backend.register(
    _backend.OpImplementations("batched_nms", compiled_kernel="_batched_nms_kernel", has_triton=True)
)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression of boxes by IoU (torchvision.ops.nms semantics).

    Args:
        boxes: ``Tensor[N, 4]`` floating (float16/bfloat16/float32/float64), ``(x1, y1, x2, y2)``.
        scores: ``Tensor[N]`` with the dtype and device of ``boxes``.
        iou_threshold: in [0, 1]; a box is discarded when its IoU with a kept, higher-scoring box is
            strictly greater than this.

    Returns:
        ``Tensor[K]`` int64 on the device of ``boxes``: indices of the kept boxes in decreasing score
        order, equal scores by increasing index.

    Raises:
        TypeError: non-tensor input, non-floating boxes, scores of another dtype, non-real threshold.
        ValueError: wrong shapes, a length mismatch, tensors on different devices, a threshold outside [0, 1].

    See the module docstring for degenerate boxes, NaN and infinity.
    """
    return call_op(torch.ops.litesam.nms, boxes, scores, _threshold(iou_threshold))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS in which only boxes with equal ``idxs`` (category, image, crop...) suppress each other.

    Exact for any coordinates: groups are kept apart by comparing ``idxs``, not by offsetting the boxes
    (torchvision's coordinate trick loses precision when coordinates are large).

    Args:
        boxes, scores, iou_threshold: as in :func:`nms`.
        idxs: ``Tensor[N]`` integer, on the device of ``boxes``.

    Returns:
        ``Tensor[K]`` int64: kept indices in decreasing score order across all groups, ties by index.

    Raises:
        As :func:`nms`; also TypeError for non-integer ``idxs`` and ValueError for a length mismatch.
    """
    return call_op(torch.ops.litesam.batched_nms, boxes, scores, idxs, _threshold(iou_threshold))


# ------------------------------------------------------------------------------------------ validation
def _threshold(iou_threshold) -> float:
    return check_real("iou_threshold", iou_threshold, low=0.0, high=1.0)


def _check_inputs(boxes, scores, idxs, iou_threshold: float, with_idxs: bool) -> None:
    check_tensor("boxes", boxes, dim=2, last_dims=(4,), floating=True, expected="(N, 4) XYXY")
    check_tensor("scores", scores, dim=1, expected="(N,)")
    if scores.dtype != boxes.dtype:
        raise TypeError(f"scores must have the dtype of boxes ({boxes.dtype}), got {scores.dtype}")
    check_length("scores", scores, boxes.shape[0], "one per box")
    if with_idxs:
        check_tensor("idxs", idxs, dim=1, integral=True, expected="(N,)")
        check_length("idxs", idxs, boxes.shape[0], "one per box")
    check_same_device("boxes", boxes, scores=scores, idxs=idxs if with_idxs else None)
    check_real("iou_threshold", iou_threshold, low=0.0, high=1.0)


# ------------------------------------------------------------------------------------------ reference
def _iou_with(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of one box against many, with the kernels' operation order (so results are bitwise equal)."""
    width = torch.minimum(box[2], boxes[:, 2]) - torch.maximum(box[0], boxes[:, 0])
    height = torch.minimum(box[3], boxes[:, 3]) - torch.maximum(box[1], boxes[:, 1])
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inter = width.clamp(min=0) * height.clamp(min=0)
    return inter / ((area + areas) - inter)


def _nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Slow, obvious greedy NMS: one pass over boxes by decreasing score (stable)."""
    compute = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    order = torch.sort(scores, stable=True, descending=True).indices
    sorted_boxes = boxes[order].to(compute)
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    kept = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        kept.append(i)
        overlaps = _iou_with(sorted_boxes[i], sorted_boxes).double() > iou_threshold
        overlaps[: i + 1] = False
        suppressed |= overlaps
    return order[torch.tensor(kept, dtype=torch.long, device=boxes.device)]


def _batched_nms_reference(boxes, scores, idxs, iou_threshold: float) -> torch.Tensor:
    """NMS per group, then all kept indices by decreasing score, ties by index."""
    kept = [torch.empty(0, dtype=torch.long, device=boxes.device)]
    for group in torch.unique(idxs):
        members = torch.nonzero(idxs == group).flatten()
        kept.append(members[_nms_reference(boxes[members], scores[members], iou_threshold)])
    kept = torch.sort(torch.cat(kept)).values
    return kept[torch.sort(scores[kept], stable=True, descending=True).indices]


# ------------------------------------------------------------------------------------------ shared pieces
# The greedy-by-bitmask design below is shared with mask NMS (ops/mask_nms.py); so are these helpers.
def nms_visit_order(scores: torch.Tensor, idxs: Optional[torch.Tensor]) -> torch.Tensor:
    """Visit order of the greedy pass: decreasing score, ties by increasing index (stable); with ``idxs``,
    grouped by idxs (stable) so each group is one contiguous run. Same as ``nms_visit_order`` in C++."""
    order = torch.sort(scores, stable=True, descending=True).indices
    if idxs is not None:
        order = order[torch.sort(idxs[order], stable=True).indices]
    return order


def group_block_ends(groups_sorted: Optional[torch.Tensor], n: int, device: torch.device) -> torch.Tensor:
    """For each block of 64 items in visit order, the column block its groups end before (int64,
    ceil(N/64)): block c can meet row block r only if c's first group <= r's last group (groups ascend)."""
    col_blocks = -(-n // _BOXES_PER_WORD)
    if groups_sorted is None:
        return torch.full((col_blocks,), col_blocks, dtype=torch.int64, device=device)
    block_first = groups_sorted[::_BOXES_PER_WORD].contiguous()
    last = torch.arange(_BOXES_PER_WORD - 1, n + _BOXES_PER_WORD - 1, _BOXES_PER_WORD, device=device)
    block_last = groups_sorted[last.clamp(max=n - 1)]
    return torch.searchsorted(block_first, block_last, right=True).contiguous()


def in_score_order(kept: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Kept original indices -> decreasing score, ties by increasing index."""
    kept = torch.sort(kept).values
    return kept[torch.sort(scores[kept], stable=True, descending=True).indices]


# ------------------------------------------------------------------------------------------ triton path
def _batched_nms_triton(boxes, scores, idxs: Optional[torch.Tensor], iou_threshold: float) -> torch.Tensor:
    from litesam_kernels.triton.nms import nms_keep_mask

    n = boxes.shape[0]
    order = nms_visit_order(scores, idxs)
    compute = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    boxes_sorted = boxes[order].to(compute).contiguous()
    groups_sorted = None if idxs is None else idxs[order].to(torch.int64).contiguous()
    col_end = group_block_ends(groups_sorted, n, boxes.device)
    kept = order[nms_keep_mask(boxes_sorted, groups_sorted, col_end, iou_threshold)]
    return kept if idxs is None else in_score_order(kept, scores)


def _run(boxes, scores, idxs, iou_threshold: float) -> torch.Tensor:
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    backend = _backend.choose(_NMS, boxes.device)
    if backend in ("cuda", "cpu"):
        return _backend.compiled_op(_NMS)(boxes, scores, idxs, iou_threshold)
    if backend == "triton":
        return _batched_nms_triton(boxes, scores, idxs, iou_threshold)
    if idxs is None:
        return _nms_reference(boxes, scores, iou_threshold)
    return _batched_nms_reference(boxes, scores, idxs, iou_threshold)


# ------------------------------------------------------------------------------------------ custom ops
@torch.library.custom_op("litesam::nms", mutates_args=())
def _nms_op(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    _check_inputs(boxes, scores, None, iou_threshold, with_idxs=False)
    return _run(boxes, scores, None, iou_threshold)


@torch.library.custom_op("litesam::batched_nms", mutates_args=())
def _batched_nms_op(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    _check_inputs(boxes, scores, idxs, iou_threshold, with_idxs=True)
    return _run(boxes, scores, idxs, iou_threshold)


def _kept_indices_like(boxes: torch.Tensor) -> torch.Tensor:
    kept_count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept_count,), dtype=torch.long)


@_nms_op.register_fake
def _nms_fake(boxes, scores, iou_threshold):
    _check_inputs(boxes, scores, None, iou_threshold, with_idxs=False)
    return _kept_indices_like(boxes)


@_batched_nms_op.register_fake
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    _check_inputs(boxes, scores, idxs, iou_threshold, with_idxs=True)
    return _kept_indices_like(boxes)


def _register_compiled_kernel_fake() -> None:
    if _backend.extension() is None:
        return

    @torch.library.register_fake("litesam::_batched_nms_kernel")
    def _batched_nms_kernel_fake(boxes, scores, idxs, iou_threshold):
        _check_inputs(boxes, scores, idxs, iou_threshold, with_idxs=idxs is not None)
        return _kept_indices_like(boxes)


_register_compiled_kernel_fake()
