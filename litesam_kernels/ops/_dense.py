"""Shared plumbing of the dense (LiteViT) ops: dtypes, channels-last checks, the accumulation dtype, GELU.
Reference backward passes are written out analytically: a custom op's body runs below the autograd
dispatch key, so it cannot differentiate the reference forward (the tests do that, outside the op)."""
from __future__ import annotations

import torch

from litesam_kernels._checks import check_same_device, check_tensor

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Kernels accumulate in float32, float64 inputs in float64 (so gradcheck can run on them)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_nhwc(name: str, x, channels: int = None) -> torch.Tensor:
    check_tensor(name, x, dim=4, dtypes=DTYPES, expected="(B, H, W, C) channels-last")
    if channels is not None and x.shape[3] != channels:
        raise ValueError(f"{name} must have {channels} channels in its last dim, got shape {tuple(x.shape)}")
    return x


def check_vector(name: str, value, length: int, ref_name: str, ref: torch.Tensor) -> None:
    check_tensor(name, value, dim=1, floating=True, expected=f"({length},)")
    if value.shape[0] != length:
        raise ValueError(f"{name} must have {length} entries (one per channel of {ref_name}), got {value.shape[0]}")
    check_same_device(ref_name, ref, **{name: value})


def check_like(name: str, value, ref_name: str, ref: torch.Tensor) -> None:
    check_tensor(name, value, floating=True)
    if value.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(value.shape)}")
    if value.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {value.dtype}")
    check_same_device(ref_name, ref, **{name: value})


def gelu_grad(u: torch.Tensor) -> torch.Tensor:
    """d/du of the exact (erf) GELU."""
    cdf = 0.5 * (1.0 + torch.erf(u * 0.7071067811865476))
    return cdf + u * torch.exp(-0.5 * u * u) * 0.3989422804014327
