"""mask_to_rle: every runnable implementation vs segment_anything's mask_to_rle_pytorch (per-mask syncs).

GPU: 192 blob masks of 1024x1024 (one SAM point batch). CPU: 32 masks of 256x192.
Floor: the masks read once (bool bytes, or the packed words for the packed-input rows) and every run
length written once as an int64."""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from benchmarks.harness import Floor, Implementation, Row, backend_implementations, compare
from litesam_kernels import ops
from litesam_kernels.ops.bitmask import pack_masks

GPU_SHAPE = (192, 1024, 1024)
CPU_SHAPE = (32, 256, 192)


def make_masks(n: int, height: int, width: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, 8, 8, generator=generator)
    return (F.interpolate(noise, (height, width), mode="bilinear", align_corners=False)[:, 0] > 0.5).to(device)


def rle_floor(masks: torch.Tensor):
    """Floor of reading ``masks`` (bool or packed) once and writing the runs of the RLEs as int64."""
    inputs = masks.numel() * masks.element_size()
    return lambda rles: Floor(bytes_moved=inputs + 8 * sum(len(rle["counts"]) for rle in rles))


def run(device: torch.device, quick: bool = False) -> List[Row]:
    from segment_anything.utils.amg import mask_to_rle_pytorch

    n, height, width = GPU_SHAPE if device.type == "cuda" else CPU_SHAPE
    masks = make_masks(n, height, width, device)
    packed = pack_masks(masks)
    impls = backend_implementations("mask_to_rle", device, lambda: ops.mask_to_rle(masks))
    impls += backend_implementations("mask_to_rle", device, lambda: ops.mask_to_rle(packed, width=width),
                                     label=" (packed)", floor=rle_floor(packed))
    return compare("mask_to_rle", f"{n}x{height}x{width}", masks.dtype, device,
                   Implementation("segment_anything", lambda: mask_to_rle_pytorch(masks)), impls,
                   matches=lambda a, b: a == b, floor=rle_floor(masks))
