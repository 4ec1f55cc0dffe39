"""``litesam-eval CHECKPOINT --images DIR``: how good a trained Lite-SAM is, and how fast its SegEvery runs.

Against the teacher (``--teacher ...``, or a mask cache made by ``litesam-train ppn``/``finetune`` with
``--cache-dir``): every teacher mask is matched to the predicted mask of largest IoU (both at the cache's
resolution, ``image_size / 2`` on the longer side); **mask recall@t** is the fraction of teacher masks whose
best IoU is >= t, **mean IoU** the mean of those best IoUs (0 for a mask nothing overlaps).
Against annotations (``--coco ANNOTATIONS.json``): pycocotools' ``COCOeval`` with ``iouType="segm"``,
class-agnostic (``useCats = 0``: SegEvery has no classes), on the images whose ``file_name`` (relative path
or base name) is under ``--images``; scores are the predicted IoUs.
Speed: SegEvery (``SegmentEverything.generate``, one image per call, records on the host) wall time per
image, median and mean over all images but the first (warm-up).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from litesam_kernels.train import prepare, sources
from litesam_kernels.train.cache import CacheMismatchError, downsample_masks
from litesam_kernels.train.data import ImageFolder
from litesam_kernels.train.dist import Distributed
from litesam_kernels.train.teacher import TeacherSpec

IOU_THRESHOLDS = (0.5, 0.75)
COCO_STATS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR_1", "AR_10", "AR_max", "AR_small",
              "AR_medium", "AR_large")


def _masks(records: List[Dict[str, Any]], height: int, width: int) -> torch.Tensor:
    if not records:
        return torch.zeros((0, height, width), dtype=torch.bool)
    return torch.from_numpy(np.stack([np.asarray(r["segmentation"], dtype=bool) for r in records]))


def best_ious(teacher: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """For each of the (Nt, h, w) teacher masks, its largest IoU with the (Np, h, w) predicted ones."""
    from litesam_kernels.ops import mask_iou

    if teacher.shape[0] == 0:
        return torch.zeros(0)
    if predicted.shape[0] == 0:
        return torch.zeros(teacher.shape[0])
    return mask_iou(teacher.contiguous(), predicted.contiguous()).amax(1)


def segment_images(model, images: ImageFolder, segment_options: Dict[str, Any]):
    """Yields (index, image, records, seconds) for every image, SegEvery on one image per call."""
    from litesam_kernels.segment_everything import SegmentEverything

    generator = SegmentEverything(model, batch_size=1, output_mode="binary_mask", **segment_options)
    for index in range(len(images)):
        image = images.load(index)
        start = time.perf_counter()
        records = generator.generate(image)[0]
        yield index, image, records, time.perf_counter() - start


def evaluate(checkpoint: str, image_dir: str, *, teacher: Optional[TeacherSpec] = None,
             cache_dir: Optional[str] = None, generator_options: Optional[Dict[str, Any]] = None,
             max_masks: int = 100, coco: Optional[str] = None, max_dets: int = 100,
             segment_options: Optional[Dict[str, Any]] = None, device: str = "auto") -> Dict[str, Any]:
    """The report (a JSON-able dict) for ``checkpoint`` on the images under ``image_dir``; see the module
    docstring. ``teacher`` / ``cache_dir``: compare with the teacher's masks (the cache is built where
    missing); ``coco``: COCO segm metrics against that annotation file. Both may be given."""
    from litesam_kernels.model import LiteSAM

    dist = Distributed()
    device = dist.device(device)
    model = LiteSAM.load(checkpoint).to(device).eval()
    model.image_encoder.fused = True
    images = ImageFolder(image_dir, sources.find_images(image_dir))
    report: Dict[str, Any] = {"checkpoint": str(checkpoint), "images": len(images)}
    cache = None
    if teacher is not None or cache_dir is not None:
        loader = prepare.TeacherLoader(teacher, device, model.config.image_size)
        cache = prepare.mask_cache(Path(cache_dir), images, loader, generator_options or {},
                                   model.config.image_size // 2, max_masks)
        prepare.build_masks(cache, images, loader, dist)
        loader.release()
    matcher = _CocoMatcher(coco, images.names) if coco is not None else None
    seconds, ious, predicted_count = [], [], 0
    for index, image, records, elapsed in segment_images(model, images, segment_options or {}):
        seconds.append(elapsed)
        predicted_count += len(records)
        if cache is not None:
            entry = cache.read(index)
            predicted = downsample_masks(_masks(records, *image.shape[:2]), tuple(entry["masks"].shape[-2:]))
            ious.append(best_ious(entry["masks"], predicted))
        if matcher is not None:
            matcher.add(index, records)
    timed = seconds[1:] or seconds
    report["segment_every_ms_per_image"] = {"median": 1e3 * float(np.median(timed)),
                                            "mean": 1e3 * float(np.mean(timed)), "device": str(device)}
    report["predicted_masks_per_image"] = predicted_count / max(len(images), 1)
    if cache is not None:
        best = torch.cat(ious) if ious else torch.zeros(0)
        report["teacher"] = {"teacher_masks": int(best.numel()), "mean_iou": float(best.mean()) if best.numel() else 0.0,
                             **{f"mask_recall@{t}": float((best >= t).float().mean()) if best.numel() else 0.0
                                for t in IOU_THRESHOLDS}}
    if matcher is not None:
        report["coco"] = matcher.evaluate(max_dets)
    return report


class _CocoMatcher:
    """Predictions of the images that an annotation file knows, and COCOeval over them."""

    def __init__(self, annotations: str, names: Sequence[str]) -> None:
        from pycocotools.coco import COCO

        self.ground_truth = COCO(annotations)
        by_name = {}
        for image in self.ground_truth.dataset["images"]:
            by_name.setdefault(image["file_name"], image["id"])
            by_name.setdefault(Path(image["file_name"]).name, image["id"])
        self.image_ids = {i: by_name.get(name, by_name.get(Path(name).name)) for i, name in enumerate(names)}
        if not any(v is not None for v in self.image_ids.values()):
            raise sources.SourceError(f"no image under --images is named in {annotations!r} (file_name)")
        categories = self.ground_truth.getCatIds()
        self.category = categories[0] if categories else 1
        self.results: List[Dict[str, Any]] = []

    def add(self, index: int, records: List[Dict[str, Any]]) -> None:
        from pycocotools import mask as mask_utils

        image_id = self.image_ids[index]
        if image_id is None:
            return
        for record in records:
            rle = mask_utils.encode(np.asfortranarray(record["segmentation"].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            self.results.append({"image_id": image_id, "category_id": self.category, "segmentation": rle,
                                 "score": float(record["predicted_iou"])})

    def evaluate(self, max_dets: int) -> Dict[str, float]:
        import contextlib
        import io

        from pycocotools.cocoeval import COCOeval

        ids = sorted({v for v in self.image_ids.values() if v is not None})
        if not self.results:
            return {"images": len(ids), **{name: 0.0 for name in COCO_STATS}}
        detections = self.ground_truth.loadRes(self.results)
        evaluator = COCOeval(self.ground_truth, detections, iouType="segm")
        evaluator.params.imgIds = ids
        evaluator.params.useCats = 0
        evaluator.params.maxDets = [1, 10, max_dets]
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return {"images": len(ids), **{name: float(value) for name, value in zip(COCO_STATS, evaluator.stats)}}


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litesam-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a LiteSAM checkpoint (RUN_DIR/checkpoint.pt)")
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of evaluation images")
    parser.add_argument("--out", metavar="REPORT.json", help="write the report here too (it is printed)")
    parser.add_argument("--device", default="auto")
    teacher = parser.add_argument_group("against the teacher's masks")
    teacher.add_argument("--teacher", choices=("sam", "sam2"))
    teacher.add_argument("--teacher-checkpoint", metavar="PATH")
    teacher.add_argument("--teacher-type", default="vit_h")
    teacher.add_argument("--teacher-config")
    teacher.add_argument("--teacher-precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    teacher.add_argument("--cache-dir", metavar="DIR",
                         help="the teacher's mask cache (built where missing; default: beside --out, or ./eval_cache)")
    teacher.add_argument("--max-masks", type=int, default=100)
    for name, kind in (("points-per-side", int), ("points-per-batch", int), ("pred-iou-thresh", float),
                       ("stability-score-thresh", float), ("box-nms-thresh", float), ("min-mask-region-area", int)):
        teacher.add_argument(f"--teacher-{name}", type=kind, help="the teacher's generator option (as in training)")
    coco = parser.add_argument_group("against COCO annotations")
    coco.add_argument("--coco", metavar="ANNOTATIONS.json", help="COCO instances file (segmentation)")
    coco.add_argument("--max-dets", type=int, default=100, help="COCOeval's largest maxDets")
    segment = parser.add_argument_group("Lite-SAM SegEvery (SegmentEverything's arguments)")
    segment.add_argument("--points-per-image", type=int)
    segment.add_argument("--ppn-score-threshold", type=float)
    segment.add_argument("--prompt", choices=("box", "point", "point+box"))
    segment.add_argument("--pred-iou-thresh", type=float)
    segment.add_argument("--stability-score-thresh", type=float)
    segment.add_argument("--box-nms-thresh", type=float)
    segment.add_argument("--nms", choices=("box", "mask"))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.teacher is None and args.coco is None and args.cache_dir is None:
        print("litesam-eval: error: give --teacher (and its checkpoint), --cache-dir of a teacher mask cache, "
              "or --coco ANNOTATIONS.json", file=sys.stderr)
        return 2
    segment_names = ("points_per_image", "ppn_score_threshold", "prompt", "pred_iou_thresh", "stability_score_thresh",
                     "box_nms_thresh", "nms")
    generator_names = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
                       "box_nms_thresh", "min_mask_region_area")
    try:
        spec = None
        if args.teacher is not None:
            spec = TeacherSpec(args.teacher, args.teacher_checkpoint, args.teacher_type, args.teacher_config,
                               args.teacher_precision)
        cache_dir = args.cache_dir
        if cache_dir is None and spec is not None:
            cache_dir = str(Path(args.out).parent / "eval_cache") if args.out else "eval_cache"
        report = evaluate(
            args.checkpoint, args.images, teacher=spec, cache_dir=cache_dir, max_masks=args.max_masks,
            generator_options={n: getattr(args, f"teacher_{n}") for n in generator_names
                               if getattr(args, f"teacher_{n}") is not None},
            coco=args.coco, max_dets=args.max_dets, device=args.device,
            segment_options={n: getattr(args, n) for n in segment_names if getattr(args, n) is not None})
    except (ValueError, CacheMismatchError) as exc:
        print(f"litesam-eval: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
