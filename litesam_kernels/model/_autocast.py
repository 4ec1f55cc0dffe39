"""Autocast off, for code that casts explicitly (the fused encoder, Fourier features)."""
import contextlib

import torch


def autocast_off(device_type: str):
    """A context with autocast disabled for ``device_type``, or a no-op one (cheaper) when it is off already."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
