"""Segment-everything past one GPU: torchrun ranks on one or more machines, or a Ray Data pipeline on a cluster.

torchrun (``torchrun --nproc-per-node N -m litesam_kernels.cli ...``): every rank lists the same inputs,
takes every N-th block of ``--batch-size`` images from its rank (:func:`litesam_kernels.datasets.shard`:
each model call batches the images one process would), runs the per-batch function on its own GPU and
writes its images' outputs; a gather of the ranks' counts (a ``gloo`` process group,
so it needs no GPU) is the barrier after which rank 0 writes ``failures.txt`` and merges ``coco.json``.
Output ids come from the input list, not from the ranks (:mod:`litesam_kernels.writers`), so N ranks
write exactly what one process writes. Across machines the output folder must be on a filesystem that
rank 0 can read.

Ray (:func:`segment_with_ray`, ``litesam-segment ... --ray auto``): a Ray Data pipeline of CPU tasks that
decode the images (:func:`decode_rows`) feeding :class:`SegmentStage`, a ``map_batches`` stage run by an
actor pool of one actor per GPU, each calling the same per-batch function
(:func:`litesam_kernels.batch_runner.process_batch`) and writing its outputs to the shared output folder;
the driver collects one small row per image and finishes the run (failures, COCO merge, summary).
With GPU actors the decoding stays in CPU tasks (their resources differ, so Ray does not fuse the two
stages); with CPU actors Ray fuses them and each actor decodes its own batches. The driver builds the
segmenter once on its CPU first, so a checkpoint or option that does not fit fails before the cluster works.

A cluster run (the output folder and the checkpoint on a filesystem every node mounts)::

    ray start --head                                   # on the head node
    ray start --address HEAD_IP:6379                   # on every GPU node
    litesam-segment /shared/photos --recursive --out /shared/masks --format sa1b,coco \
        --model sam --model-type vit_h --checkpoint /shared/sam_vit_h_4b8939.pth --batch-size 4 --ray auto

Inside a Ray Data pipeline of your own: rows of :func:`item_rows` in, one row per image out::

    dataset = add_segment_stage(ray.data.from_items(item_rows(items)), spec, layout, batch_size=4,
                                actors=int(ray.cluster_resources()["GPU"]))
"""
from __future__ import annotations

import dataclasses
import os
import time
from datetime import timedelta
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from litesam_kernels._extras import require
from litesam_kernels.batch_runner import ImageResult, Progress, RunStats, process_batch
from litesam_kernels.datasets import DecodedImage, ImageItem, decode
from litesam_kernels.segmenters import Segmenter, SegmenterSpec
from litesam_kernels.writers import OutputLayout

# Ranks wait for the slowest one at the final gather; shards interleave blocks so they finish close
# together, but a resumed run (--skip-existing) can leave one rank far more work than another.
GATHER_TIMEOUT = timedelta(days=7)


