"""Box NMS: every runnable implementation vs torchvision.ops.nms / batched_nms (80 classes).

GPU: N = 1k, 4k, 16k, 64k. CPU: N = 1k, 4k (the greedy CPU kernels are O(N^2); Triton is not timed
on CPU because there it is the interpreter). Scores are distinct, so every implementation must return
exactly torchvision's keep list."""
from __future__ import annotations

from typing import List

import torch

from benchmarks.harness import Implementation, Row, backend_implementations, compare
from litesam_kernels import ops

GPU_SIZES = (1_000, 4_000, 16_000, 64_000)
CPU_SIZES = (1_000, 4_000)
NUM_CLASSES = 80
REFERENCE_MAX_N = 4_000  # the reference is a Python loop over boxes: too slow to time beyond this


def make_inputs(n: int, device: torch.device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(n, 2, generator=generator) * 1024
    sizes = torch.rand(n, 2, generator=generator) * 96 + 4
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    scores = torch.randperm(n, generator=generator).float() / n  # distinct: no tie ambiguity
    classes = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    return boxes.to(device), scores.to(device), classes.to(device)


def _too_slow(n: int):
    def reason(backend: str):
        if backend == "reference" and n > REFERENCE_MAX_N:
            return f"reference is a per-box Python loop; timed only up to N={REFERENCE_MAX_N}"
        return None

    return reason


def run(device: torch.device, quick: bool = False) -> List[Row]:
    import torchvision

    sizes = GPU_SIZES if device.type == "cuda" else CPU_SIZES
    if quick:
        sizes = sizes[:2]
    rows: List[Row] = []
    for n in sizes:
        boxes, scores, classes = make_inputs(n, device)
        for op, baseline_fn, ours in (
            ("nms", lambda: torchvision.ops.nms(boxes, scores, 0.5),
             lambda: ops.nms(boxes, scores, 0.5)),
            ("batched_nms", lambda: torchvision.ops.batched_nms(boxes, scores, classes, 0.5),
             lambda: ops.batched_nms(boxes, scores, classes, 0.5)),
        ):
            rows += compare(
                op, f"N={n}" + (f", {NUM_CLASSES} classes" if op == "batched_nms" else ""), boxes.dtype, device,
                Implementation("torchvision", baseline_fn), backend_implementations("batched_nms", device, ours, not_timed=_too_slow(n)),
                matches=torch.equal, note="iou_threshold=0.5",
            )
    return rows
