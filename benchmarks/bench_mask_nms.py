"""Mask NMS and Matrix NMS on bit-packed masks vs the dense-matmul baselines in torch.

GPU: N = 1000 and 3072 masks at 256x256 (SAM's low-res size), N = 1000 at 1024x1024. CPU: smaller.
Masks are SAM-like: thresholded upsampled-noise blobs inside random boxes (5%..60% of the side), a third
of them near-duplicates of others (what mask NMS is there to remove). Rows:
- mask_nms: baseline ``dense_matmul_mask_nms`` (one fp16 GEMM for all intersections, then the greedy pass
  on the host, the usual torch approach) vs ``ops.mask_nms`` on packed masks per backend (boxes computed
  on the fly), and on bool masks (packing included). Keep lists must be identical before timing.
- matrix_nms: baseline ``dense_matmul_matrix_nms`` (mmdet's ``mask_matrix_nms`` core on the GEMM IoU) vs
  ``ops.matrix_nms``; decayed scores must agree to 1e-5.
- box_nms on the masks' boxes (torchvision vs ours), for context: what SAM does instead of mask NMS.

Floors: the masks read once (packed words for the packed-input rows, bool bytes for the bool-input rows
and the dense baselines, which take bool masks), scores read once, the keep list / decayed scores written
once. Bytes only: the popcounts over each box-overlapping pair are integer work, not counted.
"""
from __future__ import annotations

import importlib
from typing import List

import numpy as np
import torch

from benchmarks.bench_nms import nms_floor
from benchmarks.harness import Floor, Implementation, Row, backend_implementations, compare
from litesam_kernels import ops
from litesam_kernels.ops.bitmask import pack_masks

GPU_CASES = ((1000, 256, 256), (3072, 256, 256), (1000, 1024, 1024))
CPU_CASES = ((256, 112, 112), (512, 100, 100))
IOU_THRESHOLD = 0.7  # SAM's box_nms_thresh
REFERENCE_MAX_PIXELS = 256 * 112 * 112  # the reference is a dense float64 matmul and a Python loop
_mask_nms_module = importlib.import_module("litesam_kernels.ops.mask_nms")


def make_masks(n: int, height: int, width: int, device: torch.device, seed: int = 0):
    """(bool masks (N, H, W), distinct scores (N,)): blobs in random boxes, the last third near-copies."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    originals = n - n // 3
    side = torch.exp(torch.empty(originals, 2).uniform_(np.log(0.05), np.log(0.6), generator=gen))
    size = (side * torch.tensor([height, width])).long().clamp(min=2)
    start = (torch.rand(originals, 2, generator=gen) * (torch.tensor([height, width]) - size)).long()
    noise = torch.rand(originals, 1, 12, 12, generator=gen)
    copy_of = torch.randint(0, originals, (n - originals,), generator=gen)
    size, start = torch.cat([size, size[copy_of]]), torch.cat([start, start[copy_of]])
    noise = torch.cat([noise, noise[copy_of] + 0.15 * torch.rand(n - originals, 1, 12, 12, generator=gen)])
    scores = (torch.randperm(n, generator=gen).float() + 1) / n
    masks = torch.empty(n, height, width, dtype=torch.bool, device=device)
    ys = torch.arange(height, device=device)[:, None]
    xs = torch.arange(width, device=device)[None, :]
    for chunk in torch.arange(n).split(256):  # bounded float memory at 1024^2
        field = torch.nn.functional.interpolate(noise[chunk].to(device), size=(height, width), mode="bilinear")
        y0, x0 = start[chunk, 0].to(device)[:, None, None], start[chunk, 1].to(device)[:, None, None]
        y1, x1 = y0 + size[chunk, 0].to(device)[:, None, None], x0 + size[chunk, 1].to(device)[:, None, None]
        inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
        masks[chunk.to(device)] = (field[:, 0] > 0.5) & inside
    return masks, scores.to(device)


def _dense_iou_sorted(masks: torch.Tensor, scores: torch.Tensor):
    """(order, IoU of the score-ranked masks): one GEMM with fp32 accumulation and output (fp16 inputs on
    CUDA; fp32 on CPU, which has no fast fp16 GEMM); counts are exact below 2**24 pixels. The division is
    done as the ops define it (float64, rounded once to float32) so that keep lists can be compared."""
    order = torch.sort(scores, stable=True, descending=True).indices
    flat = masks[order].flatten(1)
    if masks.is_cuda:
        flat = flat.half()
        inter = torch.mm(flat, flat.T, out_dtype=torch.float32)
    else:
        flat = flat.float()
        inter = flat @ flat.T
    area = flat.sum(1, dtype=torch.float32)
    union = area[:, None] + area[None, :] - inter
    iou = torch.where(union > 0, (inter.double() / union.clamp(min=1).double()).float(), 0.0)
    return order, iou


def dense_matmul_mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """The baseline: dense GEMM IoU, thresholded on the device, then the greedy pass on the host (numpy
    row ORs), i.e. how mask NMS is usually written in torch."""
    order, iou = _dense_iou_sorted(masks, scores)
    suppress = (iou > iou_threshold).triu(1).cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    kept = []
    for i in range(len(order)):
        if not removed[i]:
            kept.append(i)
            removed |= suppress[i]
    return order[torch.tensor(kept, dtype=torch.long, device=masks.device)]


def dense_matmul_matrix_nms(masks: torch.Tensor, scores: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """mmdet's mask_matrix_nms core (gaussian) on the GEMM IoU; scores returned in input order."""
    order, iou = _dense_iou_sorted(masks, scores)
    decay = _mask_nms_module._matrix_decay(iou, None, "gaussian", sigma)
    decayed = torch.empty_like(scores)
    decayed[order] = scores[order] * decay
    return decayed


