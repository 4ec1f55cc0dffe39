"""Autocast off, for code that sets its own dtypes.

A ``torch.library.custom_op`` has no autocast rule, so under ``torch.autocast`` its body runs with autocast
still on: the torch matmuls of a reference would silently run in 16 bits and return 16-bit outputs that
contradict the op's fake (meta) implementation. The ops define their own dtype rules (16-bit operands,
float32 accumulation, outputs in the input's dtype), so their bodies switch autocast off; so do the fused
encoder (it casts explicitly) and the prompt encoder's Fourier features (kept in float32).
"""
from __future__ import annotations

import contextlib
from typing import Union

import torch


def autocast_off(device: Union[torch.device, str]):
    """A context with autocast disabled for ``device`` (a device or a device type), or a no-op one (cheaper)
    when it is off already."""
    device_type = device if isinstance(device, str) else device.type
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
