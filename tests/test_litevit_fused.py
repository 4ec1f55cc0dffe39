"""LiteViT(fused=True) against the eager reference modules (same parameters), forward and backward.

Tolerances (tiny config, 32x32 input, random weights and BN statistics): float64 1e-9, float32 1e-4 abs/rel
(the fused ops accumulate in a different order and fold BatchNorm into the weights)."""
import copy

import pytest
import torch

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.model.config import CONFIGS
from litesam_kernels.model.litevit import LiteViT

TRITON_REASON = _backend.why_not("triton", _backend.implementations("conv_mlp"), torch.device("cpu"))
BACKENDS = [pytest.param("reference", id="reference"),
            pytest.param("triton", id="triton", marks=[pytest.mark.skip(reason=TRITON_REASON)] if TRITON_REASON else [])]
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def _models(dtype=torch.float32):
    torch.manual_seed(0)
    eager = LiteViT(CONFIGS["tiny"].encoder).to(dtype)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters, so folding matters
        for m in eager.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    fused = copy.deepcopy(eager)
    fused.fused = True
    return eager, fused


def _images(dtype, b=1, size=32):  # small: the Triton interpreter runs every program serially
    return torch.randn(b, 3, size, size, dtype=torch.float64).to(dtype)


class TestLiteViTFused:
    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_eval_forward_matches_eager(self, backend, dtype):
        eager, fused = (m.eval() for m in _models(dtype))
        images = _images(dtype)
        with torch.no_grad():
            want = eager(images)
            with lk.use_backend(backend):
                got = fused(images)
        assert got.shape == want.shape == (1, 32, 2, 2) and got.dtype == dtype
        torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_train_step_matches_eager(self, backend):
        eager, fused = (m.train() for m in _models())
        images = _images(torch.float32, b=2)
        want = eager(images)
        want.square().mean().backward()
        with lk.use_backend(backend):
            got = fused(images)
            got.square().mean().backward()
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        for (name, p), q in zip(eager.named_parameters(), fused.parameters()):
            torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-3, msg=lambda m: f"{name}: {m}")
        for (name, b), c in zip(eager.named_buffers(), fused.buffers()):  # BN running statistics
            torch.testing.assert_close(c, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")

    def test_reference_backend_runs_the_eager_modules(self, monkeypatch):
        eager, fused = (m.eval() for m in _models())
        images = _images(torch.float32, b=1)
        from litesam_kernels.model import litevit_fused

        def boom(*args):
            raise AssertionError("the fused path ran although the reference backend was forced")

        monkeypatch.setattr(litevit_fused, "fused_forward", boom)
        monkeypatch.setenv("LITESAM_BACKEND", "reference")
        with torch.no_grad():
            torch.testing.assert_close(fused(images), eager(images), atol=0, rtol=0)

    def test_default_is_eager(self):
        assert LiteViT(CONFIGS["tiny"].encoder).fused is False


@pytest.mark.gpu
class TestLiteViTFusedGPU:
    """The default config at 256^2 on CUDA, every dtype, Triton kernels against the eager modules."""

    @pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.float16, 1e-2), (torch.bfloat16, 3e-2)])
    def test_forward_and_backward(self, dtype, tol):
        torch.manual_seed(0)
        eager = LiteViT().cuda().to(dtype).eval()
        fused = copy.deepcopy(eager)
        fused.fused = True
        images = torch.randn(2, 3, 256, 256, device="cuda", dtype=dtype)
        want = eager(images)
        with lk.use_backend("triton"):
            got = fused(images)
            got.float().square().mean().backward()
        want.float().square().mean().backward()
        rel = lambda a, b: float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))  # noqa: E731
        assert rel(got, want) < tol
        num = sum(float((p.grad.double() - q.grad.double()).norm()) ** 2 for p, q in zip(fused.parameters(), eager.parameters()))
        den = sum(float(q.grad.double().norm()) ** 2 for q in eager.parameters())
        assert (num / den) ** 0.5 < 10 * tol
