"""Triton kernels, one module per op (same names as ``litesam_kernels.ops``): kernels and launchers only.

Importing this package imports triton. Under ``TRITON_INTERPRET=1`` (CPU tests) it patches two known
interpreter gaps first (bf16 ``tl.dot`` and fp32->bf16 rounding), see ``_interpreter.py``.
Each kernel module lists its kernels with concrete signatures in ``AOT_KERNELS``; CI compiles all of them
for sm_90a without a GPU (``python -m litesam_kernels.triton.aot``).
"""
from litesam_kernels._backend import interpreter_on

if interpreter_on():
    from litesam_kernels.triton._interpreter import patch_triton_interpreter

    patch_triton_interpreter()
