"""Input validation shared by every op: clear ValueError/TypeError naming the argument."""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional, Sequence

import torch


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + (",)" if t.dim() == 1 else ")")


def check_tensor(
    name: str,
    value,
    *,
    dim: Optional[int] = None,
    last_dims: Optional[Sequence[int]] = None,
    dtypes: Optional[Iterable[torch.dtype]] = None,
    floating: bool = False,
    integral: bool = False,
    expected: str = "",
) -> torch.Tensor:
    """Raise TypeError/ValueError unless `value` is a tensor of the given rank, trailing sizes and dtype."""
    what = f" {expected}" if expected else ""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor{what}, got {type(value).__name__}")
    if dim is not None and value.dim() != dim:
        raise ValueError(f"{name} must be a {dim}-D tensor{what}, got shape {_shape(value)}")
    if last_dims is not None:
        tail = tuple(value.shape[value.dim() - len(last_dims):]) if value.dim() >= len(last_dims) else None
        if tail is None or any(e is not None and e != s for e, s in zip(last_dims, tail)):
            raise ValueError(f"{name} must have shape{what}, got {_shape(value)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor{what}, got {value.dtype}")
    if integral and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor{what}, got {value.dtype}")
    if dtypes is not None:
        allowed = tuple(dtypes)
        if value.dtype not in allowed:
            names = ", ".join(str(d).replace("torch.", "") for d in allowed)
            raise TypeError(f"{name} must have dtype in ({names}){what}, got {value.dtype}")
    return value


def check_same_device(reference_name: str, reference: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    for name, t in others.items():
        if t is not None and t.device != reference.device:
            raise ValueError(f"{name} must be on the device of {reference_name} ({reference.device}), got {t.device}")


def check_length(name: str, value: torch.Tensor, expected: int, expected_what: str) -> None:
    if value.shape[0] != expected:
        raise ValueError(f"{name} must have {expected} entries ({expected_what}), got {value.shape[0]}")


def check_real(name: str, value, *, low: Optional[float] = None, high: Optional[float] = None) -> float:
    """A real Python/NumPy number within [low, high] (NaN rejected); returned as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.requires_grad:
            value = value.item()
        else:
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value
