"""Small device tensors without host waits: cached constants, and host data copied asynchronously.

``torch.tensor(values, device=cuda)`` / ``torch.as_tensor(array, device=cuda)`` copy from pageable host
memory with ``cudaMemcpyAsync`` followed by ``cudaStreamSynchronize``: the host waits for all queued GPU
work, once per call. In a pipeline's loop (per crop, per decoder call) that serialises host and device.

- :func:`device_constants`: a read-only tensor of a few values (thresholds, crop offsets, normalisation
  constants), cached per (values, dtype, device) and built with device fills (the values travel as kernel
  arguments): no copy and no wait, even the first time, and safe to build during CUDA-graph capture;
- :func:`host_to_device`: data that lives on the host (a point grid, an image, per-image sizes) built there
  and copied with ``non_blocking=True``: from pageable memory the driver stages the bytes at once and
  returns without waiting for the device (no stream synchronisation; the source may be freed right after);
- :class:`DeviceCache`: the bounded cache behind ``device_constants`` and the resize tables of
  ``ops.postprocess_masks``, safe under CUDA graphs (an entry a graph may read is never evicted).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Dict, Hashable, List, Optional, Sequence

import numpy as np
import torch


class DeviceCache:
    """A bounded least-recently-used cache of device tensors (or tuples of them) that CUDA graphs can hold.

    A CUDA graph (``torch.compile(mode="reduce-overhead")``, ``torch.cuda.graph``) bakes in the addresses
    of the tensors its kernels read; if a cache dropped such a tensor, the graph's next replay would read
    freed (and possibly reused) memory. So an entry looked up or built while the current CUDA stream is
    capturing is **pinned**: kept for the life of the process, never evicted (each captured graph pins
    what it reads: as many entries as graphs, each far smaller than the graph's own memory pool). The
    other entries are dropped least recently used first beyond ``max_entries``.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = int(max_entries)
        self._entries: "OrderedDict[Hashable, object]" = OrderedDict()
        self._pinned: Dict[Hashable, object] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], object]):
        """The entry of ``key``, built by ``build()`` (outside the lock) when missing."""
        pin = capturing()
        with self._lock:
            value = self._lookup(key, pin)
        if value is not None:
            return value
        value = build()
        with self._lock:
            existing = self._lookup(key, pin)  # another thread may have built it meanwhile
            if existing is not None:
                return existing
            if pin:
                self._pinned[key] = value
            else:
                self._entries[key] = value
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return value

    def _lookup(self, key, pin: bool):
        value = self._pinned.get(key)
        if value is not None:
            return value
        value = self._entries.get(key)
        if value is not None:
            if pin:
                self._pinned[key] = self._entries.pop(key)
            else:
                self._entries.move_to_end(key)
        return value

    def pinned_keys(self) -> List[Hashable]:
        with self._lock:
            return list(self._pinned)

    def keys(self) -> List[Hashable]:
        """Every cached key: the pinned ones, then the others least recently used first."""
        with self._lock:
            return [*self._pinned, *self._entries]

    def clear(self) -> None:
        """Drop the unpinned entries (pinned ones may be held by a live CUDA graph)."""
        with self._lock:
            self._entries.clear()


def capturing() -> bool:
    """Is the current CUDA stream capturing a graph? (False without CUDA initialised: nothing can capture.)"""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


_constants = DeviceCache(256)  # distinct constant tuples (beyond: least recently used dropped, unless pinned)


def _key_values(values: Sequence, dtype: torch.dtype) -> tuple:
    convert = float if dtype.is_floating_point else int
    return tuple(convert(v) for v in values)


def device_constants(values: Sequence, dtype: torch.dtype, device) -> torch.Tensor:
    """A read-only 1-D ``dtype`` tensor holding ``values`` on ``device`` (shared: never write to it).

    Each value is rounded to ``dtype`` as ``torch.tensor(values, dtype=dtype)`` rounds it (fill takes a
    float64 / int64 scalar)."""
    device = torch.device(device)
    values = _key_values(values, dtype)

    def build():
        constants = torch.empty(len(values), dtype=dtype, device=device)
        for i, value in enumerate(values):
            constants[i].fill_(value)
        return constants

    return _constants.get((values, dtype, device), build)


def host_to_device(data, device, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``torch.as_tensor(data, dtype=dtype)`` on the host, copied to ``device`` without a host wait (see the
    module docstring); the tensor itself on a CPU ``device``. A read-only numpy array (``np.asarray`` of a
    PIL image, a memory map) is copied first: a tensor must not alias memory torch may not write."""
    if isinstance(data, np.ndarray) and not data.flags.writeable:
        data = data.copy()
    host = torch.as_tensor(data, dtype=dtype)
    return host.to(device, non_blocking=True)


__all__ = ["DeviceCache", "capturing", "device_constants", "host_to_device"]
