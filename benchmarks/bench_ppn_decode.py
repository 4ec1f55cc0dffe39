"""AutoPPN decode: ``ops.ppn_decode`` (one Triton launch per batch) vs the same steps in eager torch
(max_pool2d peak test, threshold, a stable sort for the top K, gathers, box arithmetic: ~20 launches).

GPU: B = 1, 8, 32 heatmaps of 64 x 64 (1024^2 inputs), K = 256, in fp32; B = 1, 8 in fp16 and bf16. CPU:
B = 1, 8 in each dtype (Triton is not timed on CPU: there it is the interpreter). Heatmaps are smooth
(low-res noise upsampled), so peaks are realistic and scores distinct: every implementation must select
the same prompts. Half heatmaps: the eager baseline decodes in fp32 (``heat.float()``), as the op does.

Floor: heatmap and box regression read once, the fixed-size outputs (points, boxes, scores: fp32) and the
counts written once. At these sizes that is a few microseconds of bandwidth or less: launch latency, not
bytes, sets the time, which is why the op is one launch."""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from benchmarks.harness import Floor, Implementation, Row, backend_implementations, compare
from litesam_kernels import ops

GPU_BATCHES = (1, 8, 32)
CPU_BATCHES = (1, 8)
HALF_BATCHES = (1, 8)  # PERFORMANCE.md's batch sizes for the half-precision rows
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
GRID, K, THRESHOLD, STRIDE = 64, 256, 0.1, 16.0


def make_inputs(batch: int, device: torch.device, seed: int = 0, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(seed)
    low = torch.randn(batch, 1, GRID // 4, GRID // 4, generator=generator) * 4
    heat = F.interpolate(low, size=(GRID, GRID), mode="bicubic", align_corners=False) - 1.0
    distances = torch.rand(batch, 4, GRID, GRID, generator=generator) * 4
    return heat.to(device, dtype), distances.to(device, dtype)


def decode_floor(heat: torch.Tensor, distances: torch.Tensor, k: int) -> Floor:
    inputs = heat.numel() * heat.element_size() + distances.numel() * distances.element_size()
    outputs = heat.shape[0] * (k * (2 + 4 + 1) * 4 + 8)  # fp32 points, boxes, scores; int64 counts
    return Floor(bytes_moved=inputs + outputs)


def cases(device: torch.device, quick: bool):
    for dtype in DTYPES:
        batches = (GPU_BATCHES if device.type == "cuda" else CPU_BATCHES) if dtype == torch.float32 else HALF_BATCHES
        yield from ((batch, dtype) for batch in (batches[:1] if quick else batches))


def eager_ppn_decode(heat: torch.Tensor, distances: torch.Tensor, k: int, threshold: float, stride: float):
    """CenterNet-style decoding in eager torch (the baseline): same selection as ops.ppn_decode. Equal
    logits rank by lower cell index (the op's rule; frequent in bf16), so a stable descending sort stands
    in for ``topk``, whose order of equal values is unspecified."""
    b, _, h, w = heat.shape
    logits = heat.float()
    peaks = (F.max_pool2d(logits, 3, 1, 1) == logits) & (torch.sigmoid(logits) >= threshold)
    masked = torch.where(peaks, logits, float("-inf")).flatten(1)
    top_logits, top_index = (t[:, :k] for t in masked.sort(dim=1, descending=True, stable=True))
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
    rows: List[Row] = []
    for batch, dtype in cases(device, quick):
        heat, distances = make_inputs(batch, device, dtype=dtype)
        impls = backend_implementations(
            "ppn_decode", device,
            lambda: ops.ppn_decode(heat, distances, k=K, score_threshold=THRESHOLD, stride=STRIDE),
            backends=("triton", "reference"),
        )
        rows += compare(
            "ppn_decode", f"B={batch}, {GRID}x{GRID}, K={K}", heat.dtype, device,
            Implementation("eager-torch", lambda: eager_ppn_decode(heat, distances, K, THRESHOLD, STRIDE)),
            impls, matches=_matches, note=f"score_threshold={THRESHOLD}", floor=decode_floor(heat, distances, K),
        )
    return rows
