"""engine.mask_runs: a crop's candidate masks stored as runs of equal packed words, lossless, with the
sizes the pipeline reads on the host given to it (nothing here waits)."""
import pytest
import torch

from litesam_kernels.engine.mask_runs import (MaskRuns, compact_masks, pack_runs, run_starts, runs_nbytes,
                                              take_masks, unpack_runs)
from litesam_kernels.ops.bitmask import pack_masks


def _masks(n, h, w, seed=0):
    """Empty, full, blobs (discs) and noise masks, packed."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            m = torch.zeros(h, w, dtype=torch.bool)
        elif kind == 1:
            m = torch.ones(h, w, dtype=torch.bool)
        elif kind == 2:
            cy, cx, r = (torch.rand(3, generator=g) * torch.tensor([h, w, max(h, w) / 2])).tolist()
            m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        else:
            m = torch.rand(h, w, generator=g) < 0.5
        masks.append(m)
    return pack_masks(torch.stack(masks)) if n else torch.zeros(0, h, (w + 31) // 32, dtype=torch.int32)


def _runs(packed):
    starts = run_starts(packed)
    return pack_runs(packed, starts, int(starts.sum()))


class TestMaskRuns:
    @pytest.mark.parametrize("n,h,w", [(0, 5, 40), (1, 1, 1), (9, 37, 70), (8, 64, 64), (5, 3, 33)])
    def test_round_trip_is_exact(self, n, h, w):
        packed = _masks(n, h, w)
        runs = _runs(packed)
        assert len(runs) == n and runs.shape == tuple(packed.shape[1:])
        for index in (torch.arange(n), torch.arange(n).flip(0), torch.zeros(0, dtype=torch.long),
                      torch.tensor([n - 1, 0, n - 1]) if n else torch.zeros(0, dtype=torch.long)):
            assert torch.equal(unpack_runs(runs, index), packed[index])

    def test_run_counts(self):
        packed = _masks(4, 32, 96)  # empty, full, a disc, noise
        counts = _runs(packed).counts.tolist()
        assert counts[0] == 1 and counts[1] == 1  # one run each: a word repeated
        assert 1 < counts[2] <= 4 * 32 + 1  # a blob: about four runs per row it covers
        assert counts[3] > 32 * 3 * 0.9  # noise: nearly every word starts a run

    def test_take_masks_is_cat_then_index(self):
        """The crop NMS's gather over the decoder calls' parts, packed and runs mixed, without concatenating."""
        packed = [_masks(n, 12, 40, seed=n) for n in (3, 0, 5, 1)]
        want = torch.cat(packed)
        for index in (torch.tensor([7, 2, 3]), torch.arange(9).flip(0), torch.zeros(0, dtype=torch.long)):
            parts = [_runs(p) if i % 2 else p for i, p in enumerate(packed)]
            got = take_masks(parts, index)
            assert torch.equal(got, want[index]) and got.dtype == torch.int32 and parts == []

    def test_compact_masks_keeps_the_smaller_form(self):
        smooth = _masks(3, 64, 1024)[:2]  # empty, full
        stored = compact_masks(smooth, run_starts(smooth), int(run_starts(smooth).sum()))
        assert isinstance(stored, MaskRuns) and runs_nbytes(stored) < smooth.numel() * 4 / 100
        noise = _masks(4, 64, 1024)[3:]
        stored = compact_masks(noise, run_starts(noise), int(run_starts(noise).sum()))
        assert stored is noise  # its runs would take about 3x the packed words

    def test_survivor_rows_only(self):
        """pack_runs of selected rows with their own run starts: the pipeline's compaction."""
        packed = _masks(8, 16, 64, seed=5)
        starts = run_starts(packed)
        rows = torch.tensor([1, 2, 6])
        runs = pack_runs(packed[rows], starts[rows], int(starts[rows].sum()))
        assert torch.equal(unpack_runs(runs, torch.arange(3)), packed[rows])

    def test_storage(self):
        """Empty and full masks take one run, a disc a few per row, noise at most 3x the packed words."""
        h, w = 1024, 1024
        packed = _masks(4, h, w, seed=1)
        words = h * w // 32 * 4  # bytes of one packed mask
        sizes = [runs_nbytes(_runs(packed[i:i + 1])) for i in range(4)]
        assert sizes[0] == sizes[1] == 12 + 8
        assert sizes[2] < words / 3
        assert sizes[3] <= 3 * words + 8
