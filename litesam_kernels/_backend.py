"""The one place that decides which implementation of an op runs.

Order per call: ``cuda`` (compiled kernel in ``litesam_kernels._C``, tensor on CUDA) -> ``triton``
(tensor on CUDA) -> ``cpu`` (compiled C++ kernel, tensor on CPU) -> ``reference`` (pure PyTorch).
Triton runs CPU tensors only when forced and ``TRITON_INTERPRET=1`` (the interpreter is for tests:
correct, but far slower than the C++ kernel).

Force one with the environment variable ``LITESAM_BACKEND=reference|triton|cuda|cpu`` or, for a block
of code, ``with litesam_kernels.use_backend("triton"):``; a forced backend that cannot run raises
:class:`BackendUnavailableError` saying why, it never falls back silently.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch

BACKENDS = ("cuda", "triton", "cpu", "reference")
_ENV_VAR = "LITESAM_BACKEND"
_override = threading.local()


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run this op on this input."""


@dataclass(frozen=True)
class OpImplementations:
    """What exists for one op: the compiled kernel's op name (``torch.ops.litesam.<kernel>``) and
    whether a Triton kernel exists. The reference always exists."""

    name: str
    compiled_kernel: Optional[str] = None
    has_triton: bool = False


_REGISTRY: dict = {}


def register(op: OpImplementations) -> OpImplementations:
    """Declare an op's implementations (called once by its ops/ module)."""
    _REGISTRY[op.name] = op
    return op


def implementations(name: str) -> OpImplementations:
    """The registered implementations of op ``name`` (after ``import litesam_kernels``)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


# ---------------------------------------------------------------------------------------------- discovery
@functools.lru_cache(maxsize=None)
def _load_extension() -> Tuple[Optional[object], Optional[str]]:
    try:
        module = importlib.import_module("litesam_kernels._C")
    except Exception as exc:  # ImportError, or an undefined symbol from a mismatched torch
        return None, f"{type(exc).__name__}: {exc}"
    return module, None


def extension():
    """The compiled module ``litesam_kernels._C``, or None when it is missing or fails to load."""
    return _load_extension()[0]


@functools.lru_cache(maxsize=None)
def _extension_build_info() -> dict:
    module, error = _load_extension()
    if module is None:
        return {"loaded": False, "error": error, "cuda": False, "cuda_version": None, "cuda_archs": None}
    info = dict(module.build_info())
    info.update(loaded=True, error=None, path=getattr(module, "__file__", None))
    return info


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_status() -> Tuple[bool, Optional[str], Optional[str]]:
    try:
        import triton  # noqa: F401
    except Exception as exc:
        return False, None, f"triton is not importable ({type(exc).__name__}: {exc})"
    return True, getattr(triton, "__version__", "?"), None


def _compiled_kernel_registered(kernel: str, dispatch_key: str) -> bool:
    if extension() is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"litesam::{kernel}", dispatch_key)
    except RuntimeError:  # the op itself is unknown: an extension built before the op existed
        return False


# ---------------------------------------------------------------------------------------------- choice
def forced_backend() -> Optional[str]:
    """The backend forced by ``use_backend`` (innermost) or ``LITESAM_BACKEND``, else None."""
    forced = getattr(_override, "backend", None) or os.environ.get(_ENV_VAR) or None
    if forced is not None and forced not in BACKENDS:
        raise ValueError(f"{_ENV_VAR} must be one of {', '.join(BACKENDS)}, got {forced!r}")
    return forced


@contextlib.contextmanager
def use_backend(backend: Optional[str]) -> Iterator[None]:
    """Force ``backend`` for the ops called inside the block (this thread only); None lifts it."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} or None, got {backend!r}")
    previous = getattr(_override, "backend", None)
    _override.backend = backend
    try:
        yield
    finally:
        _override.backend = previous


def why_not(backend: str, op: OpImplementations, device: torch.device) -> Optional[str]:
    """None if ``backend`` can run ``op`` on ``device``, else the reason it cannot."""
    device = torch.device(device)
    if backend == "reference":
        return None
    if backend in ("cuda", "cpu"):
        wanted = "cuda" if backend == "cuda" else "cpu"
        if device.type != wanted:
            return f"the {backend} backend runs {wanted} tensors, got a {device.type} tensor"
        if op.compiled_kernel is None:
            return f"{op.name} has no compiled {backend} kernel"
        module, error = _load_extension()
        if module is None:
            return f"the compiled extension litesam_kernels._C is not available ({error})"
        if backend == "cuda" and not _extension_build_info()["cuda"]:
            return "litesam_kernels._C was built without CUDA (rebuild with nvcc and a CUDA torch)"
        if not _compiled_kernel_registered(op.compiled_kernel, "CUDA" if backend == "cuda" else "CPU"):
            return f"litesam::{op.compiled_kernel} has no {backend} kernel registered"
        return None
    if backend == "triton":
        if not op.has_triton:
            return f"{op.name} has no Triton kernel"
        ok, _, error = _triton_status()
        if not ok:
            return error
        if device.type == "cuda":
            return None
        if device.type == "cpu":
            return None if interpreter_on() else "Triton runs CPU tensors only under TRITON_INTERPRET=1"
        return f"Triton does not run {device.type} tensors"
    raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def choose(op: OpImplementations, device: torch.device) -> str:
    """The backend that runs ``op`` on a tensor on ``device`` (see the module docstring)."""
    forced = forced_backend()
    if forced is not None:
        reason = why_not(forced, op, device)
        if reason is not None:
            raise BackendUnavailableError(f"backend {forced!r} was forced but cannot run {op.name}: {reason}")
        return forced
    for backend in BACKENDS:
        if backend == "triton" and torch.device(device).type != "cuda":
            continue  # the interpreter runs CPU tensors only when asked for
        if why_not(backend, op, device) is None:
            return backend
    return "reference"


def compiled_op(op: OpImplementations):
    """The compiled kernel as a torch op (valid once ``choose`` returned cuda or cpu)."""
    return getattr(torch.ops.litesam, op.compiled_kernel)


# ---------------------------------------------------------------------------------------------- report
def backend_info() -> dict:
    """What was found at run time and why anything is missing: the compiled extension (and whether it
    has CUDA, which archs), Triton (version, interpreter), torch and the visible GPU, the forced backend."""
    triton_ok, triton_version, triton_error = _triton_status()
    cuda_available = torch.cuda.is_available()
    return {
        "extension": _extension_build_info(),
        "triton": {
            "available": triton_ok,
            "version": triton_version,
            "interpreter": interpreter_on(),
            "error": triton_error,
        },
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cuda_available": cuda_available,
            "device": torch.cuda.get_device_name() if cuda_available else None,
        },
        "forced_backend": os.environ.get(_ENV_VAR) or None,
        "order": list(BACKENDS),
    }
