"""Custom-op bodies run outside autocast.

A ``torch.library.custom_op`` has no autocast rule, so under ``torch.autocast`` its body runs with autocast
still on: the torch matmuls of a reference would silently run in 16 bits and return 16-bit outputs that
contradict the op's fake (meta) implementation. The ops define their own dtype rules (16-bit operands,
float32 accumulation, outputs in the input's dtype), so their bodies switch autocast off.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def autocast_off(device: torch.device):
    """Autocast disabled for ``device``'s type inside the block (free when it is off already)."""
    if torch.is_autocast_enabled(device.type):
        with torch.autocast(device.type, enabled=False):
            yield
    else:
        yield
