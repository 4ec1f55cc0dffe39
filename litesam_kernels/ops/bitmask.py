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

from litesam_kernels._checks import check_int, check_tensor

BITS_PER_WORD = 32


def packed_width(width: int) -> int:
    """Words per packed row for a mask of ``width`` pixels."""
    return (int(width) + BITS_PER_WORD - 1) // BITS_PER_WORD


def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """Pack a bool ``(..., H, W)`` mask stack into the int32 ``(..., H, ceil(W/32))`` layout above.

    Works on the bytes of the bool tensor (one byte per pixel, 0 or 1): eight pixels read as one int64
    (little endian: pixel k in byte k) are gathered into its low byte by three shift-or steps, and four
    such bytes are one LSB-first int32 word. Temporaries are one int64 per 8 pixels (the size of the
    input), not one int64 per pixel."""
    check_tensor("masks", masks, dtypes=(torch.bool,), expected="(..., H, W) bool")
    if masks.dim() < 2:
        raise ValueError(f"masks must have at least 2 dims (..., H, W), got shape {tuple(masks.shape)}")
    words = packed_width(masks.shape[-1])
    if masks.numel() == 0:
        return torch.zeros((*masks.shape[:-1], words), dtype=torch.int32, device=masks.device)
    eight_pixels = _padded_bytes(masks, words * BITS_PER_WORD).view(torch.int64)
    # byte j += pixel j+1 at bit 1, then pixels j+2, j+3 at bits 2-3, then j+4..j+7 at bits 4-7: byte 0 of
    # every int64 ends up holding its 8 pixels (the higher bytes hold partial copies, dropped by the cast).
    gathered = eight_pixels >> 7
    gathered |= eight_pixels
    gathered |= gathered >> 14
    gathered |= gathered >> 28
    return gathered.to(torch.uint8).view(torch.int32).view(*masks.shape[:-1], words)


def _padded_bytes(masks: torch.Tensor, padded_width: int) -> torch.Tensor:
    """uint8 ``(..., H, padded_width)``: the masks' bytes, zero padding past W, 8-byte aligned rows."""
    width = masks.shape[-1]
    if padded_width == width and masks.is_contiguous() and masks.storage_offset() % 8 == 0:
        return masks.view(torch.uint8)
    padded = torch.zeros((*masks.shape[:-1], padded_width), dtype=torch.uint8, device=masks.device)
    padded[..., :width] = masks.to(torch.uint8)
    return padded


def unpack_masks(packed: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_masks`: int32 ``(..., H, ceil(W/32))`` -> bool ``(..., H, W)``."""
    check_tensor("packed", packed, dtypes=(torch.int32,), expected="(..., H, ceil(W/32)) int32")
    width = check_int("width", width, low=0)
    if packed.dim() < 2 or packed.shape[-1] != packed_width(width):
        raise ValueError(
            f"packed must have shape (..., H, {packed_width(width)}) for width={width}, got {tuple(packed.shape)}"
        )
    if packed.numel() == 0:
        return torch.zeros((*packed.shape[:-1], width), dtype=torch.bool, device=packed.device)
    # The packing steps reversed: each byte (8 pixels) spread to one int64 with pixel k in byte k.
    spread = packed.contiguous().view(torch.uint8).to(torch.int64)
    spread = (spread | (spread << 28)) & 0x0000000F0000000F
    spread = (spread | (spread << 14)) & 0x0003000300030003
    spread = (spread | (spread << 7)) & 0x0101010101010101
    return spread.view(torch.uint8).view(torch.bool)[..., :width].contiguous()
