"""mask_to_rle: every runnable implementation vs segment_anything's mask_to_rle_pytorch (per-mask syncs).

GPU: 192 blob masks of 1024x1024 (one SAM point batch). CPU: 32 masks of 256x192."""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from benchmarks.harness import Implementation, Row, backend_implementations, compare
from litesam_kernels import ops
from litesam_kernels.ops.bitmask import pack_masks

GPU_SHAPE = (192, 1024, 1024)
CPU_SHAPE = (32, 256, 192)


def make_masks(n: int, height: int, width: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, 8, 8, generator=generator)
    return (F.interpolate(noise, (height, width), mode="bilinear", align_corners=False)[:, 0] > 0.5).to(device)


def run(device: torch.device, quick: bool = False) -> List[Row]:
    from segment_anything.utils.amg import mask_to_rle_pytorch

    n, height, width = GPU_SHAPE if device.type == "cuda" else CPU_SHAPE
    masks = make_masks(n, height, width, device)
    packed = pack_masks(masks)
    impls = backend_implementations("mask_to_rle", device, lambda: ops.mask_to_rle(masks))
    impls += backend_implementations("mask_to_rle", device, lambda: ops.mask_to_rle(packed, width=width),
                                     label=" (packed)")
    return compare("mask_to_rle", f"{n}x{height}x{width}", masks.dtype, device,
                   Implementation("segment_anything", lambda: mask_to_rle_pytorch(masks)), impls,
                   matches=lambda a, b: a == b)
