"""Small device tensors without host waits: cached constants, and host data copied asynchronously.

``torch.tensor(values, device=cuda)`` / ``torch.as_tensor(array, device=cuda)`` copy from pageable host
memory with ``cudaMemcpyAsync`` followed by ``cudaStreamSynchronize``: the host waits for all queued GPU
work, once per call. In a pipeline's loop (per crop, per decoder call) that serialises host and device.

- :func:`device_constants`: a read-only tensor of a few values (thresholds, crop offsets, normalisation
  constants), cached per (values, dtype, device) and built with device fills (the values travel as kernel
  arguments): no copy and no wait, even the first time, and safe to build during CUDA-graph capture;
- :func:`host_to_device`: data that lives on the host (a point grid, an image, per-image sizes) built there
  and copied with ``non_blocking=True``: from pageable memory the driver stages the bytes at once and
  returns without waiting for the device (no stream synchronisation; the source may be freed right after).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional, Sequence

import torch

_MAX_CONSTANTS = 256  # distinct constant tuples kept; the least recently used is dropped beyond that
_constants: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_lock = threading.Lock()


def _key_values(values: Sequence, dtype: torch.dtype) -> tuple:
    convert = float if dtype.is_floating_point else int
    return tuple(convert(v) for v in values)


def device_constants(values: Sequence, dtype: torch.dtype, device) -> torch.Tensor:
    """A read-only 1-D ``dtype`` tensor holding ``values`` on ``device`` (shared: never write to it).

    Each value is rounded to ``dtype`` as ``torch.tensor(values, dtype=dtype)`` rounds it (fill takes a
    float64 / int64 scalar)."""
    device = torch.device(device)
    key = (_key_values(values, dtype), dtype, device)
    with _lock:
        cached = _constants.get(key)
        if cached is not None:
            _constants.move_to_end(key)
            return cached
    constants = torch.empty(len(key[0]), dtype=dtype, device=device)
    for i, value in enumerate(key[0]):
        constants[i].fill_(value)
    with _lock:
        _constants[key] = constants
        while len(_constants) > _MAX_CONSTANTS:
            _constants.popitem(last=False)
    return constants


def host_to_device(data, device, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``torch.as_tensor(data, dtype=dtype)`` on the host, copied to ``device`` without a host wait (see the
    module docstring); the tensor itself on a CPU ``device``."""
    host = torch.as_tensor(data, dtype=dtype)
    return host.to(device, non_blocking=True)


__all__ = ["device_constants", "host_to_device"]
