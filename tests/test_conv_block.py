"""dwconv_act: every backend against the reference and the model's DWConvBNAct (BN folded), gradients."""
import pytest
import torch

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.model.litevit import DWConvBNAct
from litesam_kernels.ops.conv_block import _dwconv_reference, dwconv_act, fold_batchnorm
from tests.helpers import runnable_backends

OP = _backend.implementations("dwconv_act")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _inputs(shape, k, dtype, requires_grad=False):
    c = shape[-1]
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    w = torch.randn(c, k, k, dtype=pdt) / k
    b = torch.randn(c, dtype=pdt) * 0.1
    return [t.requires_grad_(requires_grad) for t in (x, w, b)]


class TestDWConvAct:
    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("k,shape", [(3, (2, 5, 9, 6)), (7, (1, 6, 5, 20))])
    def test_matches_model_block(self, backend, dtype, k, shape):
        c = shape[-1]
        block = DWConvBNAct(c, k).double().eval()
        with torch.no_grad():
            block.bn.running_mean.normal_()
            block.bn.running_var.uniform_(0.5, 2.0)
            block.bn.weight.normal_()
            block.bn.bias.normal_()
        x = torch.randn(shape, dtype=torch.float64).to(dtype)
        bn = block.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w, b = fold_batchnorm(block.conv.weight, scale, bn.bias - bn.running_mean * scale)
        want = x.double() + block(x.double().permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        with lk.use_backend(backend):
            got = dwconv_act(x, w.float().detach(), b.float().detach(), "gelu", residual=True)
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want.detach(), atol=TOL[dtype] * 8, rtol=TOL[dtype] * 2)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("activation,residual", [("gelu", True), ("none", False)])
    def test_gradcheck_float64(self, backend, activation, residual):
        inputs = _inputs((1, 4, 5, 3), 3, torch.float64, requires_grad=True)
        with lk.use_backend(backend):
            assert torch.autograd.gradcheck(lambda *t: dwconv_act(*t, activation, residual), inputs, fast_mode=True)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("k", [3, 7])
    def test_backward_float32_matches_reference(self, backend, k):
        x, w, b = _inputs((1, 6, 7, 5), k, torch.float32, requires_grad=True)
        grad = torch.randn_like(x)
        with lk.use_backend(backend):
            got = torch.autograd.grad(dwconv_act(x, w, b, "gelu", True), (x, w, b), grad)
        want = torch.autograd.grad(_dwconv_reference(x, w, b, "gelu", True), (x, w, b), grad)
        for g, e in zip(got, want):
            torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_edge_cases(self, backend):
        x, w, b = _inputs((1, 4, 5, 6), 3, torch.float32)
        x_nc = x.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
        with lk.use_backend(backend):
            torch.testing.assert_close(dwconv_act(x_nc, w, b), dwconv_act(x, w, b))
            one = x[:, :1, :1]
            want = torch.nn.functional.gelu(one * w[:, 1, 1] + b)
            torch.testing.assert_close(dwconv_act(one, w, b), want)
            assert dwconv_act(x[:0], w, b).shape == (0, 4, 5, 6)

    def test_errors(self):
        x, w, b = _inputs((1, 4, 5, 6), 3, torch.float32)
        with pytest.raises(TypeError, match="x"):
            dwconv_act(x.int(), w, b)
        with pytest.raises(ValueError, match="weight"):
            dwconv_act(x, w[:, :2, :2], b)
        with pytest.raises(ValueError, match="weight"):
            dwconv_act(x, w[:3], b)
        with pytest.raises(ValueError, match="bias"):
            dwconv_act(x, w, b[:2])
        with pytest.raises(ValueError, match="activation"):
            dwconv_act(x, w, b, "relu")
        with pytest.raises(TypeError, match="residual"):
            dwconv_act(x, w, b, "gelu", 1)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_opcheck(self, backend):
        x, w, b = _inputs((1, 3, 4, 5), 3, torch.float32, requires_grad=True)
        with lk.use_backend(backend):
            torch.library.opcheck(torch.ops.litesam.dwconv_act, (x, w, b, "gelu", True))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k,shape", [(3, (2, 64, 64, 128)), (7, (1, 256, 256, 32))])
def test_triton_on_gpu(dtype, k, shape):
    from tests.dense_gpu import check_triton_on_gpu

    x, w, b = _inputs(shape, k, dtype)
    check_triton_on_gpu(lambda *t: dwconv_act(*t, "gelu", True), lambda *t: _dwconv_reference(*t, "gelu", True),
                        [x, w, b], dtype)
