"""Peak memory of one ``generate()`` call: segment_anything's SamAutomaticMaskGenerator, our drop-in
FastSamAutomaticMaskGenerator (same Sam, same arguments) and SegEvery (Lite-SAM, and its eager baseline).

Method (CPU). Each measurement runs in a fresh Python process, so no allocator pool or cache of another
run is counted, with glibc told to ``mmap`` every allocation of 128 KB or more (``MALLOC_MMAP_THRESHOLD_``)
so that freed tensors leave the resident set at once. The child builds the model and the generator,
runs one warm-up call on a small image (lazy imports, kernel libraries, torch's thread pools), then
records its resident set size (RSS, ``/proc/self/statm``) as the baseline and runs the measured call.
The call's peak is the largest of (a) a sampler thread reading the RSS every 0.5 ms during the call and
(b) ``getrusage(RUSAGE_SELF).ru_maxrss`` after it (the kernel's own high-water mark, exact, when it rose
during the call), minus the baseline: the memory the call needed beyond the model and the image.
``tracemalloc``'s peak is reported too: the Python and numpy part of that (records, binary masks, RLEs).
CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (the caching allocator's peak
of live tensors), minus the memory allocated before the call.

``python -m benchmarks.bench_memory [--size 1024] [--points-per-side 64] [--crop-n-layers 1]
[--device cpu|cuda] [--geometry sam|ci] [--kinds sam,fast,...] [--out FILE.json]`` prints one row per
kind. The models have random weights: segment_anything's ``Sam`` is the tests' tiny Sam at SAM's real
geometry (``img_size=1024``: 64x64 embeddings, 256x256 low-res masks, the decoder's transformer_dim 256;
a 2-block windowed ViT keeps the encoder's share small, so the rows compare the generators' own working
memory), Lite-SAM is the ``litesam`` config. CPU runs use the CPU's default backends (C++ kernels and torch
references; Triton runs CPU tensors only when forced).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
from dataclasses import asdict, dataclass
from typing import List, Optional

# segevery: SegEvery's defaults (batch_size=8 crops per encoder call, crops_per_decoder_call=1: prompts_per_batch=64
# prompts per decoder call, as SAM's points_per_batch=64); segevery_all_crops_per_call: crops_per_decoder_call=None,
# a decoder call takes the prompts of every crop an encoder call ran (one crop layer's 5 crops: 5 x 64 prompts).
# fast_four_batches_per_call: the drop-in with batches_per_decoder_call=4 (its default 1 decodes points_per_batch
# prompts per call, as segment_anything does).
KINDS = ("sam", "fast", "fast_four_batches_per_call", "segevery", "segevery_all_crops_per_call", "segevery_eager")
# "sam": SAM's geometry (1024 input, 64x64 embeddings, 256x256 low-res masks, Lite-SAM's "litesam" config);
# "ci": a 128 input (8x8 embeddings, 32x32 low-res masks; Lite-SAM's "tiny" config) for tests/test_memory.py.
GEOMETRIES = {"sam": (1024, "litesam"), "ci": (128, "tiny")}
# Random weights give few confident masks: permissive filters (as bench_amg's permissive rows) make
# post-processing, NMS and RLE carry real load (and keep segment_anything's crop NMS off its empty-crop crash).
PERMISSIVE = dict(pred_iou_thresh=-1e9, stability_score_thresh=0.0)
_PAGE = os.sysconf("SC_PAGE_SIZE")
_MMAP_THRESHOLD = 128 * 1024


@dataclass
class MemoryRow:
    kind: str
    device: str
    size: int
    points_per_side: int
    crop_n_layers: int
    geometry: str
    peak_bytes: int  # the call's peak beyond the baseline (see the module docstring)
    sampled_bytes: int  # RSS sampler's peak beyond the baseline (CPU)
    python_peak_bytes: int  # tracemalloc's peak during the call (Python objects, numpy arrays)
    baseline_bytes: int  # RSS (CPU) or allocated memory (CUDA) before the call
    seconds: float
    records: int
    note: str = ""


# ---------------------------------------------------------------------------------------------- parent
def measure(kind: str, *, size: int = 1024, points_per_side: int = 64, crop_n_layers: int = 1,
            device: str = "cpu", geometry: str = "sam", timeout: Optional[float] = None) -> MemoryRow:
    """One row, measured in a fresh process (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {tuple(GEOMETRIES)}, got {geometry!r}")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(_MMAP_THRESHOLD), MALLOC_TRIM_THRESHOLD_=str(_MMAP_THRESHOLD))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "benchmarks.bench_memory", "--child", kind, "--size", str(size),
               "--points-per-side", str(points_per_side), "--crop-n-layers", str(crop_n_layers), "--device", device,
               "--geometry", geometry]
    done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement of {kind} failed:\n{done.stderr[-4000:]}")
    return MemoryRow(**json.loads(done.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------------------------- child
def photo(size: int):
    """scikit-image's astronaut (a real photo), resized to size x size, uint8 RGB."""
    import numpy as np
    import skimage.data
    from PIL import Image

    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((size, size), Image.Resampling.BILINEAR))


def _generator(kind: str, points_per_side: int, crop_n_layers: int, device: str, geometry: str):
    """(callable(image) -> records, note)."""
    import torch

    img_size, litesam_config = GEOMETRIES[geometry]
    if kind in ("sam", "fast", "fast_four_batches_per_call"):
        from tests.tiny_sam import tiny_sam

        # SAM's decoder geometry (transformer_dim 256, 64x64 embeddings, 256x256 low-res masks) behind a light
        # windowed ViT: the generators' working memory dominates, as with SAM's own encoder run once per crop.
        sam = tiny_sam(img_size=img_size, dim=256, global_attn_indexes=()).to(device)
        args = dict(points_per_side=points_per_side, crop_n_layers=crop_n_layers, output_mode="uncompressed_rle",
                    **PERMISSIVE)
        if kind == "sam":
            from segment_anything import SamAutomaticMaskGenerator

            generator = SamAutomaticMaskGenerator(sam, **args)
        else:
            from litesam_kernels.amg import FastSamAutomaticMaskGenerator

            generator = FastSamAutomaticMaskGenerator(sam, **args, **(
                {"batches_per_decoder_call": 4} if kind == "fast_four_batches_per_call" else {}))
        return generator.generate, f"random Sam: SAM's decoder at img_size {img_size}, a 2-block windowed ViT"
    from litesam_kernels.model import build_litesam
    from litesam_kernels.segment_everything import SegmentEverything

    torch.manual_seed(0)
    model = build_litesam(litesam_config).to(device).eval()
    args = dict(points_per_image=points_per_side**2, ppn_score_threshold=0.0, crop_n_layers=crop_n_layers,
                output_mode="uncompressed_rle", **PERMISSIVE)
    if kind == "segevery_all_crops_per_call":
        args["crops_per_decoder_call"] = None
    generator = (SegmentEverything.eager_reference(model, **args) if kind == "segevery_eager"
                 else SegmentEverything(model, **args))
    return (lambda image: generator.generate([image])[0]), f"random {litesam_config}, K = {points_per_side}^2 prompts per crop"


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def _child(kind: str, size: int, points_per_side: int, crop_n_layers: int, device: str, geometry: str) -> MemoryRow:
    import torch

    torch.manual_seed(0)
    generate, note = _generator(kind, points_per_side, crop_n_layers, device, geometry)
    generate(photo(32))  # warm-up: lazy imports, kernel libraries, thread pools (small: it sets ru_maxrss)
    image = photo(size)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _rss()
    peak_sample, stop = [baseline], threading.Event()

    def sample():
        while not stop.is_set():
            peak_sample[0] = max(peak_sample[0], _rss())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    max_rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    sampler.start()
    start = time.perf_counter()
    records = generate(image)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    _, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if cuda:
        peak = torch.cuda.max_memory_allocated() - baseline
        sampled = 0
    else:
        sampled = peak_sample[0] - baseline
        max_rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = max(sampled, max_rss_after - baseline if max_rss_after > max_rss_before else 0)
    return MemoryRow(kind, device, size, points_per_side, crop_n_layers, geometry, int(peak), int(sampled), int(python_peak),
                     int(baseline), round(seconds, 2), len(records), note)


# ---------------------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--points-per-side", type=int, default=64)
    parser.add_argument("--crop-n-layers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--geometry", default="sam", choices=tuple(GEOMETRIES))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        row = _child(args.child, args.size, args.points_per_side, args.crop_n_layers, args.device, args.geometry)
        print(json.dumps(asdict(row)))
        return 0
    rows = []
    for kind in [k for k in args.kinds.split(",") if k]:
        row = measure(kind, size=args.size, points_per_side=args.points_per_side, crop_n_layers=args.crop_n_layers,
                      device=args.device, geometry=args.geometry)
        rows.append(row)
        print(f"{row.kind:15s} peak {row.peak_bytes / 2**20:8.1f} MiB  (sampled {row.sampled_bytes / 2**20:8.1f}, "
              f"python {row.python_peak_bytes / 2**20:7.1f}, baseline {row.baseline_bytes / 2**20:7.1f})  "
              f"{row.seconds:7.1f} s  {row.records} records  {row.note}", flush=True)
    if args.out:
        with open(args.out, "w") as out:
            json.dump([asdict(r) for r in rows], out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
