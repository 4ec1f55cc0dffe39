"""AutoPPN decoding: heatmap peaks + top-K + box decode -> point and box prompts, fixed-size per image.

Semantics (every backend, identical selection and order):
- computation in float32 (float16/bfloat16/float64 inputs are converted on load); a NaN logit counts as
  -inf (never a peak, never blocks a neighbour);
- a cell is *inside* image ``b`` when its centre ``((x + 0.5) * stride, (y + 0.5) * stride)`` lies strictly
  within ``image_sizes[b] = (h, w)`` (default: the whole grid). Cells outside do not exist: they are never
  peaks and are not neighbours (the padding of a resized image cannot produce prompts);
- a cell is a *peak* when its logit equals the maximum over its 3x3 neighbourhood of inside cells
  (CenterNet's test). On a plateau every cell of the plateau is a peak;
- it is kept when ``sigmoid(logit) >= score_threshold``, evaluated exactly as
  ``logit >= log(t / (1 - t))`` in float64 (t = 1 keeps only +inf logits), and the logit is not -inf;
- kept peaks are ranked by logit, descending; **equal logits by lower flat index** ``y * W + x`` first
  (-0.0 ties with +0.0). The first ``k`` are returned;
- per prompt: point = the cell centre; box = ``(cx - l*s, cy - t*s, cx + r*s, cy + b*s)`` with the regressed
  distances (l, t, r, b) in stride units and s = stride, each coordinate clamped to ``[0, w]`` / ``[0, h]``.
  Points and boxes are in input pixels (the padded, resized model input), SAM's convention for prompts;
- ranks ``>= num_valid[b]`` are padding: points/boxes/scores 0, indices -1.
No host synchronisation: outputs have fixed shapes.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch

from litesam_kernels import _backend
from litesam_kernels._checks import call_op, check_int, check_real, check_same_device, check_tensor

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_PPN_DECODE = _backend.register(_backend.OpImplementations("ppn_decode", has_triton=True))
# Prompts per image: far above any use (SegEvery takes 256) and within the Triton kernel's int32 k; a typo
# such as 2**40 is rejected before (B, k, 4) outputs of terabytes are allocated.
MAX_K = 65536
# The Triton kernel sorts next_power_of_2(max(H * W, k)) keys in one program, 8 bytes each in shared memory
# (sm_90a AOT: 128 KB at 16384; 32768 would need 256 KB, more than the 227 KB a Hopper block can have).
# Larger heatmaps (a 2048^2 input at stride 16 is 128^2 = 16384 cells) or k run on the reference.
TRITON_MAX_CELLS = 16384


class PPNPrompts(NamedTuple):
    """Fixed-size prompts per image; entries at ranks >= ``num_valid`` are padding."""

    points: torch.Tensor     # (B, K, 2) float32, (x, y) input pixels
    boxes: torch.Tensor      # (B, K, 4) float32, XYXY input pixels
    scores: torch.Tensor     # (B, K) float32, sigmoid of the peak logit
    indices: torch.Tensor    # (B, K) int64, flat cell index y * W + x, -1 for padding
    num_valid: torch.Tensor  # (B,) int64


def ppn_decode(heatmap_logits: torch.Tensor, box_regression: torch.Tensor, k: int = 256,
               score_threshold: float = 0.1, stride: float = 16.0,
               image_sizes: Optional[torch.Tensor] = None) -> PPNPrompts:
    """Turn AutoPPN outputs into up to ``k`` point and box prompts per image (see the module docstring).

    Args:
        heatmap_logits: ``(B, 1, H, W)`` floating, point-confidence logits.
        box_regression: ``(B, 4, H, W)`` floating, distances (left, top, right, bottom) from each cell
            centre in stride units, on the device of ``heatmap_logits``.
        k: prompts per image, in [1, MAX_K = 65536] (outputs are padded when an image has fewer peaks).
        score_threshold: in [0, 1]; a peak is kept when its sigmoid score is >= this.
        stride: input pixels per heatmap cell (> 0); 16 for Lite-SAM.
        image_sizes: optional ``(B, 2)`` integer ``(h, w)`` of each image's valid (unpadded) region in input
            pixels; boxes are clamped to it and cells outside it are ignored. Default: ``(H*stride, W*stride)``.

    Returns:
        :class:`PPNPrompts` ``(points, boxes, scores, indices, num_valid)``.

    Raises:
        TypeError: non-tensors, non-floating maps, non-integer ``image_sizes``, non-integer ``k``.
        ValueError: wrong shapes, mismatched batch/grid sizes or devices, ``k`` outside [1, 65536], a threshold outside [0, 1],
            a non-positive stride.
    """
    k = _check_k(k)
    threshold = check_real("score_threshold", score_threshold, low=0.0, high=1.0)
    stride = check_real("stride", stride, low=0.0)
    if stride <= 0:
        raise ValueError(f"stride must be > 0, got {stride}")
    return PPNPrompts(*call_op(torch.ops.litesam.ppn_decode, heatmap_logits, box_regression, image_sizes, k, threshold,
                               stride))


# ------------------------------------------------------------------------------------------ validation
def _check_k(k) -> int:
    return check_int("k", k, low=1, high=MAX_K)


def _check_inputs(heatmap_logits, box_regression, image_sizes, k, score_threshold, stride) -> None:
    check_tensor("heatmap_logits", heatmap_logits, dim=4, dtypes=_FLOATS, expected="(B, 1, H, W) floating")
    if heatmap_logits.shape[1] != 1:
        raise ValueError(f"heatmap_logits must have shape (B, 1, H, W), got {tuple(heatmap_logits.shape)}")
    check_tensor("box_regression", box_regression, dim=4, dtypes=_FLOATS, expected="(B, 4, H, W) floating")
    b, _, h, w = heatmap_logits.shape
    if tuple(box_regression.shape) != (b, 4, h, w):
        raise ValueError(f"box_regression must have shape {(b, 4, h, w)} to match heatmap_logits, "
                         f"got {tuple(box_regression.shape)}")
    if image_sizes is not None:
        check_tensor("image_sizes", image_sizes, dim=2, last_dims=(2,), integral=True, expected="(B, 2) (h, w)")
        if image_sizes.shape[0] != b:
            raise ValueError(f"image_sizes must have {b} rows (one per image), got {image_sizes.shape[0]}")
    check_same_device("heatmap_logits", heatmap_logits, box_regression=box_regression, image_sizes=image_sizes)
    _check_k(k)
    check_real("score_threshold", score_threshold, low=0.0, high=1.0)
    if check_real("stride", stride, low=0.0) <= 0:
        raise ValueError(f"stride must be > 0, got {stride}")


def _logit_threshold(score_threshold: float) -> float:
    if score_threshold <= 0.0:
        return -math.inf
    if score_threshold >= 1.0:
        return math.inf
    return math.log(score_threshold / (1.0 - score_threshold))


# ------------------------------------------------------------------------------------------ reference
def _cell_centres(size: int, stride: float, device) -> torch.Tensor:
    return (torch.arange(size, device=device).to(torch.float32) + 0.5) * stride


def _ppn_decode_reference(heatmap_logits, box_regression, image_sizes, k: int, score_threshold: float,
                          stride: float) -> Tuple[torch.Tensor, ...]:
    """Per image: mask cells outside, 3x3 max pool, peaks, stable sort of the kept logits, box decode."""
    b, _, h, w = heatmap_logits.shape
    device = heatmap_logits.device
    points = torch.zeros(b, k, 2, dtype=torch.float32, device=device)
    boxes = torch.zeros(b, k, 4, dtype=torch.float32, device=device)
    scores = torch.zeros(b, k, dtype=torch.float32, device=device)
    indices = torch.full((b, k), -1, dtype=torch.int64, device=device)
    counts = torch.zeros(b, dtype=torch.int64, device=device)
    cy, cx = _cell_centres(h, stride, device), _cell_centres(w, stride, device)
    threshold = _logit_threshold(score_threshold)
    for i in range(b):
        if image_sizes is None:
            image_h = torch.tensor(h * stride, dtype=torch.float32, device=device)
            image_w = torch.tensor(w * stride, dtype=torch.float32, device=device)
        else:
            image_h, image_w = image_sizes[i, 0].to(torch.float32), image_sizes[i, 1].to(torch.float32)
        inside = (cy < image_h)[:, None] & (cx < image_w)[None, :]
        logits = heatmap_logits[i, 0].to(torch.float32)
        logits = torch.where(torch.isnan(logits) | ~inside, -math.inf, logits)
        local_max = torch.nn.functional.max_pool2d(logits[None, None], 3, 1, 1)[0, 0] if h * w else logits
        peak = inside & (logits == local_max) & (logits.double() >= threshold) & (logits > -math.inf)
        candidates = torch.nonzero(peak.flatten()).flatten()
        order = torch.sort(logits.flatten()[candidates], descending=True, stable=True).indices
        chosen = candidates[order[:k]]
        n = chosen.numel()
        counts[i] = n
        if n == 0:
            continue
        y, x = chosen // w, chosen % w
        px, py = cx[x], cy[y]
        distances = box_regression[i].to(torch.float32).flatten(1)[:, chosen]
        points[i, :n] = torch.stack([px, py], dim=1)
        boxes[i, :n] = torch.stack([
            (px - distances[0] * stride).clamp(0.0).minimum(image_w),
            (py - distances[1] * stride).clamp(0.0).minimum(image_h),
            (px + distances[2] * stride).clamp(0.0).minimum(image_w),
            (py + distances[3] * stride).clamp(0.0).minimum(image_h),
        ], dim=1)
        scores[i, :n] = torch.sigmoid(logits.flatten()[chosen])
        indices[i, :n] = chosen
    return points, boxes, scores, indices, counts


# ------------------------------------------------------------------------------------------ dispatch
def _run(heatmap_logits, box_regression, image_sizes, k, score_threshold, stride):
    b, _, h, w = heatmap_logits.shape
    if b == 0 or h * w == 0:
        return _ppn_decode_reference(heatmap_logits, box_regression, image_sizes, k, score_threshold, stride)
    backend = _backend.choose(_PPN_DECODE, heatmap_logits.device)
    if backend == "triton":
        from litesam_kernels.triton.ppn_decode import ppn_decode_launch, sort_blocks

        if sort_blocks(h * w, k)[0] > TRITON_MAX_CELLS:
            if _backend.forced_backend() == "triton":
                raise _backend.BackendUnavailableError(
                    f"backend 'triton' was forced but its ppn_decode kernel sorts at most {TRITON_MAX_CELLS} keys "
                    f"in one program, got a {h}x{w} heatmap with k={k}")
            return _ppn_decode_reference(heatmap_logits, box_regression, image_sizes, k, score_threshold, stride)

        sizes = None if image_sizes is None else image_sizes.to(torch.int64).contiguous()
        return ppn_decode_launch(heatmap_logits.contiguous(), box_regression.contiguous(), sizes, k,
                                 _logit_threshold(score_threshold), stride)
    return _ppn_decode_reference(heatmap_logits, box_regression, image_sizes, k, score_threshold, stride)


@torch.library.custom_op("litesam::ppn_decode", mutates_args=())
def _ppn_decode_op(heatmap_logits: torch.Tensor, box_regression: torch.Tensor, image_sizes: Optional[torch.Tensor],
                   k: int, score_threshold: float, stride: float
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_inputs(heatmap_logits, box_regression, image_sizes, k, score_threshold, stride)
    return _run(heatmap_logits, box_regression, image_sizes, k, score_threshold, stride)


@_ppn_decode_op.register_fake
def _ppn_decode_fake(heatmap_logits, box_regression, image_sizes, k, score_threshold, stride):
    _check_inputs(heatmap_logits, box_regression, image_sizes, k, score_threshold, stride)
    b = heatmap_logits.shape[0]
    new = heatmap_logits.new_empty
    return (new((b, k, 2), dtype=torch.float32), new((b, k, 4), dtype=torch.float32),
            new((b, k), dtype=torch.float32), new((b, k), dtype=torch.int64), new((b,), dtype=torch.int64))
