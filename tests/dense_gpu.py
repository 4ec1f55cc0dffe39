"""GPU check shared by the dense-op tests: the Triton kernels on CUDA against the op's torch reference,
forward and the gradients of every floating input, at a model shape, per dtype."""
import torch

import litesam_kernels as lk

GPU_TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


def check_triton_on_gpu(fn, reference, inputs, dtype):
    """fn(*inputs) under the triton backend vs reference(*inputs): relative L2 error <= GPU_TOL[dtype]
    (3x that for the gradients, all together)."""
    inputs = [t.cuda().requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs]
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    with lk.use_backend("triton"):
        got = fn(*inputs)
        grad = torch.randn_like(got)
        got_grads = torch.autograd.grad(got, leaves, grad)
    want = reference(*inputs)
    want_grads = torch.autograd.grad(want, leaves, grad)
    assert got.dtype == want.dtype == dtype
    assert _rel(got, want) <= GPU_TOL[dtype]
    num = sum(float((g.double() - e.double()).norm()) ** 2 for g, e in zip(got_grads, want_grads))
    den = sum(float(e.double().norm()) ** 2 for e in want_grads)
    assert (num / max(den, 1e-24)) ** 0.5 <= 3 * GPU_TOL[dtype]
