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


def run_against_float64(backend, op, reference, inputs):
    """``op(*inputs)`` on ``backend`` and ``reference`` on float64 copies, both differentiated with the same random
    output gradient (in the output's dtype). Returns (out, grads, want_out, want_grads, grad); checks that the
    output keeps the first input's dtype and each gradient its input's dtype."""
    import litesam_kernels as lk

    with lk.use_backend(backend):
        out = op(*inputs)
        grad = torch.randn(out.shape, dtype=torch.float64).to(out.dtype)
        got = torch.autograd.grad(out, inputs, grad)
    oracle = float64_copies(inputs)
    want_out = reference(*oracle)
    want = torch.autograd.grad(want_out, oracle, grad.double())
    assert out.dtype == inputs[0].dtype and [g.dtype for g in got] == [t.dtype for t in inputs]
    return out, got, want_out, want, grad
