"""Small device tensors of kernel scalars (thresholds), cached per (values, dtype, device).

Triton passes Python floats as float32 scalars (the interpreter too, whatever the annotation), so a
threshold that must be compared in float64 is read from memory. Building that one-element tensor on every
call is a host-to-device copy per call; the values a pipeline uses repeat (SAM's 0.7, 0.0 +- 1.0), so
each distinct (values, dtype, device) is copied once and reused.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Sequence

import torch

_MAX_ENTRIES = 256  # distinct threshold tuples kept; the oldest is dropped beyond that
_cache: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_lock = threading.Lock()


def device_constants(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A read-only 1-D ``dtype`` tensor holding ``values`` on ``device`` (shared: never write to it)."""
    device = torch.device(device)
    key = (tuple(float(v) for v in values), dtype, device)
    with _lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            return cached
    constants = torch.tensor(key[0], dtype=dtype, device=device)
    with _lock:
        _cache[key] = constants
        while len(_cache) > _MAX_ENTRIES:
            _cache.popitem(last=False)
    return constants
