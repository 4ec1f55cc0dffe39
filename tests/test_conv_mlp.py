"""conv_mlp: every backend against the reference and the model's ConvMLP module, gradients."""
import pytest
import torch

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.model.litevit import ConvMLP
from litesam_kernels.ops.conv_mlp import _conv_mlp_reference, conv_mlp, fold_batchnorm_into_linear
from tests.helpers import runnable_backends

OP = _backend.implementations("conv_mlp")
TOL = {torch.float32: 1e-4, torch.float16: 1e-2}


def _inputs(m_shape, c, hid, dtype, requires_grad=False, residual=True):
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(*m_shape, c, dtype=torch.float64).to(dtype)
    w1 = torch.randn(hid, c, dtype=pdt) / c ** 0.5
    b1 = torch.randn(hid, dtype=pdt) * 0.1
    w2 = torch.randn(c, hid, dtype=pdt) / hid ** 0.5
    b2 = torch.randn(c, dtype=pdt) * 0.1
    res = torch.randn_like(x) if residual else None
    return [t if t is None else t.requires_grad_(requires_grad) for t in (x, w1, b1, w2, b2, res)]


class TestConvMLP:
    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
    @pytest.mark.parametrize("m_shape,c,hid", [((2, 5, 7), 8, 16), ((1, 9, 10), 32, 160), ((70,), 20, 50)])
    def test_matches_model_module(self, backend, dtype, m_shape, c, hid):
        module = ConvMLP(c, hid).double()
        x = torch.randn(*m_shape, c, dtype=torch.float64)
        nchw = x.reshape(1, -1, 1, c).permute(0, 3, 1, 2)
        want = (x + module(nchw).permute(0, 2, 3, 1).reshape(x.shape)).detach()
        args = [p.detach().float() for p in (module.fc1.weight[:, :, 0, 0], module.fc1.bias,
                                             module.fc2.weight[:, :, 0, 0], module.fc2.bias)]
        with lk.use_backend(backend):
            got = conv_mlp(x.to(dtype), *args, residual=x.to(dtype))
        assert got.dtype == dtype and got.shape == x.shape
        torch.testing.assert_close(got.double(), want, atol=TOL[dtype] * 5, rtol=TOL[dtype])

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("residual", [True, False])
    def test_gradcheck_float64(self, backend, residual):
        inputs = _inputs((2, 3), 5, 7, torch.float64, requires_grad=True, residual=residual)
        with lk.use_backend(backend):
            assert torch.autograd.gradcheck(lambda *t: conv_mlp(*t), inputs, fast_mode=True)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
    def test_backward_matches_reference(self, backend, dtype):
        inputs = _inputs((3, 30), 24, 96, dtype, requires_grad=True)
        grad = torch.randn_like(inputs[0])
        with lk.use_backend(backend):
            got = torch.autograd.grad(conv_mlp(*inputs), inputs, grad)
        want = torch.autograd.grad(_conv_mlp_reference(*inputs), inputs, grad)
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        for g, e in zip(got, want):
            torch.testing.assert_close(g.float(), e.float(), atol=tol, rtol=tol)

    def test_folded_batchnorm(self):
        x, w1, b1, w2, b2, _ = _inputs((4, 3), 6, 12, torch.float64)
        scale, shift = torch.rand(6, dtype=torch.float64) + 0.5, torch.randn(6, dtype=torch.float64)
        fw1, fb1 = fold_batchnorm_into_linear(w1, b1, scale, shift)
        torch.testing.assert_close(conv_mlp(x, fw1, fb1, w2, b2), conv_mlp(x * scale + shift, w1, b1, w2, b2))

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_edge_cases(self, backend):
        x, w1, b1, w2, b2, res = _inputs((1, 4, 5), 6, 12, torch.float32)
        x_nc = x.transpose(1, 2).contiguous().transpose(1, 2)
        with lk.use_backend(backend):
            torch.testing.assert_close(conv_mlp(x_nc, w1, b1, w2, b2, res), conv_mlp(x, w1, b1, w2, b2, res))
            one = x[:, :1, :1]
            torch.testing.assert_close(conv_mlp(one, w1, b1, w2, b2), _conv_mlp_reference(one, w1, b1, w2, b2, None),
                                       atol=1e-5, rtol=1e-5)
            assert conv_mlp(x[:0], w1, b1, w2, b2).shape == (0, 4, 5, 6)

    def test_errors(self):
        x, w1, b1, w2, b2, res = _inputs((1, 4, 5), 6, 12, torch.float32)
        with pytest.raises(TypeError, match="x"):
            conv_mlp(x.int(), w1, b1, w2, b2)
        with pytest.raises(ValueError, match="w1"):
            conv_mlp(x, w1[:, :3], b1, w2, b2)
        with pytest.raises(ValueError, match="w2"):
            conv_mlp(x, w1, b1, w2.t(), b2)
        with pytest.raises(ValueError, match="b1"):
            conv_mlp(x, w1, b1[:3], w2, b2)
        with pytest.raises(ValueError, match="residual"):
            conv_mlp(x, w1, b1, w2, b2, res[:, :2])
        with pytest.raises(TypeError, match="residual"):
            conv_mlp(x, w1, b1, w2, b2, res.half())
        with pytest.raises(ValueError, match="x"):
            conv_mlp(torch.randn(2, 300), torch.randn(4, 300), b1[:4], torch.randn(300, 4), torch.randn(300))

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_opcheck(self, backend):
        x, w1, b1, w2, b2, res = _inputs((2, 3), 5, 7, torch.float32, requires_grad=True)
        with lk.use_backend(backend):
            torch.library.opcheck(torch.ops.litesam.conv_mlp, (x, w1, b1, w2, b2, res))
            torch.library.opcheck(torch.ops.litesam.conv_mlp, (x, w1, b1, w2, b2, None))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("c,hid", [(32, 128), (128, 640)])
def test_triton_on_gpu(dtype, c, hid):
    from tests.dense_gpu import check_triton_on_gpu

    x, w1, b1, w2, b2, res = _inputs((2, 64, 64), c, hid, dtype)
    check_triton_on_gpu(lambda *t: conv_mlp(*t), _conv_mlp_reference, [x, w1, b1, w2, b2, res], dtype)
