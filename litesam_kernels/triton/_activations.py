"""GELU for the fused LiteViT kernels: the exact (erf) form, and a cheaper form for 16-bit activations.

``FAST=False``: ``0.5 a (1 + erf(a / sqrt 2))``, as ``F.gelu`` computes it; used for fp32/fp64.
``FAST=True``: the tanh form ``0.5 a (1 + tanh(sqrt(2/pi) (a + 0.044715 a^3)))`` with tanh from one exp2,
for fp16/bf16 activations: its largest deviation from the exact GELU is about 5e-4 absolute (at |a| near 2),
the size of one fp16 rounding step there and far below a bf16 one, and the hidden value is rounded to the
activation dtype before the next dot anyway, so the difference is invisible at that precision. The
backward uses the derivative of the same form, so forward and backward agree.
Both take and return the accumulation dtype (fp32/fp64).
"""
import triton
import triton.language as tl

# tl.constexpr: a compiled (non-interpreted) kernel may only read constexpr globals
_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
_SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
_TANH_CUBIC = tl.constexpr(0.044715)
_TWO_LOG2E = tl.constexpr(2.8853900817779268)  # 2 / ln 2: exp(2z) = exp2(2 z log2 e)


@triton.jit
def _tanh_from_exp2(z):
    # 1 - 2 / (exp(2z) + 1): exact limits at both ends (exp2 overflows to inf -> 1; underflows to 0 -> -1)
    return 1.0 - 2.0 / (tl.exp2(z * _TWO_LOG2E) + 1.0)


@triton.jit
def gelu(a, FAST: tl.constexpr):
    """GELU(a) (see the module docstring)."""
    if FAST:
        t = _tanh_from_exp2(_SQRT_2_OVER_PI * (a + _TANH_CUBIC * a * a * a))
        return 0.5 * a * (1.0 + t)
    else:
        return 0.5 * a * (1.0 + tl.erf(a * _SQRT1_2))


@triton.jit
def gelu_and_grad(a, FAST: tl.constexpr):
    """(GELU(a), dGELU/da) of the same form."""
    if FAST:
        u = _SQRT_2_OVER_PI * (a + _TANH_CUBIC * a * a * a)
        t = _tanh_from_exp2(u)
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_CUBIC * a * a)
        return 0.5 * a * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * du
    else:
        cdf = 0.5 * (1.0 + tl.erf(a * _SQRT1_2))
        return a * cdf, cdf + a * tl.exp(-0.5 * a * a) * _INV_SQRT_2PI


def fast_gelu_for(dtype) -> bool:
    """Whether kernels on activations of torch ``dtype`` use the FAST form."""
    import torch

    return dtype in (torch.float16, torch.bfloat16)
