"""Peak memory of one generate() call, bounded by segment_anything's own (issue 14, item 4).

Each row is measured in a fresh process by ``benchmarks.bench_memory`` (resident set sampled during the call,
glibc returning large blocks at once; see its docstring), at the benchmark's CI geometry: a 128 input
(8x8 embeddings, 32x32 low-res masks, SAM's 256-channel decoder), 8 points per side, one crop layer, a
512 x 512 photo (SAM's generator upsamples every mask of a point batch to it in float32: what our fused
post-processing never materialises). The 1024 rows (SAM's geometry, 64 points per side) are the benchmark's
``python -m benchmarks.bench_memory``; they take minutes of CPU.

Measured on the shared 2-core machine (MiB beyond the baseline): SAM 337.5, FastSam 31.3, SegEvery 11.1 (its
defaults; 3.8 with one crop per encoder call), SegEvery's eager baseline 33.5. The defaults decode SAM's 64 prompts (points_per_batch)
per decoder call: FastSam's batches_per_decoder_call=1, SegEvery's crops_per_decoder_call=1. More prompts per
call (FastSam's batches_per_decoder_call=4, i.e. 256; SegEvery's crops_per_decoder_call=None, every crop of an
encoder call at once: at SAM's geometry, 256² photo, 8 points per side, one crop layer, 6506 MiB against
SegEvery's default 1574 and SAM's 1805) are throughput knobs that multiply the decoder's working set: at 16 points per side FastSam measured 122.0 MiB with 4 batches per call and 55.6 with one
(SAM 383.9); at SAM's geometry the decoder dominates (1024², 16 points per side: SAM 2249, FastSam 1961 with
one batch per call, 7189 with four).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from benchmarks.bench_memory import measure

CI_CALL = dict(size=512, points_per_side=8, crop_n_layers=1, geometry="ci", device="cpu", timeout=300)
KINDS = ("sam", "fast", "segevery", "segevery_eager")


@pytest.fixture(scope="module")
def rows():
    with ThreadPoolExecutor(max_workers=2) as pool:  # one child process per row, two at a time
        return dict(zip(KINDS, pool.map(lambda kind: measure(kind, **CI_CALL), KINDS)))


def test_the_measurement_sees_each_call(rows):
    for kind, row in rows.items():
        assert row.records > 0 and row.peak_bytes > 0 and row.baseline_bytes > 0, row
        assert row.peak_bytes >= row.sampled_bytes, row


def test_fast_sam_generator_peak_is_not_above_segment_anything(rows):
    assert rows["fast"].peak_bytes <= rows["sam"].peak_bytes, (rows["fast"], rows["sam"])


def test_segevery_peak_is_not_above_segment_anything_nor_its_eager_baseline(rows):
    segevery = rows["segevery"]
    assert segevery.peak_bytes <= rows["sam"].peak_bytes, (segevery, rows["sam"])
    assert segevery.peak_bytes <= rows["segevery_eager"].peak_bytes, (segevery, rows["segevery_eager"])
