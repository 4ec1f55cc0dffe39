"""Small device tensors of kernel scalars (thresholds): :func:`litesam_kernels._device_data.device_constants`.

Triton passes Python floats as float32 scalars (the interpreter too, whatever the annotation), so a
threshold that must be compared in float64 is read from memory. The values a pipeline uses repeat (SAM's
0.7, 0.0 +- 1.0): each distinct (values, dtype, device) is built once, on the device, and reused.
"""
from litesam_kernels._device_data import device_constants

__all__ = ["device_constants"]
