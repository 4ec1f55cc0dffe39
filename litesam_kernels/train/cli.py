"""``litesam-train STAGE ...``: train Lite-SAM from a SAM / SAM 2 teacher, one stage per call.

Stages, in order (each starts from the previous one's checkpoint with ``--init``):
  distill   LiteViT regresses the teacher's image embeddings (cached once on disk, fp16)
  ppn       AutoPPN learns point/box prompts from the teacher's automatic masks (cached once)
  finetune  encoder + AutoPPN + mask decoder end to end against the teacher's masks

Multi-GPU: ``torchrun --nproc_per_node N -m litesam_kernels.train STAGE ...`` (``--batch-size`` is per
process). ``RUN_DIR/checkpoint.pt`` loads with ``LiteSAM.load``; ``RUN_DIR/log.csv`` has the losses.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from litesam_kernels.train.stages import STAGES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litesam-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=list(STAGES), help="what to train (see above)")
    run = parser.add_argument_group("run")
    run.add_argument("--images", required=True, metavar="DIR", help="folder of training images (searched recursively)")
    run.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder: checkpoint.pt, log.csv, cache/")
    run.add_argument("--steps", type=int, required=True, metavar="N", help="optimizer steps")
    run.add_argument("--resume", action="store_true", help="continue RUN_DIR/checkpoint.pt exactly")
    run.add_argument("--init", metavar="CHECKPOINT", help="start from an earlier stage's checkpoint (LiteSAM.save)")
    run.add_argument("--config", metavar="NAME|JSON",
                     help="student config: litesam (default), litesam_slim, tiny, or a JSON file of LiteSAMConfig "
                          "fields (ignored with --init / --resume)")
    run.add_argument("--device", default="auto", help="auto (default: this rank's GPU, else CPU), cuda, cpu")
    run.add_argument("--seed", type=int, default=0, help="weights, data order, augmentations (default 0)")
    run.add_argument("--cache-dir", metavar="DIR",
                     help="teacher caches (embeddings/, masks/), shareable by runs (default RUN_DIR/cache)")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    run.add_argument("--stop-after", type=int, metavar="N",
                     help="checkpoint and stop after N steps of this call (continue with --resume)")

    teacher = parser.add_argument_group("teacher (needed while its caches are incomplete)")
    teacher.add_argument("--teacher", choices=("sam", "sam2"), help="the teacher's family")
    teacher.add_argument("--teacher-checkpoint", metavar="PATH",
                         help="its weights as its project ships them (sam_vit_h_4b8939.pth, sam2.1_hiera_large.pt)")
    teacher.add_argument("--teacher-type", default="vit_h",
                         help="SAM: segment_anything registry name (vit_h, vit_l, vit_b) or module:function")
    teacher.add_argument("--teacher-config", help="SAM 2: its config, e.g. configs/sam2.1/sam2.1_hiera_l.yaml")
    teacher.add_argument("--teacher-precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                         help="autocast of the teacher's forward (auto: bf16 on CUDA, fp32 on CPU)")
    teacher.add_argument("--teacher-batch-size", type=int, default=8, metavar="N", help="images per teacher call")
    teacher.add_argument("--views", type=int, default=1, metavar="N",
                         help="distill: embeddings cached per image: the image itself and N-1 augmented views")
    teacher.add_argument("--shard-size", type=int, default=64, metavar="N", help="items per cache shard")
    teacher.add_argument("--max-masks", type=int, default=100, metavar="N", help="teacher masks kept per image")
    for name, kind, text in (("points-per-side", int, "grid points per side"),
                             ("points-per-batch", int, "points per decoder batch"),
                             ("pred-iou-thresh", float, "predicted-IoU threshold"),
                             ("stability-score-thresh", float, "stability-score threshold"),
                             ("box-nms-thresh", float, "box NMS threshold"),
                             ("min-mask-region-area", int, "holes/islands removal area")):
        teacher.add_argument(f"--{name}", type=kind, help=f"teacher's mask generator: {text} (default: its own)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per step and process (8)")
    optim.add_argument("--accum-steps", type=int, default=1, metavar="N", help="micro-batches per optimizer step")
    optim.add_argument("--lr", type=float, help="peak learning rate (distill/ppn 1e-3, finetune 1e-4)")
    optim.add_argument("--warmup-steps", type=int, metavar="N", help="linear warm-up (default min(1000, steps/20))")
    optim.add_argument("--min-lr-ratio", type=float, default=0.01, help="cosine floor as a fraction of --lr")
    optim.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (matrices only)")
    optim.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    optim.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                       help="autocast dtype (auto: bf16 on CUDA, fp32 on CPU)")
    optim.add_argument("--encoder", choices=("fused", "eager"), default="fused",
                       help="LiteViT on the fused kernels (default) or its eager modules")
    optim.add_argument("--compile", action="store_true", help="torch.compile the training objective")
    optim.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)
    optim.add_argument("--bn", choices=("train", "frozen"),
                       help="BatchNorm statistics: batch (train; distill default) or running (frozen; finetune default)")
    optim.add_argument("--no-augment", dest="augment", action="store_false",
                       help="ppn/finetune: the images as they are (default: random crops, flips, colour)")
    optim.add_argument("--prompts-per-image", type=int, default=16, metavar="N",
                       help="finetune: prompted teacher masks per image (half boxes, half points)")

    report = parser.add_argument_group("reporting")
    report.add_argument("--save-every", type=int, default=500, metavar="N", help="checkpoint every N steps")
    report.add_argument("--log-every", type=int, default=10, metavar="N", help="log.csv row every N steps")
    report.add_argument("--num-workers", type=int, default=4, metavar="N", help="DataLoader workers per process")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from litesam_kernels.train.cache import CacheMismatchError
    from litesam_kernels.train.sources import SourceError
    from litesam_kernels.train.trainer import TrainError, TrainOptions, run

    args = build_parser().parse_args(argv)
    options = TrainOptions(**{k.replace("-", "_"): v for k, v in vars(args).items()})
    try:
        path = run(options)
    except (TrainError, SourceError, CacheMismatchError) as exc:
        print(f"litesam-train: error: {exc}", file=sys.stderr)
        return 2
    print(f"checkpoint: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
