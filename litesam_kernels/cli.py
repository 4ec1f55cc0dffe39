"""``litesam-segment IMAGE... --out DIR``: Lite-SAM SegEvery on image files.

Writes, per image, ``DIR/<name>.json`` (SAM-AMG records with COCO RLE segmentations) and
``DIR/<name>_overlay.png`` (the masks drawn over the image). Without ``--checkpoint`` the model has random
weights: the run exercises the pipeline but the masks mean nothing (a warning says so).
Also runnable as ``python -m litesam_kernels.cli``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, List, Optional

import numpy as np
import torch

RANDOM_WEIGHTS_WARNING = (
    "WARNING: no --checkpoint given: Lite-SAM runs with RANDOM weights. The masks are meaningless; "
    "this only exercises the pipeline. Pass --checkpoint PATH (written by LiteSAM.save) for real results."
)


def _progress(items: List[Path], enabled: bool) -> Iterable:
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return _plain_progress(items)
    return tqdm(items, unit="image", file=sys.stderr)


def _plain_progress(items: List[Path]):
    for i, item in enumerate(items, start=1):
        print(f"[{i}/{len(items)}] {item}", file=sys.stderr, flush=True)
        yield item


def load_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def overlay(image: np.ndarray, records: List[dict], alpha: float = 0.5, seed: int = 0) -> np.ndarray:
    """The image with each mask tinted a random colour, largest first so small masks stay visible."""
    from litesam_kernels.segment_everything import rle_to_mask

    canvas = image.astype(np.float32)
    colours = np.random.default_rng(seed).integers(40, 256, size=(len(records), 3))
    for record, colour in sorted(zip(records, colours), key=lambda rc: -rc[0]["area"]):
        mask = rle_to_mask(record["segmentation"])
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colour
    return canvas.clip(0, 255).astype(np.uint8)


def _output_stem(path: Path, used: set) -> str:
    stem, n = path.stem, 1
    while stem in used:
        n += 1
        stem = f"{path.stem}_{n}"
    used.add(stem)
    return stem


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litesam-segment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (anything PIL reads)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--checkpoint", type=Path, help="a LiteSAM checkpoint (LiteSAM.save); random weights if absent")
    parser.add_argument("--config", default="litesam", help="named config when no checkpoint is given (default: litesam)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--points-per-image", type=int, default=256)
    parser.add_argument("--ppn-score-thresh", type=float, default=0.1)
    parser.add_argument("--prompt", choices=("box", "point", "point+box"), default="box")
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--box-nms-thresh", type=float, default=0.7)
    parser.add_argument("--no-overlay", action="store_true", help="skip the overlay PNGs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (no checkpoint)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from PIL import Image

    from litesam_kernels.model import LiteSAM, build_litesam
    from litesam_kernels.segment_everything import SegmentEverything

    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        print(f"error: no such image file(s): {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.checkpoint is None:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr)
        torch.manual_seed(args.seed)
        model = build_litesam(args.config)
    else:
        model = LiteSAM.load(args.checkpoint)
    model = model.to(args.device)
    generator = SegmentEverything(
        model, points_per_image=args.points_per_image, ppn_score_threshold=args.ppn_score_thresh,
        prompt=args.prompt, pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh, box_nms_thresh=args.box_nms_thresh,
        output_mode="coco_rle", batch_size=1,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    used: set = set()
    for path in _progress(list(args.images), not args.no_progress):
        image = load_image(path)
        records = generator.generate(image)[0]
        stem = _output_stem(path, used)
        (args.out / f"{stem}.json").write_text(json.dumps({"image": str(path), "height": image.shape[0],
                                                           "width": image.shape[1], "annotations": records}))
        if not args.no_overlay:
            Image.fromarray(overlay(image, records)).save(args.out / f"{stem}_overlay.png")
    print(f"wrote {len(args.images)} result(s) to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
