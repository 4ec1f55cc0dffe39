"""Bit tricks shared by Triton kernels (device functions, not kernels: the AOT check compiles them
through the kernels that call them). libdevice (``popc``) does not run in the CPU interpreter, so
these are plain integer arithmetic, which compiles to a handful of ALU ops on the GPU."""
import triton
import triton.language as tl


@triton.jit
def popcount32(x):
    """Set bits of each uint32 (SWAR: pairs, nibbles, bytes, then a multiply sums the four bytes), int32."""
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) >> 24).to(tl.int32)
