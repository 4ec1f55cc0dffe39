"""Hypothesis profiles and shared pieces of the fuzz tests (``tests/test_fuzz_*.py``).

Profiles, chosen by ``HYPOTHESIS_PROFILE`` (default ``ci``):

- ``ci``: derandomized (a fixed seed: every run draws the same examples, so CI is reproducible), each test's
  own small example count, no deadline (the Triton interpreter is slow and machines are shared), no example
  database (nothing written to the checkout). The whole fuzz set fits in about 3 minutes on 2 cores.
- ``thorough``: random seeds, ``THOROUGH_FACTOR`` times the examples, failures saved to ``.hypothesis/``
  and replayed first on the next run. ``HYPOTHESIS_PROFILE=thorough pytest tests/test_fuzz_*.py``.
- ``sanitizer``: as ``ci`` with a fifth of the examples (at least one): the ``gpu``-marked fuzz tests under
  compute-sanitizer (benchmarks/gpu_check.sh), whose tools slow every launch 10-100x.

Inputs are drawn as a few choices (shape, dtype, layout, value pattern, a seed) from which torch builds
the tensors: hypothesis shrinks the choices, and a failure prints a short, reproducible recipe.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litesam_kernels import _backend

THOROUGH_FACTOR = 20
_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much])
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("thorough", **_COMMON)
settings.register_profile("sanitizer", derandomize=True, database=None, **_COMMON)
PROFILES = ("ci", "thorough", "sanitizer")
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in PROFILES:
    raise ValueError(f"HYPOTHESIS_PROFILE must be one of {PROFILES}, got {PROFILE!r}")
settings.load_profile(PROFILE)
SANITIZER_DIVISOR = 5


def examples(ci: int) -> int:
    """A test's example count: ``ci`` in the ci profile, ``THOROUGH_FACTOR`` times that in thorough, a
    ``SANITIZER_DIVISOR``-th (at least 1) under the sanitizer."""
    if PROFILE == "thorough":
        return ci * THOROUGH_FACTOR
    if PROFILE == "sanitizer":
        return max(1, ci // SANITIZER_DIVISOR)
    return ci


def fuzz(check, *strategies, max_examples: int) -> None:
    """Run ``check(*drawn)`` on ``max_examples`` (scaled by the profile) draws of ``strategies``.

    Called from inside a parametrized test, so that each backend can draw its own sizes and counts
    (Triton under the interpreter takes about 1 ms per program: its examples are fewer and smaller)."""
    settings(max_examples=examples(max_examples))(given(*strategies)(check))()


# ---------------------------------------------------------------------------------------------- backends
def fuzz_targets(op_name: str):
    """pytest params ``(backend, device)`` for every backend of op ``op_name``: on CPU tensors the
    reference, the C++ kernel and Triton (under the interpreter); on CUDA tensors (``gpu``-marked) the CUDA
    kernel and Triton. Each is skipped, with the reason, where it cannot run."""
    op = _backend.implementations(op_name)
    params = []
    for device, backends, marks in (("cpu", ("reference", "cpu", "triton"), []),
                                    ("cuda", ("cuda", "triton"), [pytest.mark.gpu])):
        for backend in backends:
            reason = _backend.why_not(backend, op, torch.device(device))
            skip = [pytest.mark.skip(reason=reason)] if reason else []
            params.append(pytest.param(backend, device, marks=marks + skip, id=f"{backend}-{device}"))
    return params


def interpreted(backend: str, device: str) -> bool:
    """Triton under the interpreter: about 1 ms per program, so a few small examples only."""
    return backend == "triton" and device == "cpu"


# ---------------------------------------------------------------------------------------------- values
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SAM_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
seeds = st.integers(0, 2**32 - 1)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout: ``contiguous``; ``strided`` (every other element of a
    twice-as-wide buffer along the last dim); ``transposed`` (the last two dims stored swapped); for 4-D
    tensors also ``channels_last`` (torch's channels_last memory format) and ``nchw`` (a channels-last
    view of an NCHW buffer: what ``x.permute(0, 2, 3, 1)`` of a conv output gives)."""
    if layout == "contiguous" or t.dim() == 0:
        return t.contiguous()
    if layout == "strided":
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if layout == "transposed":
        if t.dim() < 2:
            return relayout(t, "strided")
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "nchw" and t.dim() == 4:
        return t.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    return relayout(t, "transposed")


layouts = st.sampled_from(("contiguous", "strided", "transposed"))
