"""layer_norm2d: every backend against the reference and the model's LayerNorm2d module, gradients."""
import pytest
import torch

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.model.litevit import LayerNorm2d
from litesam_kernels.ops.layer_norm import _layer_norm_reference, layer_norm2d
from tests.helpers import runnable_backends

OP = _backend.implementations("layer_norm2d")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _inputs(shape, dtype, requires_grad=False):
    c = shape[-1]
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).to(dtype)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    w = (torch.rand(c, dtype=pdt) + 0.5)
    b = torch.randn(c, dtype=pdt)
    return [t.requires_grad_(requires_grad) for t in (x, w, b)]


class TestLayerNorm2d:
    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("shape", [(2, 5, 3, 7), (1, 1, 19, 32), (1, 2, 2, 130)])
    def test_forward_matches_model(self, backend, dtype, shape):
        x, w, b = _inputs(shape, dtype)
        module = LayerNorm2d(shape[-1]).double()
        module.weight.data.copy_(w)
        module.bias.data.copy_(b)
        want = module(x.double().permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        with lk.use_backend(backend):
            got = layer_norm2d(x, w, b)
        assert got.dtype == dtype and got.shape == x.shape
        torch.testing.assert_close(got.double(), want, atol=TOL[dtype] * 8, rtol=TOL[dtype])

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_gradcheck_float64(self, backend):
        inputs = _inputs((1, 3, 4, 6), torch.float64, requires_grad=True)
        with lk.use_backend(backend):
            assert torch.autograd.gradcheck(lambda *t: layer_norm2d(*t), inputs, fast_mode=True)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
    def test_backward_matches_reference(self, backend, dtype):
        x, w, b = _inputs((2, 3, 5, 20), dtype, requires_grad=True)
        grad = torch.randn_like(x)
        with lk.use_backend(backend):
            got = torch.autograd.grad(layer_norm2d(x, w, b), (x, w, b), grad)
        want = torch.autograd.grad(_layer_norm_reference(x, w, b, 1e-6), (x, w, b), grad)
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        for g, e in zip(got, want):
            torch.testing.assert_close(g.float(), e.float(), atol=tol, rtol=tol)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_edge_cases(self, backend):
        x, w, b = _inputs((1, 4, 5, 6), torch.float32)
        x_nc = x.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
        with lk.use_backend(backend):
            torch.testing.assert_close(layer_norm2d(x_nc, w, b), layer_norm2d(x, w, b))
            # constant rows: zero variance, output is the bias
            const = torch.full((1, 1, 2, 6), 3.0)
            torch.testing.assert_close(layer_norm2d(const, w, b), b.expand(1, 1, 2, 6))
            assert layer_norm2d(x[:0], w, b).shape == (0, 4, 5, 6)

    def test_errors(self):
        x, w, b = _inputs((1, 4, 5, 6), torch.float32)
        with pytest.raises(TypeError, match="x"):
            layer_norm2d(x.long(), w, b)
        with pytest.raises(ValueError, match="x"):
            layer_norm2d(x[0], w, b)
        with pytest.raises(ValueError, match="weight"):
            layer_norm2d(x, w[:2], b)
        with pytest.raises(TypeError, match="bias"):
            layer_norm2d(x, w, None)
        with pytest.raises(ValueError, match="eps"):
            layer_norm2d(x, w, b, eps=-1.0)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_opcheck(self, backend):
        x, w, b = _inputs((1, 3, 4, 5), torch.float32, requires_grad=True)
        with lk.use_backend(backend):
            torch.library.opcheck(torch.ops.litesam.layer_norm2d, (x, w, b, 1e-6))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("c", [128, 256])
def test_triton_on_gpu(dtype, c):
    from tests.dense_gpu import check_triton_on_gpu

    x, w, b = _inputs((2, 64, 64, c), dtype)
    check_triton_on_gpu(lambda *t: layer_norm2d(*t), lambda *t: _layer_norm_reference(*t, 1e-6), [x, w, b], dtype)
