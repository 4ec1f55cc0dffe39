"""TF32 tensor-core products under the Triton interpreter, which otherwise multiplies fp32 ``tl.dot`` operands
exactly whatever ``input_precision`` says: with :func:`emulated_tf32` active, operands of an
``input_precision="tf32"`` dot are rounded to TF32 (10 explicit mantissa bits, round to nearest, ties away
from zero: ``cvt.rna.tf32.f32``, what Triton emits on sm_80+) before the fp32 product, so a test measures
the error a GPU's TF32 dot has and sees which precision a launch chose."""
import contextlib

import numpy as np


def round_to_tf32(values: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)  # sign-magnitude: ties away from zero
    finite = np.isfinite(values)
    return np.where(finite, rounded.view(np.float32), values).astype(np.float32)


@contextlib.contextmanager
def emulated_tf32():
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    original = builder.create_dot

    def create_dot(self, a, b, d, input_precision, *args, **kwargs):
        if str(input_precision).rsplit(".", 1)[-1] == "TF32" and a.dtype.scalar == tl.float32:
            a = interpreter.TensorHandle(round_to_tf32(a.data), a.dtype.scalar)
            b = interpreter.TensorHandle(round_to_tf32(b.data), b.dtype.scalar)
        return original(self, a, b, d, input_precision, *args, **kwargs)

    builder.create_dot = create_dot
    try:
        yield
    finally:
        builder.create_dot = original
