"""``litesam-segment``: segment everything in a dataset with SAM, SAM 2 or Lite-SAM.

Inputs: image files, folders (``--recursive``), glob patterns and file lists (``--file-list``). Images
are decoded upright (EXIF orientation) and converted to RGB (grayscale, palette, alpha, 16-bit) in
DataLoader workers; one that cannot be read, segmented or written is logged, listed in
``OUT/failures.txt`` and skipped.

Outputs (``--format``, comma-separated): ``sa1b`` (default: one SA-1B JSON per image in ``OUT/sa1b/``),
``coco`` (``OUT/coco.json``, merged from the SA-1B files, which it also writes), ``png`` (SAM's
scripts/amg.py layout in ``OUT/png/``); ``--overlay`` adds ``OUT/overlays/<image>.png``. Every file
appears complete or not at all; ``--skip-existing`` resumes an interrupted run.

Exit status: 0 when at least one image has its outputs (segmented now, or already done with
``--skip-existing``); 1 when every image failed; 2 for bad arguments (no traceback).

Many GPUs: ``torchrun --nproc-per-node N -m litesam_kernels.cli ...`` shards the images by rank; a
cluster: ``--ray auto`` (one actor per GPU). Also runnable as ``python -m litesam_kernels.cli``.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

from litesam_kernels._extras import MissingExtraError, require
from litesam_kernels.datasets import IMAGE_EXTENSIONS, InputError
from litesam_kernels.segmenters import DTYPES, GENERATOR_OPTIONS, MODELS, ModelLoadError, non_negative_int, positive_int
from litesam_kernels.writers import FORMATS

PROG = "litesam-segment"
log = logging.getLogger("litesam_kernels.cli")


class CliError(ValueError):
    """A bad argument combination found after parsing (printed as ``litesam-segment: error: ...``)."""


# ------------------------------------------------------------------------------------------ parser
def _argument_type(convert, name: str):
    """An argparse type from a converter that raises ValueError: argparse then prints a clean error."""
    def parse(text: str):
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid {name} {text!r}: {exc}") from None
    parse.__name__ = name
    return parse


def _formats(text: str) -> List[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"choose from {', '.join(FORMATS)}")
    return formats


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image files, folders or glob patterns (quote them: 'photos/**/*.jpg')")
    inputs.add_argument("--input", action="append", default=[], metavar="PATH",
                        help="the same, as SAM's scripts/amg.py spells it (repeatable)")
    inputs.add_argument("--file-list", action="append", default=[], metavar="FILE",
                        help="a text file with one image path per line, relative to its folder (repeatable)")
    inputs.add_argument("-r", "--recursive", action="store_true", help="also search the folders' subfolders")
    inputs.add_argument("--extensions", type=lambda s: [e for e in s.split(",") if e], default=list(IMAGE_EXTENSIONS),
                        metavar="LIST", help="comma-separated file extensions taken from folders and globs "
                                             f"(default: {','.join(e[1:] for e in IMAGE_EXTENSIONS)})")
    inputs.add_argument("--max-side", type=_argument_type(positive_int, "size"), metavar="N",
                        help="downscale (in the decoding workers) so the longer side is at most N pixels; "
                             "the outputs then describe the downscaled image")

    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--out", "--output", dest="out", type=Path, required=True, metavar="DIR",
                         help="output folder (created)")
    outputs.add_argument("--format", dest="formats", action="append", type=_argument_type(_formats, "format"),
                         metavar="FORMATS", help=f"comma-separated, some of {', '.join(FORMATS)} (default: sa1b)")
    outputs.add_argument("--overlay", action="store_true", help="also write the masks tinted over each image")
    outputs.add_argument("--skip-existing", action="store_true",
                         help="leave images whose outputs all exist (resume an interrupted run)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=MODELS, default="litesam", help="model family (default: %(default)s)")
    model.add_argument("--checkpoint", help="weights: SAM's .pth, SAM 2's .pt ({'model': ...}) or LiteSAM.save's "
                                            "(Lite-SAM without one: random weights, loudly)")
    model.add_argument("--model-type",
                       help="SAM: registry name (default (= vit_h), vit_h, vit_l, vit_b) or module:function, "
                            "a builder called with checkpoint=PATH")
    model.add_argument("--config", help="SAM 2: a sam2 config (configs/sam2.1/sam2.1_hiera_l.yaml; inferred "
                                        "from official checkpoint names) or a YAML file; Lite-SAM: a named "
                                        "config (litesam, litesam_slim, tiny)")
    model.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA if present)")
    model.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights and activations (default: fp32)")
    model.add_argument("--seed", type=int, default=0, help="seed of Lite-SAM's random weights (no checkpoint)")

    groups = {}
    for option in GENERATOR_OPTIONS:
        group = groups.get(option.group) or groups.setdefault(option.group, parser.add_argument_group(option.group))
        flags = (option.flag,) + option.aliases
        if option.boolean:
            group.add_argument(*flags, dest=option.name, action=argparse.BooleanOptionalAction, default=None,
                               help=option.help)
        else:
            group.add_argument(*flags, dest=option.name, default=None, choices=option.choices, help=option.help,
                               type=option.type if option.choices else _argument_type(option.type, "value"),
                               metavar=None if option.choices else option.metavar)

    run = parser.add_argument_group("throughput")
    run.add_argument("--batch-size", type=_argument_type(positive_int, "batch size"), default=1, metavar="N",
                     help="images per model call (default: 1)")
    run.add_argument("--num-workers", type=_argument_type(non_negative_int, "worker count"), metavar="N",
                     help="DataLoader worker processes decoding images (default: up to 4 per GPU process; "
                          "0: decode in the main process)")
    run.add_argument("--prefetch-factor", type=_argument_type(positive_int, "prefetch factor"), default=2, metavar="N",
                     help="batches each worker decodes ahead (default: 2)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and the summary")

    cluster = parser.add_argument_group("cluster (Ray Data)")
    cluster.add_argument("--ray", metavar="ADDRESS",
                         help="run on a Ray cluster: auto (the running cluster), local (start one here) or "
                              "ray://HOST:PORT; the output folder must be shared by all nodes")
    cluster.add_argument("--ray-actors", type=_argument_type(positive_int, "actor count"), metavar="N",
                         help="model actors (default: one per GPU of the cluster, 1 without GPUs)")
    cluster.add_argument("--ray-gpus-per-actor", type=_argument_type(float, "GPU count"), metavar="G",
                         help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)")
    return parser


# ------------------------------------------------------------------------------------------ logging
class _StderrHandler(logging.Handler):
    """Writes to the *current* sys.stderr, through tqdm when it is there (keeps the bar intact)."""

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        try:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
        except ImportError:
            print(message, file=sys.stderr, flush=True)


def _configure_logging(quiet: bool, prefix: str) -> None:
    for handler in [h for h in log.handlers if isinstance(h, _StderrHandler)]:
        log.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(f"{prefix}: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


# ------------------------------------------------------------------------------------------ main
def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error (2) or the help (0)
        return exc.code if isinstance(exc.code, int) else 2
    from litesam_kernels.distributed import DistributedContext

    try:
        context = DistributedContext.from_environment()
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    prefix = f"{PROG}[rank {context.rank}/{context.world_size}]" if context.active else PROG
    _configure_logging(args.quiet, prefix)
    try:
        return _run(args, context)
    except (CliError, InputError, ModelLoadError, MissingExtraError) as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 2


def _run(args, context) -> int:
    from litesam_kernels.datasets import discover_images
    from litesam_kernels.segmenters import SegmenterSpec, check_checkpoint_file, check_generator_options
    from litesam_kernels.writers import OutputLayout

    formats = tuple(dict.fromkeys(f for group in (args.formats or [["sa1b"]]) for f in group))
    layout = OutputLayout(args.out, formats, args.overlay)
    require("PIL.Image", "reading images")
    if layout.output_mode == "coco_rle":
        require("pycocotools.mask", "--format sa1b/coco (COCO RLE masks)")
    if args.model_type is not None and args.model != "sam":
        raise CliError(f"--model-type is for --model sam (SAM 2 and Lite-SAM take --config), not --model {args.model}")
    if args.config is not None and args.model == "sam":
        raise CliError("--config is for --model sam2 and litesam; SAM's architecture is --model-type")
    options = {o.name: getattr(args, o.name) for o in GENERATOR_OPTIONS if getattr(args, o.name) is not None}
    try:
        check_generator_options(args.model, options)
        spec = SegmenterSpec(model=args.model, checkpoint=args.checkpoint, model_type=args.model_type or "default",
                             config=args.config, device=args.device, dtype=args.dtype, generator_options=options,
                             batch_size=args.batch_size, output_mode=layout.output_mode, seed=args.seed)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    check_checkpoint_file(spec)
    items = discover_images(args.inputs + args.input, file_lists=args.file_list, recursive=args.recursive,
                            extensions=args.extensions, exclude=[str(args.out)])
    progress = not (args.no_progress or args.quiet)
    if args.ray:
        if context.active:
            raise CliError("--ray runs its own workers: start it as one process, not under torchrun")
        from litesam_kernels.distributed import segment_with_ray

        try:
            stats = segment_with_ray(items, spec, layout, address=args.ray, actors=args.ray_actors,
                                     gpus_per_actor=args.ray_gpus_per_actor, max_side=args.max_side,
                                     skip_existing=args.skip_existing, progress=progress)
        except ValueError as exc:  # the generator's own argument checks, met while checking the spec
            raise CliError(str(exc)) from exc
        return _finish(layout, items, stats, spec)
    with context:
        return _run_here(args, context, spec, layout, items, progress)


def _finish(layout, items, stats, spec) -> int:
    from litesam_kernels.batch_runner import finish_run

    for line in finish_run(layout, items, stats, spec.describe()):
        log.warning("%s", line)  # at warning level: the summary shows under --quiet too
    return stats.exit_status


def _run_here(args, context, spec, layout, items, progress: bool) -> int:
    import dataclasses

    import torch

    from litesam_kernels.batch_runner import RunStats, run_images
    from litesam_kernels.datasets import shard
    from litesam_kernels.segmenters import Segmenter

    try:
        device = torch.device(context.device(spec.device))
    except RuntimeError as exc:
        raise CliError(f"invalid --device {spec.device!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {spec.device} but CUDA is not available here")
    spec = dataclasses.replace(spec, device=str(device))
    log.info("loading %s on %s", spec.describe(), spec.device)
    try:
        segmenter = Segmenter(spec)
    except ValueError as exc:  # the generator's own argument checks
        raise CliError(str(exc)) from exc
    mine = shard(items, context.rank, context.world_size, block=spec.batch_size)
    workers = args.num_workers
    if workers is None:
        workers = min(4, max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))))
    stats = run_images(segmenter, layout, mine, batch_size=spec.batch_size, num_workers=workers,
                       prefetch_factor=args.prefetch_factor, max_side=args.max_side,
                       skip_existing=args.skip_existing, progress=progress and context.is_main)
    total = functools.reduce(RunStats.merge, context.all_gather(stats))
    return _finish(layout, items, total, spec) if context.is_main else total.exit_status


if __name__ == "__main__":
    sys.exit(main())
