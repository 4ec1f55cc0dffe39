"""Building the teacher caches (once; resumable; split over torchrun ranks by shard).

- :func:`embedding_cache` / :func:`build_embeddings`: the teacher's embedding of every view of every image;
- :func:`mask_cache` / :func:`build_masks`: the teacher's automatic masks of every image, from our fast drop-in
  generator on the original image, largest predicted IoU first, at most ``max_masks`` per image, stored at
  ``mask_side`` on the longer side.
The teacher is only built when some shard is missing, so a resumed run or a second stage on a finished
cache never loads it.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from litesam_kernels.train.cache import MANIFEST, EmbeddingCache, MaskCache, cache_resolution, downsample_masks
from litesam_kernels.train.data import ImageFolder, RenderedViews, ViewPlan
from litesam_kernels.train.dist import Distributed
from litesam_kernels.train.teacher import Teacher, TeacherSpec

SHARD_SIZE = 64  # items per shard: 128 MiB of 256 x 64 x 64 float16 embeddings


@dataclass
class TeacherLoader:
    """Builds the teacher on first use (and only then), once per process."""

    spec: Optional[TeacherSpec]
    device: torch.device
    image_size: int
    _teacher: Optional[Teacher] = field(default=None, repr=False)

    def get(self) -> Teacher:
        if self._teacher is None:
            if self.spec is None:
                raise ValueError("the teacher cache is incomplete and no teacher was given: pass --teacher, "
                                 "--teacher-checkpoint (and --teacher-type / --teacher-config)")
            self._teacher = Teacher(self.spec, self.device, self.image_size)
        return self._teacher

    def release(self) -> None:
        """Free the teacher before training (its GPU memory is the student's now)."""
        self._teacher = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _identity(teacher: TeacherLoader) -> Optional[Dict[str, Any]]:
    return teacher.spec.identity() if teacher.spec is not None else None


def _open(cache, dist: Distributed):
    """Check (every rank) and write (rank 0) the manifest; all ranks wait for it."""
    if dist.is_main:
        cache.write_manifest()
    dist.barrier()
    if not cache.check_manifest():
        raise RuntimeError(f"no manifest in {str(cache.root)!r} after rank 0 wrote it (is the folder shared?)")
    return cache


def _status(message: str, dist: Distributed) -> None:
    if dist.is_main:
        print(message, file=sys.stderr, flush=True)


def _finish(cache, dist: Distributed) -> None:
    dist.barrier()
    missing = cache.missing_shards()
    if missing:
        raise RuntimeError(f"the {cache.kind} cache in {str(cache.root)!r} still misses shards {missing[:8]} "
                           f"after every rank finished (is --cache-dir on a filesystem all ranks share?)")


def embedding_cache(root: Path, images: ImageFolder, plan: ViewPlan, image_size: int, teacher: TeacherLoader,
                    embedding_shape, shard_size: int = SHARD_SIZE) -> EmbeddingCache:
    manifest = {"teacher": _identity(teacher), "images": images.names, "image_size": int(image_size),
                "embedding_shape": list(embedding_shape), **plan.manifest()}
    return _adopt(EmbeddingCache(root, manifest, len(images) * plan.views, shard_size), teacher, ("teacher",))


def _adopt(cache, teacher: TeacherLoader, fields):
    """Without a teacher, take ``fields`` (the teacher, its settings) from the folder's manifest: a finished
    cache can be read without naming them again; the rest (images, sizes) must still match."""
    if teacher.spec is None:
        path = cache.root / MANIFEST
        found = json.loads(path.read_text()) if path.exists() else {}
        for name in fields:
            cache.manifest[name] = found.get(name, cache.manifest[name])
    return cache


def build_embeddings(cache: EmbeddingCache, views: RenderedViews, teacher: TeacherLoader, dist: Distributed,
                     batch_size: int, num_workers: int = 0) -> None:
    """Compute the missing shards of this rank, then wait for every rank's."""
    _open(cache, dist)
    missing = cache.missing_shards(dist.rank, dist.world_size)
    if missing:
        batches = [list(chunk) for shard in missing for chunk in _chunks(cache.shard_items(shard), batch_size)]
        loader = DataLoader(views, batch_sampler=batches, num_workers=num_workers)
        expected = tuple(cache.manifest["embedding_shape"])
        done, parts, shard_index = 0, [], 0
        started = time.perf_counter()
        _status(f"teacher embeddings: {len(missing)} shard(s) to compute into {cache.root}", dist)
        for batch in loader:
            embedding = teacher.get().embed(batch["pixels"], batch["sizes"])
            if tuple(embedding.shape[1:]) != expected:
                raise ValueError(f"the teacher's image embeddings are {tuple(embedding.shape[1:])}, the student's "
                                 f"are {expected}: choose a --config whose prompt_embed_dim and image_size "
                                 f"(/16) match the teacher")
            parts.append(embedding.cpu())
            done += embedding.shape[0]
            shard = missing[shard_index]
            if sum(p.shape[0] for p in parts) == len(cache.shard_items(shard)):
                cache.write_shard(shard, torch.cat(parts))
                parts, shard_index = [], shard_index + 1
                rate = done / max(time.perf_counter() - started, 1e-9)
                _status(f"  shard {shard_index}/{len(missing)} written ({rate:.1f} views/s)", dist)
    _finish(cache, dist)


def _chunks(items: range, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ---------------------------------------------------------------------------------------------- masks
def mask_cache(root: Path, images: ImageFolder, teacher: TeacherLoader, generator_options: Dict[str, Any],
               mask_side: int, max_masks: int, shard_size: int = SHARD_SIZE) -> MaskCache:
    manifest = {"teacher": _identity(teacher), "images": images.names, "generator": dict(generator_options),
                "mask_side": int(mask_side), "max_masks": int(max_masks)}
    return _adopt(MaskCache(root, manifest, len(images), shard_size), teacher, ("teacher", "generator", "max_masks"))


def teacher_masks(generator, image: np.ndarray, max_masks: int, mask_side: int) -> Dict[str, Any]:
    """One image through the teacher's generator -> a mask cache entry (see ``MaskCache.write_shard``)."""
    records = generator.generate_batch([image])[0] if hasattr(generator, "generate_batch") else generator.generate(image)
    records = sorted(records, key=lambda r: -float(r["predicted_iou"]))[:max_masks]
    height, width = image.shape[:2]
    size = cache_resolution(height, width, mask_side)
    masks = torch.from_numpy(np.stack([r["segmentation"] for r in records])) if records else \
        torch.zeros((0, height, width), dtype=torch.bool)
    return {"masks": downsample_masks(masks, size).numpy(), "original_size": (height, width),
            "boxes": np.array([r["bbox"] for r in records], dtype=np.float32).reshape(-1, 4),
            "scores": np.array([[r["predicted_iou"], r["stability_score"]] for r in records],
                               dtype=np.float32).reshape(-1, 2)}


def build_masks(cache: MaskCache, images: ImageFolder, teacher: TeacherLoader, dist: Distributed) -> None:
    """Compute the missing shards of this rank (one image at a time: the generator's own batching runs the
    point grid), then wait for every rank's."""
    _open(cache, dist)
    missing = cache.missing_shards(dist.rank, dist.world_size)
    if missing:
        teacher_model = teacher.get()
        generator = teacher_model.mask_generator(output_mode="binary_mask", **cache.manifest["generator"])
        started, done = time.perf_counter(), 0
        _status(f"teacher masks: {len(missing)} shard(s) to compute into {cache.root}", dist)
        for number, shard in enumerate(missing, start=1):
            entries: List[Dict[str, Any]] = []
            for index in cache.shard_items(shard):
                with teacher_model.generating():
                    entries.append(teacher_masks(generator, images.load(index), cache.manifest["max_masks"],
                                                 cache.manifest["mask_side"]))
                done += 1
            cache.write_shard(shard, entries)
            rate = done / max(time.perf_counter() - started, 1e-9)
            _status(f"  shard {number}/{len(missing)} written ({rate:.2f} images/s)", dist)
    _finish(cache, dist)
