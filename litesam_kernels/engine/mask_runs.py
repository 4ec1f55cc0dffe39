"""A crop's candidate masks between its decoder calls and its NMS: bit-packed masks stored as runs of equal
32-bit words.

Bit-packed masks (``ops.bitmask``: ``(n, h, ceil(w / 32))`` int32) cost ``h * w / 8`` bytes each whatever
they show: 128 KB at 1024², and a crop of SAM's 64 x 64 point grid makes 12 288 candidates before its NMS
keeps a few of them. segment_anything keeps its candidates as RLE count lists; here each mask's words, in
row-major order, are stored as runs of equal words, 12 bytes a run (the word and the run's start): an empty
or a full mask is one run, a blob about four per row it covers (the zero words between rows merge). The
worst case, no two neighbouring words equal (noise), is 3x the packed size. Lossless: :func:`unpack_runs`
returns the packed words exactly.

The sizes that depend on the data (runs of the survivors of a decoder call, of the masks a crop NMS keeps)
are read on the host by the pipeline, in the waits it makes anyway; nothing here waits for the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch


@dataclass
class MaskRuns:
    """``n`` packed masks of one shape ``(h, words)`` as runs of equal words, masks one after the other."""

    words: torch.Tensor  # (R,) int32: each run's word
    keys: torch.Tensor   # (R,) int64: mask index * h * words + the run's first word within its mask (sorted)
    counts: torch.Tensor  # (n,) int64: runs per mask (>= 1)
    shape: Tuple[int, int]  # (h, words) of every mask

    def __len__(self) -> int:
        return self.counts.shape[0]

    @property
    def words_per_mask(self) -> int:
        return self.shape[0] * self.shape[1]


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
    n, h, words = packed.shape
    where = torch.nonzero_static(starts.reshape(-1), size=total_runs).squeeze(1)  # mask-major, sorted
    return MaskRuns(packed.reshape(-1)[where], where, starts.sum(1), (h, words))


def cat_runs(parts: Sequence[MaskRuns]) -> MaskRuns:
    """The masks of every part, in order (parts of one shape)."""
    shape = parts[0].shape
    if any(p.shape != shape for p in parts):
        raise ValueError(f"cat_runs takes masks of one shape, got {sorted({p.shape for p in parts})}")
    offsets, masks = [], 0
    for part in parts:
        offsets.append(masks * parts[0].words_per_mask)
        masks += len(part)
    return MaskRuns(torch.cat([p.words for p in parts]), torch.cat([p.keys + o for p, o in zip(parts, offsets)]),
                    torch.cat([p.counts for p in parts]), shape)


def empty_runs(shape: Tuple[int, int], device) -> MaskRuns:
    return MaskRuns(torch.zeros(0, dtype=torch.int32, device=device), torch.zeros(0, dtype=torch.long, device=device),
                    torch.zeros(0, dtype=torch.long, device=device), tuple(shape))


def _first_runs(counts: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(counts, 0) - counts


def take_runs(runs: MaskRuns, index: torch.Tensor, total_runs: int) -> MaskRuns:
    """The masks ``index`` (on the device) as a new :class:`MaskRuns`; ``total_runs`` is
    ``runs.counts[index].sum()``, read on the host by the caller."""
    counts = runs.counts[index]
    device = counts.device
    mask_of_run = torch.repeat_interleave(torch.arange(counts.shape[0], device=device), counts,
                                          output_size=total_runs)
    source = (_first_runs(runs.counts)[index] - _first_runs(counts))[mask_of_run] + torch.arange(total_runs, device=device)
    step = runs.words_per_mask
    keys = runs.keys[source] + (mask_of_run - index[mask_of_run]) * step
    return MaskRuns(runs.words[source], keys, counts, runs.shape)


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


__all__: List[str] = ["MaskRuns", "cat_runs", "empty_runs", "pack_runs", "run_starts", "runs_nbytes", "take_runs",
                      "unpack_runs"]