def _backend_impls(op_name: str, device: torch.device, pixels: int, call) -> List[Implementation]:
    def not_timed(backend: str):
        if backend == "reference" and pixels > REFERENCE_MAX_PIXELS:
            return "reference is a dense float64 matmul and a Python loop: timed only on small cases"
        return None

    return backend_implementations(op_name, device, call, not_timed=not_timed)


def masks_floor(masks: torch.Tensor, scores: torch.Tensor):
    """Floor of reading ``masks`` (bool or packed) and the scores once and writing the output once."""
    inputs = masks.numel() * masks.element_size() + scores.numel() * scores.element_size()
    return lambda output: Floor(bytes_moved=inputs + output.numel() * output.element_size())


def run(device: torch.device, quick: bool = False) -> List[Row]:
    import torchvision

    cases = GPU_CASES if device.type == "cuda" else CPU_CASES
    if quick:
        cases = cases[:1]
    rows: List[Row] = []
    for n, height, width in cases:
        masks, scores = make_masks(n, height, width, device)
        packed = pack_masks(masks)
        boxes = _mask_nms_module.packed_mask_boxes(packed, width)
        shape = f"N={n}, {height}x{width}"
        pixels = n * height * width

        packed_floor, bool_floor = masks_floor(packed, scores), masks_floor(masks, scores)
        impls = _backend_impls("mask_nms", device, pixels, lambda: ops.mask_nms(packed, scores, IOU_THRESHOLD, width=width))
        impls.append(Implementation("litesam (bool input, packing included)",
                                    lambda: ops.mask_nms(masks, scores, IOU_THRESHOLD), floor=bool_floor))
        rows += compare("mask_nms", shape, masks.dtype, device,
                        Implementation("dense-matmul IoU + greedy",
                                       lambda: dense_matmul_mask_nms(masks, scores, IOU_THRESHOLD), floor=bool_floor),
                        impls, matches=torch.equal,
                        note=f"iou_threshold={IOU_THRESHOLD}; packed input ({packed.numel() * 4 / 1e6:.1f} MB, "
                             f"bool {masks.numel() / 1e6:.0f} MB), boxes on the fly", floor=packed_floor)

        rows += compare("matrix_nms", shape, scores.dtype, device,
                        Implementation("dense-matmul IoU + mmdet decay", lambda: dense_matmul_matrix_nms(masks, scores),
                                       floor=bool_floor),
                        _backend_impls("matrix_nms", device, pixels,
                                       lambda: ops.matrix_nms(packed, scores, width=width)),
                        matches=lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-6), note="gaussian, sigma=2",
                        floor=packed_floor)

        box_floats = boxes.float()
        rows += compare("box_nms (the masks' boxes)", shape, box_floats.dtype, device,
                        Implementation("torchvision", lambda: torchvision.ops.nms(box_floats, scores, IOU_THRESHOLD)),
                        [Implementation("litesam", lambda: ops.nms(box_floats, scores, IOU_THRESHOLD))],
                        matches=torch.equal, note="context: SAM's box NMS on the same masks",
                        floor=nms_floor(box_floats, scores))
    return rows
