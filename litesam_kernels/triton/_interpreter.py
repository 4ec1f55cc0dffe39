"""Fixes for the Triton CPU interpreter (tested on triton 3.6, 3.8, 3.9; private internals: re-check on bumps).

- bf16 ``tl.dot`` multiplies the raw uint16 bits (triton#11584): upcast bf16 operands to fp32 first.
- fp32 -> bf16 casts truncate; the GPU rounds to nearest-even: do the same.
"""
import numpy as np


def _round_to_bf16_bits(values):
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(values)
    rounded[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return rounded


def patch_triton_interpreter() -> None:
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder, "_litesam_patched", False):
        return
    original_dot, original_cast, original_fp_to_fp = builder.create_dot, builder.cast_impl, builder.create_fp_to_fp

    def create_dot(self, a, b, d, *args, **kwargs):
        if a.dtype.scalar == tl.bfloat16:
            a = original_cast(self, a, tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = original_cast(self, b, tl.float32)
        return original_dot(self, a, b, d, *args, **kwargs)

    def cast_impl(self, src, dst):
        if src.dtype.scalar == tl.float32 and dst.scalar == tl.bfloat16:
            return interpreter.TensorHandle(_round_to_bf16_bits(src.data), tl.bfloat16)
        return original_cast(self, src, dst)

    def create_fp_to_fp(self, src, dst, rounding_mode):
        if src.dtype.scalar == tl.float32 and dst.scalar == tl.bfloat16 and (
            rounding_mode is None or "rtne" in str(rounding_mode).lower()
        ):
            return self.cast_impl(src, dst)
        return original_fp_to_fp(self, src, dst, rounding_mode)

    builder.create_dot, builder.cast_impl, builder.create_fp_to_fp = create_dot, cast_impl, create_fp_to_fp
    builder.create_fp_trunc = lambda self, src, dst: self.cast_impl(src, dst)
    builder._litesam_patched = True
