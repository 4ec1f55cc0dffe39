"""LiteViT(fused=True) against the eager reference modules (same parameters), forward and backward, in every dtype.

Tolerances (tiny config, 32x32 input, random weights and BN statistics; ``rel`` = ||got - want|| / ||want||
over the whole tensor, or over all parameter gradients together, against the float32 eager model):
- float64 1e-9 and float32 1e-4 abs/rel elementwise, the fused ops against the eager modules in the same dtype;
- eval forward, ``model.to(dtype)`` or ``torch.autocast`` (float32 weights): measured rel over 3 seeds, reference
  ops and Triton alike, bf16 <= 8.6e-3, fp16 <= 1.2e-3 (the eager modules in the same dtype: 8.2e-3 / 8.4e-4);
  asserted bf16 2e-2, fp16 3e-3;
- training step under autocast (batch statistics, B=2): measured output / gradients bf16 <= 1.9e-2 / 3.0e-2,
  fp16 <= 2.3e-3 / 3.0e-3 (eager autocast: 2.8e-2 / 4.2e-2 and 2.4e-3 / 4.1e-3); asserted bf16 5e-2 / 8e-2,
  fp16 6e-3 / 1e-2.
"""
import copy

import pytest
import torch

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.model.config import CONFIGS
from litesam_kernels.model.litevit import LiteViT

TRITON_REASON = _backend.why_not("triton", _backend.implementations("conv_mlp"), torch.device("cpu"))
TRITON = pytest.param("triton", id="triton", marks=[pytest.mark.skip(reason=TRITON_REASON)] if TRITON_REASON else [])
BACKENDS = [pytest.param(None, id="reference-ops"), TRITON]  # no forced backend on CPU: the ops' references
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}
HALF_FORWARD_REL = {torch.bfloat16: 2e-2, torch.float16: 3e-3}
HALF_TRAIN_REL = {torch.bfloat16: (5e-2, 8e-2), torch.float16: (6e-3, 1e-2)}  # (output, gradients)
HALF = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]


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


def rel(got, want) -> float:
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def grads_rel(model, reference) -> float:
    """Relative L2 error of all parameter gradients together (a parameter whose true gradient is ~0, e.g. a
    bias before a training-mode BatchNorm, would fail a per-tensor relative test on rounding noise)."""
    pairs = [(p.grad.double(), q.grad.double()) for p, q in zip(model.parameters(), reference.parameters())]
    return (sum(float((a - b).norm()) ** 2 for a, b in pairs) / sum(float(b.norm()) ** 2 for _, b in pairs)) ** 0.5


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
    @pytest.mark.parametrize("dtype", HALF)
    def test_half_model_forward(self, backend, dtype):
        """``model.to(dtype)``: the issue's ``expected scalar type BFloat16 but found Float``."""
        eager, fused = (m.eval() for m in _models())
        images = _images(torch.float32)
        half = copy.deepcopy(fused).to(dtype)
        with torch.no_grad():
            want = eager(images)
            with lk.use_backend(backend):
                got = half(images.to(dtype))
        assert got.dtype == dtype and got.shape == want.shape
        assert rel(got, want) < HALF_FORWARD_REL[dtype]

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("dtype", HALF)
    def test_autocast_forward(self, backend, dtype):
        """float32 weights and images under autocast: the fused encoder computes in the autocast dtype."""
        eager, fused = (m.eval() for m in _models())
        images = _images(torch.float32)
        with torch.no_grad():
            want = eager(images)
            with torch.autocast("cpu", dtype=dtype):
                with lk.use_backend(backend):
                    got = fused(images)
                eager_autocast = eager(images)
        assert got.dtype == dtype and eager_autocast.dtype == dtype  # LayerNorm2d returns its input's dtype
        assert rel(got, want) < HALF_FORWARD_REL[dtype]
        assert rel(eager_autocast, want) < HALF_FORWARD_REL[dtype]

    def test_float64_images_ignore_autocast(self):
        eager, fused = (m.eval() for m in _models(torch.float64))
        images = _images(torch.float64)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            got = fused(images)
        assert got.dtype == torch.float64
        with torch.no_grad():
            torch.testing.assert_close(got, eager(images), atol=1e-9, rtol=1e-9)

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

    @pytest.mark.parametrize("backend,dtype", [
        pytest.param(None, torch.bfloat16, id="reference-ops-bf16"),
        pytest.param(None, torch.float16, id="reference-ops-fp16"),
        pytest.param(*TRITON.values, torch.bfloat16, marks=TRITON.marks, id="triton-bf16"),
    ])
    def test_autocast_train_step(self, backend, dtype):
        """Forward + backward of the fused encoder under autocast (float32 master weights), batch statistics."""
        eager, fused = (m.train() for m in _models())
        images = _images(torch.float32, b=2)
        want = eager(images)
        want.square().mean().backward()
        with lk.use_backend(backend), torch.autocast("cpu", dtype=dtype):
            got = fused(images)
            got.float().square().mean().backward()
        assert got.dtype == dtype
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fused.parameters())
        out_tol, grad_tol = HALF_TRAIN_REL[dtype]
        assert rel(got, want) < out_tol
        assert grads_rel(fused, eager) < grad_tol

    def test_eval_mode_gradients_flow_to_the_weights(self):
        """Eval mode with autograd (e.g. fine-tuning with frozen BN statistics): the custom-op path, not the
        prepared one, so gradients reach every parameter through the folds."""
        eager, fused = (m.eval() for m in _models())
        images = _images(torch.float32)
        eager(images).square().mean().backward()
        fused(images).square().mean().backward()
        for (name, p), q in zip(eager.named_parameters(), fused.parameters()):
            torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-3, msg=lambda m: f"{name}: {m}")

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

    @pytest.mark.parametrize("images,error,match", [
        (torch.zeros(1, 3, 32), ValueError, r"images must be a 4-D tensor"),
        (torch.zeros(1, 4, 32, 32), ValueError, r"images must have shape \(B, 3, H >= 1, W >= 1\)"),
        (torch.zeros(1, 3, 0, 32), ValueError, r"H >= 1"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, r"images must have dtype in"),
        ([[0.0]], TypeError, r"images must be a torch.Tensor"),
        (torch.zeros(1, 3, 32, 32, device="meta"), ValueError, r"images must be on the device of the model"),
    ])
    @pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
    def test_bad_images(self, images, error, match, grad):
        _, fused = _models()
        with torch.set_grad_enabled(grad), pytest.raises(error, match=match):
            fused.eval()(images)

    @pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
    def test_empty_batch(self, grad):
        eager, fused = (m.eval() for m in _models())
        images = _images(torch.float32, b=0)
        with torch.set_grad_enabled(grad):
            got = fused(images)
        assert got.shape == eager(images).shape == (0, 32, 2, 2)


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
        assert rel(got, want) < tol
        assert grads_rel(fused, eager) < 10 * tol

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("batch", [1, 8])
    def test_prepared_inference_1024(self, dtype, batch):
        """The path users run: prepared, Triton, 1024^2, half precision, against the float32 eager model."""
        torch.manual_seed(0)
        eager = LiteViT().cuda().eval()
        fused = copy.deepcopy(eager).to(dtype)
        fused.fused = True
        images = torch.randn(batch, 3, 1024, 1024, device="cuda")
        with torch.no_grad():
            want = eager(images)
            got = fused(images.to(dtype))
            again = fused(images.to(dtype))
        assert torch.equal(got, again)
        assert rel(got, want) < 3 * HALF_FORWARD_REL[dtype]
