"""LayerNorm over the rows of an on-chip tile (jit helpers, not kernels: no AOT entries).

For kernels that normalise their input tile in a prologue (ConvMLP's fused LayerNorm) and differentiate it
in the epilogue. Statistics in the tile's dtype (the accumulation dtype), biased variance, as
``ops.layer_norm._layer_norm_reference``; padded entries (``mask`` false) come out 0.
"""
import triton
import triton.language as tl


@triton.jit
def layer_norm_rows(x, mask, C, eps):
    """(xhat, rstd): ``xhat = (x - mean) * rstd`` per row of ``x`` [BLOCK_M, BLOCK_C] over its C valid columns."""
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / C + eps)
    return xc * rstd[:, None], rstd


@triton.jit
def layer_norm_rows_backward(dy, xhat, rstd, weight, C):
    """dL/dx of ``y = xhat * weight + bias`` per row, from dL/dy (padded entries of dy and xhat are 0)."""
    dyw = dy * weight[None, :]
    c1 = tl.sum(dyw * xhat, axis=1) / C
    c2 = tl.sum(dyw, axis=1) / C
    return (dyw - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
