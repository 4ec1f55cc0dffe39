"""Input validation shared by every op: clear ValueError/TypeError naming the argument."""
from __future__ import annotations

import functools
import math
import numbers
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np
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


def check_int(name: str, value, *, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """A Python/NumPy int (not a bool, not a float such as 40.0 or 40.5) within [low, high]; returned as int.
    A ``torch.SymInt`` (an op's int argument while torch.compile traces with dynamic shapes) is range-checked
    and returned as it is."""
    if isinstance(value, torch.SymInt):
        pass
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    else:
        value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else str(low)
        hi = "inf" if high is None else str(high)
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


# ---------------------------------------------------------------------------------------------- op calls
_INT64_RANGE = (-(2**63), 2**63 - 1)


def _accepts(kind: str, value) -> bool:
    """Whether ``value`` has the Python type the dispatcher converts to schema type ``kind``."""
    if kind.startswith("Optional["):
        return value is None or _accepts(kind[len("Optional["):-1], value)
    if kind == "Tensor":
        return isinstance(value, torch.Tensor)
    if kind in ("float", "int", "SymInt", "bool"):
        if isinstance(value, torch.Tensor):  # the dispatcher unwraps one-element tensors (no autograd)
            return value.numel() == 1 and not value.requires_grad
        if kind == "float":
            return isinstance(value, numbers.Real)
        if kind == "bool":
            return isinstance(value, (bool, numbers.Integral, np.bool_))
        return isinstance(value, numbers.Integral)
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("List["):
        element = kind[len("List["):-1]
        return isinstance(value, (list, tuple, torch.Size)) and all(_accepts(element, v) for v in value)
    return True  # a schema type the ops do not use: the dispatcher decides


def _describe(kind: str) -> str:
    optional = kind.startswith("Optional[")
    inner = kind[len("Optional["):-1] if optional else kind
    words = {"Tensor": "a torch.Tensor", "float": "a real number", "int": "an int", "SymInt": "an int",
             "bool": "a bool", "str": "a str", "List[int]": "a list of ints"}.get(inner, inner)
    return f"{words} or None" if optional else words


@functools.lru_cache(maxsize=None)
def _schema_arguments(op) -> Tuple[Tuple[str, str], ...]:
    return tuple((a.name, str(a.type)) for a in op.default._schema.arguments)


def check_op_arguments(op, *args) -> None:
    """TypeError naming the argument where a positional argument of ``torch.ops.litesam.<op>`` has a Python
    type its schema does not take (a numpy array or a list for a Tensor, a float for an int, ...), and
    ValueError for an int outside int64: the dispatcher would raise a RuntimeError for both. The op's own
    checks (shapes, dtypes, ranges) run inside it."""
    for (name, kind), value in zip(_schema_arguments(op), args):
        if not _accepts(kind, value):
            raise TypeError(f"{name} must be {_describe(kind)}, got {type(value).__name__}")
        if kind.removeprefix("Optional[").startswith(("int", "SymInt")) and isinstance(value, numbers.Integral):
            if not _INT64_RANGE[0] <= int(value) <= _INT64_RANGE[1]:
                raise ValueError(f"{name} must fit in int64, got {value}")


def call_op(op, *args):
    """``op(*args)`` (an ``OpOverloadPacket`` such as ``torch.ops.litesam.nms``) after
    :func:`check_op_arguments`: what every public wrapper that passes its arguments straight to its op uses,
    so that bad Python types raise TypeError naming the argument instead of the dispatcher's RuntimeError.
    Skipped while torch.compile traces (the schema is not traceable; tracing checks the types itself)."""
    if not torch.compiler.is_compiling():
        check_op_arguments(op, *args)
    return op(*args)


def check_gradient(grad, output: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> None:
    """The incoming gradient of a backward op: a tensor with the shape, dtype and device of the forward
    ``output`` (a backward op is a ``torch.ops.litesam`` op too: a wrong gradient must not reach a kernel)."""
    check_tensor("grad", grad, expected=f"(the gradient of {output})")
    if tuple(grad.shape) != tuple(shape):
        raise ValueError(f"grad must have the shape of {output} {tuple(shape)}, got {_shape(grad)}")
    if grad.dtype != dtype:
        raise TypeError(f"grad must have the dtype of {output} ({dtype}), got {grad.dtype}")
    if grad.device != torch.device(device):
        raise ValueError(f"grad must be on the device of {output} ({device}), got {grad.device}")
