"""AutoPPN decode: ``ops.ppn_decode`` (one Triton launch per batch) vs the same steps in eager torch
(max_pool2d peak test, threshold, topk, gathers, box arithmetic: ~20 launches).

GPU: B = 1, 8, 32 heatmaps of 64 x 64 (1024^2 inputs), K = 256. CPU: B = 1, 8 (Triton is not timed on
CPU: there it is the interpreter). Heatmaps are smooth (low-res noise upsampled), so peaks are realistic
and scores distinct: every implementation must select the same prompts."""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from benchmarks.harness import Implementation, Row, backend_implementations, compare
from litesam_kernels import ops

GPU_BATCHES = (1, 8, 32)
CPU_BATCHES = (1, 8)
GRID, K, THRESHOLD, STRIDE = 64, 256, 0.1, 16.0


def make_inputs(batch: int, device: torch.device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    low = torch.randn(batch, 1, GRID // 4, GRID // 4, generator=generator) * 4
    heat = F.interpolate(low, size=(GRID, GRID), mode="bicubic", align_corners=False) - 1.0
    distances = torch.rand(batch, 4, GRID, GRID, generator=generator) * 4
    return heat.to(device), distances.to(device)


def eager_ppn_decode(heat: torch.Tensor, distances: torch.Tensor, k: int, threshold: float, stride: float):
    """CenterNet-style decoding in eager torch (the baseline): same selection as ops.ppn_decode."""
    b, _, h, w = heat.shape
    logits = heat.float()
    peaks = (F.max_pool2d(logits, 3, 1, 1) == logits) & (torch.sigmoid(logits) >= threshold)
    masked = torch.where(peaks, logits, float("-inf")).flatten(1)
    top_logits, top_index = masked.topk(k, dim=1)
    valid = top_logits > float("-inf")
    cx = ((top_index % w).float() + 0.5) * stride
    cy = ((top_index // w).float() + 0.5) * stride
    d = distances.float().flatten(2).gather(2, top_index[:, None].expand(-1, 4, -1))
    boxes = torch.stack([cx - d[:, 0] * stride, cy - d[:, 1] * stride, cx + d[:, 2] * stride, cy + d[:, 3] * stride], -1)
    boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([w * stride, h * stride] * 2, device=heat.device))
    zeros = torch.zeros((), device=heat.device)
    scores = torch.where(valid, torch.sigmoid(top_logits), zeros)
    points = torch.where(valid[..., None], torch.stack([cx, cy], -1), zeros)
    return points, torch.where(valid[..., None], boxes, zeros), scores, valid.sum(1)


def _matches(got, expected) -> bool:
    points, boxes, scores, counts = expected
    return (torch.equal(got.num_valid, counts) and torch.allclose(got.scores, scores, atol=1e-6)
            and torch.allclose(got.points, points) and torch.allclose(got.boxes, boxes, atol=1e-4))


def run(device: torch.device, quick: bool = False) -> List[Row]:
    batches = GPU_BATCHES if device.type == "cuda" else CPU_BATCHES
    if quick:
        batches = batches[:1]
    rows: List[Row] = []
    for batch in batches:
        heat, distances = make_inputs(batch, device)
        impls = backend_implementations(
            "ppn_decode", device,
            lambda: ops.ppn_decode(heat, distances, k=K, score_threshold=THRESHOLD, stride=STRIDE),
            backends=("triton", "reference"),
        )
        rows += compare(
            "ppn_decode", f"B={batch}, {GRID}x{GRID}, K={K}", heat.dtype, device,
            Implementation("eager-torch", lambda: eager_ppn_decode(heat, distances, K, THRESHOLD, STRIDE)),
            impls, matches=_matches, note=f"score_threshold={THRESHOLD}",
        )
    return rows
