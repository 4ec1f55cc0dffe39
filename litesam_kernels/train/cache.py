"""On-disk teacher caches: computed once, in shards, resumable, shared by every rank and every later run.

A cache is a folder with ``manifest.json`` (what it was made from: teacher, images, settings) and shard files,
each holding ``shard_size`` consecutive items and written once, atomically (a temporary file renamed into
place), so an interrupted build loses at most the shards in flight and a restarted one computes only the
missing shards. Under torchrun, rank ``r`` computes the shards ``k`` with ``k % world_size == r``.
Opening a cache whose manifest differs from the requested one is an error that names the differing fields
(a cache made for another teacher or image list must not be read as this one's).

- :class:`EmbeddingCache`: teacher image embeddings, float16 ``.npy`` shards of ``(n, C, h, w)``, read back
  memory-mapped (2 MiB per item at 256 x 64 x 64). Item ``i * views + v`` is view ``v`` of image ``i``.
- :class:`MaskCache`: the teacher's automatic masks per image, bit-packed (``numpy.packbits`` along W) at
  ``mask_side`` on the longer side, with their boxes and scores, in compressed ``.npz`` shards.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

MANIFEST = "manifest.json"
_DOWNSAMPLE_CHUNK = 16
_UMASK = os.umask(0)
os.umask(_UMASK)


class CacheMismatchError(ValueError):
    """A cache folder holds a cache made from other inputs than the ones asked for."""


def _atomic_write(path: Path, write) -> None:
    """``write(file_object)`` into a temporary file beside ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as fh:
            write(fh)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def atomic_save(obj: Any, path) -> None:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    _atomic_write(Path(path), lambda fh: torch.save(obj, fh))


def _differences(found: Dict[str, Any], expected: Dict[str, Any]) -> List[str]:
    keys = sorted(set(found) | set(expected))
    out = []
    for key in keys:
        a, b = found.get(key), expected.get(key)
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            if key == "images":
                out.append(f"images ({len(a or [])} images in the cache, {len(b or [])} asked for, or other names)")
            else:
                out.append(f"{key} (cache: {json.dumps(a, sort_keys=True)}, asked for: {json.dumps(b, sort_keys=True)})")
    return out


class ShardedCache:
    """The shards and manifest of one cache folder (see the module docstring)."""

    kind = "cache"
    suffix = ".bin"

    def __init__(self, root, manifest: Dict[str, Any], num_items: int, shard_size: int) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.root = Path(root)
        self.manifest = {"kind": self.kind, "num_items": int(num_items), "shard_size": int(shard_size), **manifest}
        self.num_items = int(num_items)
        self.shard_size = int(shard_size)
        self.num_shards = -(-self.num_items // self.shard_size)

    # ------------------------------------------------------------------------------------ manifest
    def check_manifest(self) -> bool:
        """True if the folder has this cache's manifest, False if it has none; CacheMismatchError otherwise."""
        path = self.root / MANIFEST
        if not path.exists():
            return False
        found = json.loads(path.read_text())
        differences = _differences(found, self.manifest)
        if differences:
            raise CacheMismatchError(
                f"the {self.kind} cache in {str(self.root)!r} was made from other inputs; differing: "
                + "; ".join(differences) + ". Use another --cache-dir, or delete that folder to rebuild it.")
        return True

    def write_manifest(self) -> None:
        if not self.check_manifest():
            text = json.dumps(self.manifest, indent=1, sort_keys=True).encode()
            _atomic_write(self.root / MANIFEST, lambda fh: fh.write(text))

    # ------------------------------------------------------------------------------------ shards
    def shard_items(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_items))

    def shard_path(self, shard: int) -> Path:
        return self.root / f"{self.kind}-{shard:05d}{self.suffix}"

    def missing_shards(self, rank: int = 0, world_size: int = 1) -> List[int]:
        """The shards not on disk yet that rank ``rank`` of ``world_size`` computes."""
        return [k for k in range(rank, self.num_shards, world_size) if not self.shard_path(k).exists()]

    def complete(self) -> bool:
        return self.check_manifest() and not self.missing_shards()

    def locate(self, item: int) -> Tuple[int, int]:
        if not 0 <= item < self.num_items:
            raise IndexError(f"item {item} out of range for a cache of {self.num_items} items")
        return divmod(item, self.shard_size)


