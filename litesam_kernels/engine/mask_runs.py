"""A crop's candidate masks between its decoder calls and its NMS: bit-packed masks, or runs of equal 32-bit
words where those are smaller.

Bit-packed masks (``ops.bitmask``: ``(n, h, ceil(w / 32))`` int32) cost ``h * w / 8`` bytes each whatever
they show: 128 KB at 1024², and a crop of SAM's 64 x 64 point grid makes 12 288 candidates before its NMS
keeps a few of them. segment_anything keeps its candidates as RLE count lists; here each mask's words, in
row-major order, are stored as runs of equal words, 12 bytes a run (the word and the run's start): an empty
or a full mask is one run, a blob about four per row it covers (the zero words between rows merge). The
worst case, no two neighbouring words equal (texture, noise), is 3x the packed size, so
:func:`compact_masks` keeps each decoder call's survivors in whichever form is smaller. Lossless:
:func:`unpack_runs` returns the packed words exactly.

The sizes that depend on the data (the runs of a decoder call's survivors) are read on the host by the
pipeline in the wait it makes anyway; nothing here waits for the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple, Union

import torch

_RUN_NBYTES = 12  # an int32 word and its int64 key


@dataclass
class MaskRuns:
    """``n`` packed masks of one shape ``(h, words)`` as runs of equal words, masks one after the other."""

    words: torch.Tensor  # (R,) int32: each run's word
    keys: torch.Tensor   # (R,) int64: mask index * h * words + the run's first word within its mask (sorted)
    counts: torch.Tensor  # (n,) int64: runs per mask (>= 1)
    shape: Tuple[int, int]  # (h, words) of every mask

    def __len__(self) -> int:
        return self.counts.shape[0]


def run_starts(packed: torch.Tensor) -> torch.Tensor:
    """``(n, h * words)`` bool: the words that start a run (the first of each mask, and every word unlike
    the one before it). ``run_starts(packed).sum(1)`` is the number of runs per mask."""
    flat = packed.reshape(packed.shape[0], packed.shape[1] * packed.shape[2])
    starts = torch.ones(flat.shape, dtype=torch.bool, device=flat.device)
    starts[:, 1:] = flat[:, 1:] != flat[:, :-1]
    return starts


def pack_runs(packed: torch.Tensor, starts: torch.Tensor, total_runs: int) -> MaskRuns:
    """The runs of ``packed`` ``(n, h, words)``, with ``starts = run_starts(packed)`` and ``total_runs``
    its sum (read on the host by the caller)."""
    _, h, words = packed.shape
    where = torch.nonzero_static(starts.reshape(-1), size=total_runs).squeeze(1)  # mask-major, sorted
    return MaskRuns(packed.reshape(-1)[where], where, starts.sum(1), (h, words))


def unpack_runs(runs: MaskRuns, index: torch.Tensor) -> torch.Tensor:
    """The packed masks ``index`` (any order, repeats allowed): ``(len(index), h, words)`` int32. Each word
    is the word of the last run that starts at or before it (a sorted search over the runs' keys)."""
    h, words = runs.shape
    step = h * words
    positions = (index.to(runs.keys.device)[:, None] * step + torch.arange(step, device=runs.keys.device)).reshape(-1)
    run = torch.searchsorted(runs.keys, positions, right=True) - 1
    return runs.words[run].reshape(index.shape[0], h, words)


def runs_nbytes(runs: MaskRuns) -> int:
    return sum(t.numel() * t.element_size() for t in (runs.words, runs.keys, runs.counts))


def compact_masks(packed: torch.Tensor, starts: torch.Tensor, total_runs: int) -> Union[torch.Tensor, MaskRuns]:
    """The smaller of the packed masks themselves and their runs (``starts = run_starts(packed)``,
    ``total_runs`` its sum, read on the host by the caller): runs for empty, full and smooth masks, the
    packed words for textured ones, so a stored mask never takes more than its packed size."""
    n, h, words = packed.shape
    if total_runs * _RUN_NBYTES + n * 8 >= n * h * words * 4:  # runs and their per-mask counts vs int32 words
        return packed
    return pack_runs(packed, starts, total_runs)


def unpack_all(masks: Union[torch.Tensor, MaskRuns]) -> torch.Tensor:
    """Packed ``(n, h, words)`` masks of a :func:`compact_masks` result."""
    if isinstance(masks, MaskRuns):
        return unpack_runs(masks, torch.arange(len(masks), device=masks.counts.device))
    return masks


def take_masks(parts: List[Union[torch.Tensor, MaskRuns]], index: torch.Tensor) -> torch.Tensor:
    """``torch.cat([unpack_all(p) for p in parts])[index]`` for distinct ``index`` values, without the
    concatenation: each part is unpacked on its own, its rows written to their slot of the result (rows not
    selected to a spare row dropped at the end), and released from ``parts``, which is left empty. The peak
    is the stored parts, one unpacked part and the result; no host wait (the slots are computed on the
    device)."""
    kept = index.shape[0]
    first = unpack_all(parts[0])
    out = first.new_empty((kept + 1, *first.shape[1:]))
    slot = torch.full((sum(len(p) for p in parts),), kept, dtype=torch.long, device=index.device)
    slot[index] = torch.arange(kept, device=index.device)
    start = 0
    while parts:
        part = unpack_all(parts.pop(0))
        out[slot[start:start + part.shape[0]]] = part
        start += part.shape[0]
    return out[:kept]


__all__: List[str] = ["MaskRuns", "compact_masks", "pack_runs", "run_starts", "runs_nbytes", "take_masks",
                      "unpack_all", "unpack_runs"]
