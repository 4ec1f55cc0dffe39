"""Checks shared by the dense-op tests (conv_mlp, attention): the half-precision error metric."""
import torch


def assert_close_scaled(got, want, tol):
    """max |got - want| <= tol * max |want|: the metric of the measured half-precision tolerances."""
    got, want = got.detach().double(), want.detach().double()
    assert got.shape == want.shape
    error, scale = float((got - want).abs().max()), float(want.abs().max())
    assert error <= tol * scale, f"max error {error:.3g} > {tol:g} x max |reference| {scale:.3g}"


def float64_copies(tensors):
    """Detached float64 copies (None stays None) that require grad where the originals do: reference inputs."""
    return [None if t is None else t.detach().double().requires_grad_(t.requires_grad) for t in tensors]
