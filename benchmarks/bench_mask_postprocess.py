"""SAM AMG post-processing of one point batch: ours vs segment_anything's functions, fp32 and half logits.

Per batch (GPU): 192 masks of 256x256 low-res logits -> 1024x1024 image. segment_anything's path:
``Sam.postprocess_masks`` (two bilinear resizes), ``calculate_stability_score``, threshold,
``batched_mask_to_box``, ``mask_to_rle_pytorch``. Ours: ``postprocess_masks`` (fused) + ``mask_to_rle``
on bool masks, and on bit-packed masks. CPU: 8 masks of 64x64 -> 256x256 (smaller, same code path).
Outputs (RLEs, stability scores, boxes) must be identical to segment_anything's before timing.

Logits in fp32, fp16 and bf16 (what a half-precision mask decoder returns): segment_anything's path runs in
the logits' dtype, as it does on a half model; ours must give the same RLEs, boxes and stability scores.
A second op, ``stability_score``, times SAM's ``calculate_stability_score`` alone on the upscaled logits.

Floors (PERFORMANCE.md): the low-res logits read once and the packed masks written once, plus the RLE runs
(int64), boxes and stability scores; for ``stability_score`` the upscaled logits read once.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from benchmarks.harness import Floor, Implementation, Row, backend_implementations, compare
from litesam_kernels import _backend, ops, use_backend
from litesam_kernels.ops.mask_postprocess import sam_upscale

GPU_CASE = dict(n=192, low=256, image_size=1024, input_size=(1024, 1024), original_size=(1024, 1024))
CPU_CASE = dict(n=8, low=64, image_size=256, input_size=(256, 192), original_size=(300, 225))
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def make_logits(n: int, low: int, device: torch.device, seed: int = 0, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, 8, 8, generator=generator) * 8
    return F.interpolate(noise, (low, low), mode="bilinear", align_corners=False)[:, 0].to(device, dtype)


def sam_path(logits, case):
    from segment_anything.utils import amg

    upscaled = sam_upscale(logits, case["input_size"], case["original_size"], case["image_size"])
    stability = amg.calculate_stability_score(upscaled, 0.0, 1.0)
    masks = upscaled > 0.0
    boxes = amg.batched_mask_to_box(masks)
    return amg.mask_to_rle_pytorch(masks), stability, boxes


def our_path(logits, case, packed: bool, postprocess_backend, rle_backend):
    with use_backend(postprocess_backend):
        result = ops.postprocess_masks(logits, case["input_size"], case["original_size"], packed=packed,
                                       image_size=case["image_size"])
    with use_backend(rle_backend):
        rles = ops.mask_to_rle(result.masks, width=case["original_size"][1] if packed else None)
    return rles, result.stability_scores, result.boxes


def same_scores(got: torch.Tensor, expected: torch.Tensor) -> bool:
    return torch.equal(torch.nan_to_num(got.float(), nan=-1.0), torch.nan_to_num(expected.float(), nan=-1.0))


def same(got, expected) -> bool:
    return got[0] == expected[0] and torch.equal(got[2], expected[2]) and same_scores(got[1], expected[1])


def batch_floor(logits: torch.Tensor, case):
    """Logits read once; packed masks, RLE runs (int64), boxes (4 x int64) and scores (fp32) written once."""
    height, width = case["original_size"]
    n = logits.shape[0]
    fixed = logits.numel() * logits.element_size() + n * height * -(-width // 32) * 4 + n * (4 * 8 + 4)
    return lambda output: Floor(bytes_moved=fixed + 8 * sum(len(rle["counts"]) for rle in output[0]))


def _pairs(device: torch.device):
    """(post-processing backend, RLE backend): the fastest pair per device first."""
    if device.type == "cuda":
        return [("triton", "cuda"), ("triton", "triton"), ("reference", "cuda")]
    return [("cpu", "cpu"), ("reference", "cpu")]


def _batch_rows(logits: torch.Tensor, case, shape: str, device: torch.device) -> List[Row]:
    impls = []
    for postprocess_backend, rle_backend in _pairs(device):
        reason = (_backend.why_not(postprocess_backend, _backend.implementations("postprocess_masks"), device)
                  or _backend.why_not(rle_backend, _backend.implementations("mask_to_rle"), device))
        for packed in (False, True):
            impls.append(Implementation(
                f"litesam (post={postprocess_backend}, rle={rle_backend}{', packed' if packed else ''})",
                lambda packed=packed, p=postprocess_backend, r=rle_backend: our_path(logits, case, packed, p, r),
                reason))
    return compare("amg_postprocess_batch", shape, logits.dtype, device,
                   Implementation("segment_anything", lambda: sam_path(logits, case)), impls, matches=same,
                   note="upsample+stability+threshold+box+RLE", floor=batch_floor(logits, case))


def _stability_rows(logits: torch.Tensor, case, shape: str, device: torch.device) -> List[Row]:
    from segment_anything.utils import amg

    upscaled = sam_upscale(logits, case["input_size"], case["original_size"], case["image_size"])
    floor = Floor(bytes_moved=upscaled.numel() * upscaled.element_size() + upscaled.shape[0] * 4)
    return compare("stability_score", shape, logits.dtype, device,
                   Implementation("segment_anything", lambda: amg.calculate_stability_score(upscaled, 0.0, 1.0)),
                   backend_implementations("stability_score", device,
                                           lambda: ops.stability_score(upscaled, 0.0, 1.0)),
                   matches=same_scores, note="mask_threshold=0, offset=1, on the upscaled logits", floor=floor)


def run(device: torch.device, quick: bool = False) -> List[Row]:
    case = GPU_CASE if device.type == "cuda" else CPU_CASE
    rows: List[Row] = []
    for dtype in DTYPES[:1] if quick and device.type != "cuda" else DTYPES:
        logits = make_logits(case["n"], case["low"], device, dtype=dtype)
        shape = (f"{case['n']} masks {case['low']}^2 -> {case['image_size']}^2, crop {case['input_size']}, "
                 f"out {case['original_size']}")
        rows += _batch_rows(logits, case, shape, device)
        rows += _stability_rows(logits, case, f"{case['n']} masks {case['original_size']}", device)
    return rows
