"""Shared test helpers: which backends can run here, realistic random inputs."""
import pytest
import torch

import litesam_kernels as lk
from litesam_kernels import _backend


def runnable_backends(op: _backend.OpImplementations, device="cpu"):
    """pytest params for every backend of `op`, each skipped (with the reason) where it cannot run here."""
    params = []
    for backend in _backend.BACKENDS:
        reason = _backend.why_not(backend, op, torch.device(device))
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(backend, marks=marks, id=backend))
    return params


def random_boxes(n, *, image_size=1024.0, max_size=256.0, dtype=torch.float32, generator=None):
    """XYXY boxes with realistic overlap: centres uniform in the image, sizes up to max_size."""
    centres = torch.rand(n, 2, generator=generator) * image_size
    sizes = torch.rand(n, 2, generator=generator) * max_size + 1.0
    return torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1).to(dtype)


__all__ = ["lk", "random_boxes", "runnable_backends"]
