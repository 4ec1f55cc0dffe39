"""Which ``tl.dot`` input precision a kernel uses, following torch's own switches as eager code does.

fp32 operands: eager ``F.linear``/``matmul`` use TF32 tensor cores only when
``torch.backends.cuda.matmul.allow_tf32`` is set (off by default), and cuDNN convolutions (a ConvMLP's 1x1
convs in eager) when ``torch.backends.cudnn.allow_tf32`` is set (on by default). The fused kernels follow the
switch of the eager op they replace (``kind="matmul"`` or ``kind="conv"``):

- allowed -> ``"tf32"``: 10-bit mantissa products, fp32 accumulation; relative error per product about 1e-3
  (eager cuBLAS/cuDNN TF32 has the same error);
- not allowed -> ``"ieee"``: exact fp32 FMA products, as eager computes them (no tensor cores).

``LITESAM_FP32_DOT=ieee|tf32x3|tf32`` overrides both (``tf32x3``: three TF32 products per product, about
fp32 accuracy, relative error about 1e-6, on tensor cores). fp16/bf16 operands always use tensor cores
(the setting does not apply to them) and fp64 is always ``"ieee"``.
"""
from __future__ import annotations

import os

import torch

FP32_DOT_ENV = "LITESAM_FP32_DOT"
FP32_DOT_CHOICES = ("ieee", "tf32x3", "tf32")
KINDS = ("matmul", "conv")


def fp32_dot_precision(kind: str) -> str:
    """The ``input_precision`` for fp32 ``tl.dot`` operands of a kernel that replaces an eager ``kind`` op."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    forced = os.environ.get(FP32_DOT_ENV)
    if forced:
        if forced not in FP32_DOT_CHOICES:
            raise ValueError(f"{FP32_DOT_ENV} must be one of {', '.join(FP32_DOT_CHOICES)}, got {forced!r}")
        return forced
    allowed = torch.backends.cuda.matmul.allow_tf32 if kind == "matmul" else torch.backends.cudnn.allow_tf32
    return "tf32" if allowed else "ieee"


def dot_precision(dtype: torch.dtype, kind: str) -> str:
    """``input_precision`` for ``tl.dot`` on operands of ``dtype`` (see the module docstring)."""
    if dtype == torch.float32:
        return fp32_dot_precision(kind)
    if dtype == torch.float64:
        return "ieee"
    return "tf32"  # ignored by Triton for 16-bit operands; one value keeps one compiled variant