class EmbeddingCache(ShardedCache):
    """Teacher embeddings: one float16 (C, h, w) array per item; shards are memory-mapped ``.npy`` files."""

    kind = "embeddings"
    suffix = ".npy"

    def __init__(self, root, manifest: Dict[str, Any], num_items: int, shard_size: int) -> None:
        super().__init__(root, manifest, num_items, shard_size)
        self._open: Dict[int, np.ndarray] = {}

    def write_shard(self, shard: int, embeddings: torch.Tensor) -> None:
        expected = len(self.shard_items(shard))
        if embeddings.shape[0] != expected:
            raise ValueError(f"shard {shard} holds {expected} items, got {embeddings.shape[0]} embeddings")
        array = embeddings.detach().to("cpu", torch.float16).numpy()
        _atomic_write(self.shard_path(shard), lambda fh: np.save(fh, array))

    def read(self, item: int) -> torch.Tensor:
        shard, offset = self.locate(item)
        if shard not in self._open:  # per process: DataLoader workers each map the shards they read
            self._open[shard] = np.load(self.shard_path(shard), mmap_mode="r")
        return torch.from_numpy(np.array(self._open[shard][offset]))

    def __getstate__(self):  # memory maps do not cross into worker processes; each opens its own
        state = dict(self.__dict__)
        state["_open"] = {}
        return state


class MaskCache(ShardedCache):
    """The teacher's automatic masks per image: bit-packed masks at ``mask_side`` on the longer side, boxes
    (XYWH, original pixels) and (predicted IoU, stability score), one image per item."""

    kind = "masks"
    suffix = ".npz"
    _OPEN_SHARDS = 2  # npz files are read lazily, key by key: keep a couple open per process

    def __init__(self, root, manifest: Dict[str, Any], num_items: int, shard_size: int) -> None:
        super().__init__(root, manifest, num_items, shard_size)
        self._open: Dict[int, Any] = {}

    def write_shard(self, shard: int, per_image: Sequence[Dict[str, np.ndarray]]) -> None:
        """``per_image``: for each item of the shard, ``masks`` (N, h, w) bool at cache resolution,
        ``original_size`` (H, W), ``boxes`` (N, 4) XYWH and ``scores`` (N, 2)."""
        items = self.shard_items(shard)
        if len(per_image) != len(items):
            raise ValueError(f"shard {shard} holds {len(items)} images, got {len(per_image)}")
        arrays = {}
        for item, entry in zip(items, per_image):
            masks = np.asarray(entry["masks"], dtype=bool)
            arrays[f"packed_{item}"] = np.packbits(masks, axis=-1)
            arrays[f"shape_{item}"] = np.array([*masks.shape, *entry["original_size"]], dtype=np.int64)
            arrays[f"boxes_{item}"] = np.asarray(entry["boxes"], dtype=np.float32).reshape(-1, 4)
            arrays[f"scores_{item}"] = np.asarray(entry["scores"], dtype=np.float32).reshape(-1, 2)
        _atomic_write(self.shard_path(shard), lambda fh: np.savez_compressed(fh, **arrays))

    def read(self, item: int) -> Dict[str, Any]:
        """``masks`` (N, h, w) bool tensor, ``original_size`` (H, W), ``boxes`` (N, 4) float32 XYWH tensor,
        ``scores`` (N, 2) float32 tensor."""
        shard, _ = self.locate(item)
        if shard not in self._open:
            if len(self._open) >= self._OPEN_SHARDS:
                self._open.pop(next(iter(self._open))).close()
            self._open[shard] = np.load(self.shard_path(shard))
        data = self._open[shard]
        n, h, w, height, width = data[f"shape_{item}"].tolist()
        masks = np.unpackbits(data[f"packed_{item}"], axis=-1, count=w).astype(bool) if n else np.zeros((0, h, w), bool)
        return {"masks": torch.from_numpy(masks.reshape(n, h, w)), "original_size": (height, width),
                "boxes": torch.from_numpy(data[f"boxes_{item}"]), "scores": torch.from_numpy(data[f"scores_{item}"])}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"] = {}
        return state


def cache_resolution(height: int, width: int, mask_side: int) -> Tuple[int, int]:
    """The (h, w) masks of an (H, W) image are stored at: longer side ``mask_side``, never upsampled."""
    from litesam_kernels.segment_everything import resized_shape

    if max(height, width) <= mask_side:
        return int(height), int(width)
    return resized_shape(height, width, mask_side)


def downsample_masks(masks: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(N, H, W) bool masks -> (N, h, w) bool: a cell is set when at least half of its area is (area
    resampling, so thin structures keep their extent up to the cell size)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.bool()
    if masks.shape[0] == 0:
        return torch.zeros((0, *size), dtype=torch.bool, device=masks.device)
    chunks = [torch.nn.functional.interpolate(chunk[:, None].float(), size=size, mode="area")[:, 0] >= 0.5
              for chunk in masks.split(_DOWNSAMPLE_CHUNK)]  # bounds the float copy of full-size masks
    return torch.cat(chunks)


__all__ = ["CacheMismatchError", "EmbeddingCache", "MaskCache", "ShardedCache", "atomic_save", "cache_resolution",
           "downsample_masks"]
