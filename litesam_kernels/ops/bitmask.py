"""The bit-packed mask layout shared by every mask op (post-processing, RLE, mask NMS).

Layout: a boolean mask stack ``(..., H, W)`` is packed along W into int32 words, **LSB first**:
bit ``b`` of word ``k`` in row ``y`` is pixel ``(y, 32 * k + b)``. The packed tensor has shape
``(..., H, ceil(W / 32))``, dtype int32 (read the bits as uint32: bit 31 is the sign bit), C-contiguous,
and the padding bits past W in the last word of each row are zero. The width is not stored: carry W
alongside (every op taking packed masks also takes the original ``width`` or ``(H, W)``).
32x less memory than bool masks; intersections are AND + popcount.
"""
from __future__ import annotations

import torch

from litesam_kernels._checks import check_real, check_tensor

BITS_PER_WORD = 32


def packed_width(width: int) -> int:
    """Words per packed row for a mask of ``width`` pixels."""
    return (int(width) + BITS_PER_WORD - 1) // BITS_PER_WORD


def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """Pack a bool ``(..., H, W)`` mask stack into the int32 ``(..., H, ceil(W/32))`` layout above."""
    check_tensor("masks", masks, dtypes=(torch.bool,), expected="(..., H, W) bool")
    if masks.dim() < 2:
        raise ValueError(f"masks must have at least 2 dims (..., H, W), got shape {tuple(masks.shape)}")
    width = masks.shape[-1]
    words = packed_width(width)
    padded = torch.nn.functional.pad(masks.to(torch.int64), (0, words * BITS_PER_WORD - width))
    weights = torch.bitwise_left_shift(
        torch.ones(BITS_PER_WORD, dtype=torch.int64, device=masks.device),
        torch.arange(BITS_PER_WORD, dtype=torch.int64, device=masks.device),
    )
    unsigned = (padded.unflatten(-1, (words, BITS_PER_WORD)) * weights).sum(-1)
    return torch.where(unsigned >= 2**31, unsigned - 2**32, unsigned).to(torch.int32).contiguous()


def unpack_masks(packed: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_masks`: int32 ``(..., H, ceil(W/32))`` -> bool ``(..., H, W)``."""
    check_tensor("packed", packed, dtypes=(torch.int32,), expected="(..., H, ceil(W/32)) int32")
    width = int(check_real("width", width, low=0))
    if packed.dim() < 2 or packed.shape[-1] != packed_width(width):
        raise ValueError(
            f"packed must have shape (..., H, {packed_width(width)}) for width={width}, got {tuple(packed.shape)}"
        )
    shifts = torch.arange(BITS_PER_WORD, dtype=torch.int32, device=packed.device)
    bits = torch.bitwise_and(torch.bitwise_right_shift(packed.unsqueeze(-1), shifts), 1).to(torch.bool)
    return bits.flatten(-2)[..., :width].contiguous()
