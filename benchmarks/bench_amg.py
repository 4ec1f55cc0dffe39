"""Full ``generate()``: litesam_kernels' FastSamAutomaticMaskGenerator vs segment_anything's
SamAutomaticMaskGenerator, same model, same image, same arguments, on the current device.

GPU: SAM ViT-B with random weights (``build_sam_vit_b(checkpoint=None)``) on a 1024x768 synthetic scene,
32x32 points, at SAM's default thresholds and at permissive ones (random weights give few confident
masks; the permissive row makes post-processing, NMS and RLE carry real load), with and without
``min_mask_region_area``; then the drop-in with the model in bfloat16 and float16 (segment-anything-fast
style ``model.to(dtype)``; segment_anything itself cannot run a half model: its baseline is its float32
run, and the records are checked to be close to it, see ``tests/_half.py``). CPU: the tiny random Sam of
the tests on a 96x128 scene (a ViT-B on CPU takes minutes per image); the row note says so. Each float32
row records whether the records were identical.

The helpers here (record comparison, whole-call timing, the row pair) serve ``bench_sam2_amg`` too.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable, List

import numpy as np
import torch

from benchmarks.harness import Row, device_name, synchronize

PERMISSIVE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.5)
HALF_DTYPES = (torch.bfloat16, torch.float16)


def records_equal(expected, got, score_tol=1e-4) -> bool:
    """Identical records (scores within ``score_tol``)."""
    if len(expected) != len(got):
        return False
    for e, g in zip(expected, got):
        for key, value in e.items():
            other = g[key]
            if key in ("predicted_iou", "stability_score"):
                if not ((math.isnan(value) and math.isnan(other)) or abs(value - other) <= score_tol):
                    return False
            elif isinstance(value, np.ndarray):
                if not np.array_equal(value, other):
                    return False
            elif value != other:
                return False
    return True


def records_close(expected, got) -> bool:
    """Half-precision records against float32 ones: every record matched, median mask IoU >= 0.9 (the
    tests' measure, ``tests/_half.py``; their measured values are far inside this)."""
    from tests._half import compare_records

    if not expected:
        return not got
    report = compare_records(expected, got)
    return report["matched"] >= 0.95 and report["median_mask_iou"] >= 0.9


def time_calls(fn, device: torch.device, reps: int):
    """(median, p20, p80) ms of whole generate() calls (100 ms to seconds each: a few timed calls after the
    warm-up call that already ran, each fenced by a device synchronisation)."""
    samples = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(q * (len(samples) - 1) + 0.5))]  # noqa: E731
    return pick(0.5), pick(0.2), pick(0.8)


def generator_rows(op: str, shape: str, dtype: str, device: torch.device, baseline: str, baseline_fn: Callable,
                   implementation: str, fn: Callable, matches: Callable, note: str, reps: int,
                   baseline_timing=None) -> List[Row]:
    """The baseline row (unless its timing is given) and ours, after checking ours against the baseline's
    records: a mismatch is reported and not timed."""
    dev = device_name(device)
    expected, got = baseline_fn(), fn()
    base = baseline_timing or time_calls(baseline_fn, device, reps)
    rows = [] if baseline_timing else [Row(op, baseline, shape, dtype, dev, *base, baseline, base[0], 1.0, True, note)]
    if not matches(expected, got):
        rows.append(Row(op, implementation, shape, dtype, dev, None, None, None, baseline, base[0], None, False,
                        "records differ from the baseline's: not timed"))
        return rows
    mine = time_calls(fn, device, reps)
    rows.append(Row(op, implementation, shape, dtype, dev, *mine, baseline, base[0],
                    base[0] / mine[0] if mine[0] > 0 else None, True, note))
    return rows


def _cases(device: torch.device, quick: bool):
    if device.type == "cuda":
        from segment_anything import build_sam_vit_b

        from tests.tiny_sam import scene

        torch.manual_seed(0)
        model = build_sam_vit_b(checkpoint=None).to(device).eval()
        image = scene(768, 1024, seed=0)
        note = "SAM ViT-B random weights, 1024x768 image, 32x32 points"
        configs = [("defaults", {}), ("permissive", PERMISSIVE),
                   ("permissive+min_area", dict(PERMISSIVE, stability_score_thresh=0.8, min_mask_region_area=100))]
        kwargs = dict(points_per_side=32, output_mode="uncompressed_rle")
    else:
        from tests.tiny_sam import scene, tiny_sam

        model = tiny_sam().to(device)
        image = scene()
        note = "CPU: tiny random Sam (2-block ViT, 128 px input) on a 96x128 image, 8x8 points; not SAM ViT-B"
        configs = [("permissive", dict(pred_iou_thresh=-1.0, stability_score_thresh=0.2, box_nms_thresh=0.98)),
                   ("permissive+min_area", dict(pred_iou_thresh=-1.0, stability_score_thresh=0.2,
                                                box_nms_thresh=0.98, min_mask_region_area=40))]
        kwargs = dict(points_per_side=8, points_per_batch=16, output_mode="uncompressed_rle")
    if quick:
        configs = configs[:1]
    return model, image, note, configs, kwargs


def run(device: torch.device, quick: bool = False) -> List[Row]:
    from segment_anything import SamAutomaticMaskGenerator

    from litesam_kernels.amg import FastSamAutomaticMaskGenerator

    model, image, note, configs, kwargs = _cases(device, quick)
    reps = 3 if quick or device.type != "cuda" else 5
    rows: List[Row] = []
    for name, config in configs:
        theirs = SamAutomaticMaskGenerator(model, **kwargs, **config)
        ours = FastSamAutomaticMaskGenerator(model, **kwargs, **config)
        expected = theirs.generate(image)
        shape = f"{image.shape[1]}x{image.shape[0]} image, {name}, {len(expected)} records"
        rows += generator_rows("amg_generate", shape, "float32", device, "segment_anything",
                               lambda: theirs.generate(image), "litesam-FastSamAutomaticMaskGenerator",
                               lambda: ours.generate(image), records_equal, note, reps)
        if name != "permissive" or (quick and device.type != "cuda"):
            continue
        baseline_timing = (rows[-2].median_ms, rows[-2].p20_ms, rows[-2].p80_ms)
        for dtype in HALF_DTYPES:
            half = FastSamAutomaticMaskGenerator(copy.deepcopy(model).to(dtype), **kwargs, **config)
            rows += generator_rows(
                "amg_generate", shape, str(dtype).replace("torch.", ""), device, "segment_anything (float32)",
                lambda: theirs.generate(image), "litesam-FastSamAutomaticMaskGenerator",
                lambda h=half: h.generate(image), records_close,
                note + "; model.to(dtype) (segment_anything cannot run it): records close to float32's", reps,
                baseline_timing=baseline_timing)
    return rows
