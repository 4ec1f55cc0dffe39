"""Bit tricks shared by Triton kernels (device functions, not kernels: the AOT check compiles them
through the kernels that call them).

``HW_POPC`` picks the population count: the hardware ``POPC`` instruction through libdevice on the GPU, or
plain integer arithmetic (SWAR) under the CPU interpreter, where libdevice cannot run. Kernels take it as
a constexpr set by ``hardware_popcount()``; the AOT check compiles both forms (LLVM also recognises the
SWAR idiom and emits ``POPC`` for it, but the libdevice form does not depend on that).
"""
import triton
import triton.language as tl
from triton.language.extra.cuda import libdevice

from litesam_kernels._backend import interpreter_on


def hardware_popcount() -> bool:
    """The ``HW_POPC`` constexpr for kernels launched now: False under the interpreter."""
    return not interpreter_on()


@triton.jit
def popcount32(x, HW_POPC: tl.constexpr):
    """Set bits of each 32-bit word (int32 or uint32 bit patterns), as int32."""
    if HW_POPC:
        return libdevice.popc(x.to(tl.int32, bitcast=True))
    else:
        x = x.to(tl.uint32, bitcast=True)
        x = x - ((x >> 1) & 0x55555555)  # pairs, nibbles, bytes, then a multiply sums the four bytes
        x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
        x = (x + (x >> 4)) & 0x0F0F0F0F
        return ((x * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def lowest_bit(x):
    """Index (0..31) of the lowest set bit of each nonzero 32-bit word, as int32 (undefined for 0): the
    isolated bit x & -x is a power of two, which float32 holds exactly; its exponent is the index."""
    x = x.to(tl.uint32, bitcast=True)
    x = tl.where(x == 0, 1, x)  # keeps -x (= ~x + 1) from wrapping (0 has no lowest bit anyway)
    isolated = x & ((x ^ 0xFFFFFFFF) + 1)  # x & -x in unsigned arithmetic
    return ((isolated.to(tl.float32).to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127


@triton.jit
def highest_bit(x):
    """Index (0..31) of the highest set bit of each nonzero 32-bit word, as int32 (undefined for 0): the
    bits below the highest are filled, so (filled >> 1) + 1 is the highest bit alone, a power of two."""
    x = x.to(tl.uint32, bitcast=True)
    x = x | (x >> 1)
    x = x | (x >> 2)
    x = x | (x >> 4)
    x = x | (x >> 8)
    x = x | (x >> 16)
    isolated = (x >> 1) + 1  # at most 0x80000000: no wrap
    return ((isolated.to(tl.float32).to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
