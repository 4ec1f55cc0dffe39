"""Box NMS: every runnable implementation vs torchvision.ops.nms / batched_nms (80 classes), fp32 and half boxes.

GPU: N = 1k, 4k, 16k, 64k in fp32, fp16 and bf16. CPU: N = 1k, 4k in fp32 and 1k in half (the greedy CPU
kernels are O(N^2); Triton is not timed on CPU because there it is the interpreter). Scores are distinct
in their dtype wherever the dtype has enough values (fp16/bf16 hold about 31k positive values: at 64k
ties are unavoidable and broken by index, as torchvision's stable CUDA sort does), so every
implementation must return exactly torchvision's keep list.

Half boxes: our ops compute IoU in fp32 on the half values (upcast), as torchvision's fp16 CUDA kernel
does; torchvision has no bf16 kernel (and none for half on the CPU), so there the baseline runs on the
upcast boxes, and ``batched_nms``'s baseline always does (its coordinate-offset trick overflows fp16).

Floor: boxes, scores (and class ids) read once, the keep list written once, and the IoU of every pair
that may suppress (all pairs; pairs within a class for batched_nms) at about 12 fp32 operations each on
the FMA units: the all-pairs design's floor (a greedy pass that skips suppressed boxes needs fewer).
"""
from __future__ import annotations

from typing import List, Optional

import torch

from benchmarks.harness import Floor, Implementation, Row, backend_implementations, compare
from litesam_kernels import ops

GPU_SIZES = (1_000, 4_000, 16_000, 64_000)
CPU_SIZES = (1_000, 4_000)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NUM_CLASSES = 80
REFERENCE_MAX_N = 4_000  # the reference is a Python loop over boxes: too slow to time beyond this
IOU_FLOPS = 12  # per pair: 4 min/max, 2 widths clamped at 0, 1 product, the union (2), 1 division, 1 compare


def distinct_scores(n: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """``n`` scores in ``dtype``, distinct when the dtype has ``n`` positive finite values (random order)."""
    if dtype == torch.float32:
        return torch.randperm(n, generator=generator).float() / n
    bits = torch.arange(1, 1 << 15, dtype=torch.int32).to(torch.int16)  # every positive half-width bit pattern
    values = bits.view(dtype)
    values = values[torch.isfinite(values.float())]
    if n <= values.numel():
        return values[torch.randperm(values.numel(), generator=generator)[:n]]
    return (torch.rand(n, generator=generator)).to(dtype)  # more boxes than values: ties, broken by index


def make_inputs(n: int, device: torch.device, seed: int = 0, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(n, 2, generator=generator) * 1024
    sizes = torch.rand(n, 2, generator=generator) * 96 + 4
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1).to(dtype)
    scores = distinct_scores(n, dtype, generator)
    classes = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    return boxes.to(device), scores.to(device), classes.to(device)


def nms_floor(boxes: torch.Tensor, scores: torch.Tensor, classes: Optional[torch.Tensor] = None):
    """The case's floor as a function of the keep list (its length is only known after the run)."""
    if classes is None:
        pairs = boxes.shape[0] * (boxes.shape[0] - 1) // 2
    else:
        per_class = torch.bincount(classes.cpu()).double()
        pairs = int((per_class * (per_class - 1) / 2).sum())
    inputs = boxes.numel() * boxes.element_size() + scores.numel() * scores.element_size()
    if classes is not None:
        inputs += classes.numel() * classes.element_size()

    def floor(keep: torch.Tensor) -> Floor:
        return Floor(bytes_moved=inputs + keep.numel() * keep.element_size(), flops=pairs * IOU_FLOPS,
                     flops_dtype="fp32")

    return floor


def _too_slow(n: int):
    def reason(backend: str):
        if backend == "reference" and n > REFERENCE_MAX_N:
            return f"reference is a per-box Python loop; timed only up to N={REFERENCE_MAX_N}"
        return None

    return reason


def torchvision_baselines(boxes, scores, classes, threshold: float):
    """{op: Implementation} of torchvision on these boxes: native where torchvision has a kernel for the
    dtype on this device, else on the fp32 upcast (the same values: our ops upcast half boxes too)."""
    import torchvision

    native = boxes.dtype == torch.float32
    if not native:
        try:
            torchvision.ops.nms(boxes[:2], scores[:2], threshold)
            native = True
        except (RuntimeError, NotImplementedError):  # "nms_kernel" not implemented for 'BFloat16' / CPU 'Half'
            native = False
    up_boxes, up_scores = boxes.float(), scores.float()
    suffix = " (fp32 upcast)"
    nms_boxes, nms_scores = (boxes, scores) if native else (up_boxes, up_scores)
    return {
        "nms": Implementation("torchvision" + ("" if native else suffix),
                              lambda: torchvision.ops.nms(nms_boxes, nms_scores, threshold)),
        # the coordinate-offset trick of batched_nms overflows fp16 at 80 classes of 1024-pixel images
        "batched_nms": Implementation("torchvision" + ("" if boxes.dtype == torch.float32 else suffix),
                                      lambda: torchvision.ops.batched_nms(up_boxes, up_scores, classes, threshold)),
    }


def cases(device: torch.device, quick: bool):
    sizes = GPU_SIZES if device.type == "cuda" else CPU_SIZES
    if quick:
        sizes = sizes[:2]
    for dtype in DTYPES:
        half_on_cpu = dtype != torch.float32 and device.type != "cuda"
        for n in sizes[:1] if half_on_cpu else sizes:  # CPU runs stay small: half precision at 1k only
            yield n, dtype


def run(device: torch.device, quick: bool = False) -> List[Row]:
    rows: List[Row] = []
    for n, dtype in cases(device, quick):
        boxes, scores, classes = make_inputs(n, device, dtype=dtype)
        baselines = torchvision_baselines(boxes, scores, classes, 0.5)
        for op, ours, floor in (
            ("nms", lambda: ops.nms(boxes, scores, 0.5), nms_floor(boxes, scores)),
            ("batched_nms", lambda: ops.batched_nms(boxes, scores, classes, 0.5), nms_floor(boxes, scores, classes)),
        ):
            rows += compare(
                op, f"N={n}" + (f", {NUM_CLASSES} classes" if op == "batched_nms" else ""), dtype, device,
                baselines[op], backend_implementations("batched_nms", device, ours, not_timed=_too_slow(n)),
                matches=torch.equal, note="iou_threshold=0.5", floor=floor,
            )
    return rows
