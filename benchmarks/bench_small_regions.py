"""remove_small_regions (holes then islands, SAM1's min_mask_region_area pass) on a stack of masks:
every runnable implementation vs segment_anything's per-mask OpenCV loop (masks copied to the host, as
SamAutomaticMaskGenerator.postprocess_small_regions has them). Blob-like masks with pixel noise, so
both small holes and small islands exist. GPU: 64 and 256 masks of 1024x1024; CPU: 16 masks of 256x256.
Floor: the masks read once and the cleaned masks and per-mask flags written once (one fused pass for both
modes; the labelling's own scratch traffic is not counted)."""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from benchmarks.harness import Floor, Implementation, Row, backend_implementations, compare
from litesam_kernels import ops

GPU_CASES = ((64, 1024, 1024), (256, 1024, 1024))
CPU_CASES = ((16, 256, 256),)
AREA = 100


def make_masks(n: int, h: int, w: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, h // 32, w // 32, generator=generator)
    field = F.interpolate(low, (h, w), mode="bilinear", align_corners=False)[:, 0]
    return (field + 0.25 * torch.rand(n, h, w, generator=generator) > 0.6).to(device)


def _segment_anything(masks: torch.Tensor):
    from segment_anything.utils.amg import remove_small_regions

    out, changed = [], []
    for mask in masks.cpu().numpy():
        mask, holes = remove_small_regions(mask, AREA, "holes")
        mask, islands = remove_small_regions(mask, AREA, "islands")
        out.append(torch.as_tensor(mask))
        changed.append(holes or islands)
    return torch.stack(out), torch.tensor(changed)


def _ours(masks: torch.Tensor):
    out, holes = ops.remove_small_regions(masks, AREA, "holes")
    out, islands = ops.remove_small_regions(out, AREA, "islands")
    return out, holes | islands


def _matches(got, expected) -> bool:
    return torch.equal(got[0].cpu(), expected[0]) and torch.equal(got[1].cpu(), expected[1])


def run(device: torch.device, quick: bool = False) -> List[Row]:
    cases = GPU_CASES if device.type == "cuda" else CPU_CASES
    if quick:
        cases = cases[:1]
    rows: List[Row] = []
    for n, h, w in cases:
        masks = make_masks(n, h, w, device)
        impls = backend_implementations(
            "remove_small_regions", device, lambda: _ours(masks),
            not_timed=lambda backend: ("the reference is a label-propagation loop: not timed on CPU"
                                       if backend == "reference" and device.type != "cuda" else None),
        )
        rows += compare("remove_small_regions", f"{n}x{h}x{w}, holes+islands, area<{AREA}", torch.bool, device,
                        Implementation("segment_anything (cv2, per mask)", lambda: _segment_anything(masks)),
                        impls, matches=_matches, floor=Floor(bytes_moved=2 * masks.numel() + n))
    return rows