# ------------------------------------------------------------------------------------------ torchrun
@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """This process's place in a torchrun job (rank 0 of 1 outside one). Use as a context manager:
    it joins the job's process group on entry and leaves it on exit."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls, environ=os.environ) -> "DistributedContext":
        """From torchrun's RANK / WORLD_SIZE / LOCAL_RANK (absent: a single process)."""
        try:
            return cls(int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1)), int(environ.get("LOCAL_RANK", 0)))
        except ValueError as exc:
            raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them): {exc}") from exc

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __enter__(self) -> "DistributedContext":
        self.start("gloo", GATHER_TIMEOUT)
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self, backend: str, timeout: timedelta) -> None:
        """Join the job's process group (``backend``: "gloo", "nccl"), unless there is no job or it is joined."""
        if self.active:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend, rank=self.rank, world_size=self.world_size, timeout=timeout)

    def stop(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def device(self, requested: str) -> str:
        """``requested`` ("auto", "cpu", "cuda", "cuda:1", ...) for this rank: "auto" is CUDA when there is
        a GPU; a bare "cuda" under torchrun is this rank's GPU (LOCAL_RANK)."""
        import torch

        device = requested
        if requested == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and self.active:
            device = f"cuda:{self.local_rank}"
        return device

    def all_gather(self, value: Any) -> List[Any]:
        """Every rank's ``value`` (picklable), in rank order; also a barrier."""
        if not self.active:
            return [value]
        import torch.distributed as dist

        gathered: List[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered


# ------------------------------------------------------------------------------------------ Ray
ITEM_COLUMNS = ("index", "path", "name", "stem")


def item_rows(items: Sequence[ImageItem]) -> List[Dict[str, Any]]:
    """The rows a Ray dataset of images starts from (one per image; see :data:`ITEM_COLUMNS`)."""
    return [{"index": i.index, "path": i.path, "name": i.name, "stem": i.stem} for i in items]


def _items(batch: Dict[str, np.ndarray]) -> List[ImageItem]:
    return [ImageItem(int(i), str(p), str(n), str(s))
            for i, p, n, s in zip(*(batch[column] for column in ITEM_COLUMNS))]


def decode_rows(batch: Dict[str, np.ndarray], max_side: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Ray Data stage (CPU tasks): decode each row's image, adding ``image`` ((H, W, 3) uint8; (0, 0, 3)
    when unreadable) and ``error`` ("" when readable)."""
    decoded = [decode(item, max_side) for item in _items(batch)]
    images = np.empty(len(decoded), dtype=object)  # ragged: one array per image
    for i, d in enumerate(decoded):
        images[i] = d.image if d.image is not None else np.zeros((0, 0, 3), np.uint8)
    return {**{c: batch[c] for c in ITEM_COLUMNS}, "image": images,
            "error": np.array([d.error or "" for d in decoded], dtype=object)}


class SegmentStage:
    """Ray Data ``map_batches`` stage: one instance per actor (one actor per GPU) holds the model; each
    batch of decoded rows goes through :func:`process_batch` (one model call, outputs written by the
    actor) and comes back as one row per image: ``index``, ``masks``, ``error`` ("" when it worked)."""

    def __init__(self, spec: SegmenterSpec, layout: OutputLayout) -> None:
        self.segmenter = Segmenter(spec)
        self.layout = layout

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        decoded = [DecodedImage(item, image if error == "" else None, error or None)
                   for item, image, error in zip(_items(batch), batch["image"], batch["error"])]
        results = process_batch(self.segmenter, self.layout, decoded)
        return {"index": np.array([r.item.index for r in results], dtype=np.int64),
                "masks": np.array([r.masks for r in results], dtype=np.int64),
                "error": np.array([r.error or "" for r in results], dtype=object)}


def add_segment_stage(dataset, spec: SegmenterSpec, layout: OutputLayout, *, batch_size: int,
                      actors: int, gpus_per_actor: float = 1, max_side: Optional[int] = None):
    """Append decoding (CPU tasks) and :class:`SegmentStage` (``actors`` actors with ``gpus_per_actor``
    GPUs each) to a Ray dataset of :func:`item_rows`; returns the dataset of per-image result rows."""
    ray = require("ray", "the Ray Data stage")
    decoded = dataset.map_batches(decode_rows, fn_kwargs={"max_side": max_side}, batch_size=batch_size, num_cpus=1)
    return decoded.map_batches(SegmentStage, fn_constructor_kwargs={"spec": spec, "layout": layout},
                               batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors),
                               num_gpus=gpus_per_actor, num_cpus=1)


def actor_plan(cluster_gpus: float, actors: Optional[int] = None,
               gpus_per_actor: Optional[float] = None) -> Tuple[int, float]:
    """(actors, GPUs per actor): by default one actor per GPU of the cluster, or one CPU actor without GPUs."""
    if gpus_per_actor is None:
        gpus_per_actor = 1 if cluster_gpus >= 1 else 0
    if gpus_per_actor < 0:
        raise ValueError(f"gpus_per_actor must be >= 0, got {gpus_per_actor}")
    if actors is None:
        actors = max(1, int(cluster_gpus // gpus_per_actor)) if gpus_per_actor else 1
    return actors, gpus_per_actor


def segment_with_ray(items: Sequence[ImageItem], spec: SegmenterSpec, layout: OutputLayout, *,
                     address: str = "auto", actors: Optional[int] = None, gpus_per_actor: Optional[float] = None,
                     max_side: Optional[int] = None, skip_existing: bool = False, progress: bool = True) -> RunStats:
    """Segment ``items`` on a Ray cluster (``address``: "auto" = the running cluster, "local" = start one
    here, or ``ray://host:port``). By default one actor per GPU of the cluster (one CPU actor when it has
    none). Writes the per-image outputs; the caller finishes the run (:func:`finish_run`)."""
    ray = require("ray", "--ray")
    require("ray.data", "--ray")
    start = time.perf_counter()
    # Build it once here, on the CPU: a checkpoint or option that does not fit fails now with its message,
    # not as a dead actor on every node (the model is not kept).
    Segmenter(dataclasses.replace(spec, device="cpu"))
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False)
    actors, gpus_per_actor = actor_plan(float(ray.cluster_resources().get("GPU", 0)), actors, gpus_per_actor)
    todo = [item for item in items if not (skip_existing and layout.is_done(item))]
    stats = RunStats(images=len(items), skipped=len(items) - len(todo))
    by_index = {item.index: item for item in todo}
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts images, not blocks
    bar = Progress(len(todo), progress and bool(todo), "segmenting (ray)")
    try:
        if todo:
            dataset = add_segment_stage(ray.data.from_items(item_rows(todo)), spec, layout,
                                        batch_size=spec.batch_size, actors=actors, gpus_per_actor=gpus_per_actor,
                                        max_side=max_side)
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for index, masks, error in zip(batch["index"], batch["masks"], batch["error"]):
                    stats.add(ImageResult(by_index[int(index)], int(masks), str(error) or None))
                bar.update(len(batch["index"]), masks=stats.masks, failed=stats.failed)
    finally:
        bar.close()
    stats.seconds = time.perf_counter() - start
    return stats
