"""How far records of a half-precision pipeline are from the float32 run's (the measure the half-precision
tests bound).

In float16/bfloat16 the logits carry ~3 significant digits: masks differ at pixels whose logit is within a
rounding of the threshold (mask boundaries), scores by ~1e-2, and a candidate near a threshold or an NMS
decision can go either way, which also reorders records. So the tests open the thresholds (no score filter,
no NMS: the candidate sets correspond one to one), match every float32 record to a half-precision record that
came from the same prompt point (exactly equal ``point_coords``; else any) with the highest mask IoU, each
used once, and bound: the fraction of records matched, the mask IoU of matched pairs (median; min over
masks of at least 1% of the image: a 12-pixel mask that gains 5 pixels has IoU 0.7, meaningless), the
pixels on which matched masks disagree (max, as a fraction of the image), and the score differences of
matched pairs (max).
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from litesam_kernels.engine.records import segmentation_to_mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def compare_records(reference: List[Dict], candidate: List[Dict]) -> Dict[str, float]:
    masks = [segmentation_to_mask(r["segmentation"]) for r in candidate]
    used = [False] * len(candidate)
    ious, large_ious, disagree, iou_deltas, stability_deltas = [], [], [], [], []
    for record in reference:
        mask = segmentation_to_mask(record["segmentation"])
        same_point = [j for j, c in enumerate(candidate) if not used[j] and c["point_coords"] == record["point_coords"]]
        pool = same_point or [j for j in range(len(candidate)) if not used[j]]
        if not pool:
            continue
        scores = [_iou(mask, masks[j]) for j in pool]
        best = pool[int(np.argmax(scores))]
        used[best] = True
        ious.append(max(scores))
        if mask.sum() >= 0.01 * mask.size:
            large_ious.append(max(scores))
        disagree.append(float(np.logical_xor(mask, masks[best]).sum() / mask.size))
        iou_deltas.append(abs(record["predicted_iou"] - candidate[best]["predicted_iou"]))
        a, b = record["stability_score"], candidate[best]["stability_score"]
        stability_deltas.append(0.0 if (np.isnan(a) and np.isnan(b)) else abs(a - b))
    return {
        "records": len(reference), "candidate_records": len(candidate),
        "matched": len(ious) / max(1, len(reference)),
        "min_mask_iou_large": min(large_ious, default=1.0), "median_mask_iou": float(np.median(ious)) if ious else 1.0,
        "p10_mask_iou": float(np.percentile(ious, 10)) if ious else 1.0,
        "max_pixels_differ": max(disagree, default=0.0),
        "p90_pixels_differ": float(np.percentile(disagree, 90)) if disagree else 0.0,
        "max_predicted_iou_delta": max(iou_deltas, default=0.0),
        "max_stability_delta": float(np.nanmax(stability_deltas)) if stability_deltas else 0.0,
    }


def assert_field_types(records: List[Dict]) -> None:
    """Record fields are Python ints / floats (what json.dumps and numpy-free users need)."""
    for record in records:
        assert type(record["area"]) is int
        assert type(record["predicted_iou"]) is float and type(record["stability_score"]) is float
        assert all(type(v) in (int, float) for v in record["bbox"] + record["crop_box"])
        assert all(type(v) is float for v in record["point_coords"][0])


def assert_within(report: Dict[str, float], bounds: Dict[str, float]) -> None:
    """Every bound holds: ``min_*`` / ``median_*`` / ``p10_*`` / ``matched`` are lower bounds, the rest upper."""
    for key, bound in bounds.items():
        value = report[key]
        lower = key.startswith(("min_", "median_", "p10_", "matched"))
        assert (value >= bound) if lower else (value <= bound), f"{key} = {value} (bound {bound}); report {report}"
