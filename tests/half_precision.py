"""Half-precision checks shared by the dense-op tests: the error metric of the measured tolerances and the
float64 oracle inputs (the same values the 16-bit run sees, upcast)."""
import torch


def scaled_error(got, want, scale=None):
    """max |got - want| / ``scale`` (default max |want|, at least 1e-12): for a quantity that is zero
    mathematically (a sum that cancels) pass the scale of its terms."""
    got, want = got.detach().double(), want.detach().double()
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    scale = float(want.abs().max()) if scale is None else float(scale)
    return float((got - want).abs().max()) / max(scale, 1e-12)


def assert_close_scaled(got, want, tol, what="output", scale=None):
    """``scaled_error(got, want, scale) <= tol``: the metric the half-precision tolerances were measured with."""
    error = scaled_error(got, want, scale)
    assert error <= tol, f"{what}: max |error| / max |reference| = {error:.3g} > {tol:g}"


def float64_copies(tensors):
    """Detached float64 copies of ``tensors`` (None stays None), requiring grad where the originals do."""
    return [None if t is None else t.detach().double().requires_grad_(t.requires_grad) for t in tensors]
