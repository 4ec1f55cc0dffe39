"""Full ``generate()``: litesam_kernels' FastSamAutomaticMaskGenerator vs segment_anything's
SamAutomaticMaskGenerator, same model, same image, same arguments, on the current device.

GPU: SAM ViT-B with random weights (``build_sam_vit_b(checkpoint=None)``) on a 1024x768 synthetic scene,
32x32 points, at SAM's default thresholds and at permissive ones (random weights give few confident
masks; the permissive row makes post-processing, NMS and RLE carry real load), with and without
``min_mask_region_area``. CPU: the tiny random Sam of the tests on a 96x128 scene (a ViT-B on CPU takes
minutes per image); the row note says so. Each row records whether the records were identical."""
from __future__ import annotations

import math
import time
from typing import List

import numpy as np
import torch

from benchmarks.harness import Row, device_name, synchronize

PERMISSIVE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.5)


def _records_equal(expected, got, score_tol=1e-4) -> bool:
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


def _time_calls(fn, device: torch.device, reps: int):
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
    dev = device_name(device)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    rows: List[Row] = []
    for name, config in configs:
        theirs = SamAutomaticMaskGenerator(model, **kwargs, **config)
        ours = FastSamAutomaticMaskGenerator(model, **kwargs, **config)
        expected, got = theirs.generate(image), ours.generate(image)
        same = _records_equal(expected, got)
        shape = f"{image.shape[1]}x{image.shape[0]} image, {name}, {len(expected)} records"
        reps = 3 if quick or device.type != "cuda" else 5
        base = _time_calls(lambda: theirs.generate(image), device, reps)
        mine = _time_calls(lambda: ours.generate(image), device, reps)
        rows.append(Row("amg_generate", "segment_anything", shape, dtype, dev, *base, "segment_anything", base[0], 1.0,
                        True, note))
        rows.append(Row("amg_generate", "litesam-FastSamAutomaticMaskGenerator", shape, dtype, dev, *mine,
                        "segment_anything", base[0], base[0] / mine[0] if mine[0] > 0 else None, same,
                        note if same else note + "; RECORDS DIFFER"))
    return rows
