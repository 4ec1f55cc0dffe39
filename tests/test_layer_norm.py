"""layer_norm2d: every backend against the reference and the model's LayerNorm2d module, gradients in every
dtype, every GPU launch configuration, the bounded parameter-gradient partials."""
import pytest
import torch

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.model.litevit import LayerNorm2d
from litesam_kernels.ops.layer_norm import _layer_norm_reference, layer_norm2d
from tests.half_precision import assert_close_scaled, run_against_float64
from tests.helpers import runnable_backends

OP = _backend.implementations("layer_norm2d")
# Against the float64 reference on the same inputs (16-bit x, float32 weight/bias), max |error| / max
# |reference| per tensor. Measured under the interpreter over 3 seeds x 4 shapes (C 7, 32, 130, 256):
# y: fp16 3.8e-4, bf16 2.8e-3; dx: fp16 4.0e-4, bf16 3.1e-3 (the output rounding); dweight/dbias <= 1.7e-7;
# float32: every tensor <= 1.8e-7. Bounds: about 2.5x.
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
PARAM_TOL = 1e-6
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(shape, dtype, requires_grad=False, param_dtype=None):
    c = shape[-1]
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).to(dtype)
    pdt = param_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)
    w = (torch.rand(c, dtype=torch.float64) + 0.5).to(pdt)
    b = torch.randn(c, dtype=torch.float64).to(pdt)
    return [t.requires_grad_(requires_grad) for t in (x, w, b)]


def _check_gradients(backend, shape, dtype, param_dtype=None):
    out, got, want_out, want, _ = run_against_float64(
        backend, lambda *t: layer_norm2d(*t), lambda *t: _layer_norm_reference(*t, 1e-6),
        _inputs(shape, dtype, requires_grad=True, param_dtype=param_dtype))
    param_tol = max(PARAM_TOL, TOL[param_dtype] if param_dtype in TOL else 0)
    assert_close_scaled(out, want_out, max(TOL[dtype], param_tol), "y")
    assert_close_scaled(got[0], want[0], max(TOL[dtype], param_tol), "dx")
    assert_close_scaled(got[1], want[1], param_tol, "dweight")
    assert_close_scaled(got[2], want[2], param_tol, "dbias")


class TestLayerNorm2d:
    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", DTYPES)
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
        assert_close_scaled(got, want, TOL[dtype])

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_gradcheck_float64(self, backend):
        inputs = _inputs((1, 3, 4, 6), torch.float64, requires_grad=True)
        with lk.use_backend(backend):
            assert torch.autograd.gradcheck(lambda *t: layer_norm2d(*t), inputs, fast_mode=True)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("shape", [(2, 3, 5, 20), (1, 2, 3, 256)])
    def test_gradients_every_dtype(self, backend, dtype, shape):
        _check_gradients(backend, shape, dtype)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("x_dtype,param_dtype", [(torch.bfloat16, torch.float32), (torch.float16, torch.float64),
                                                     (torch.float32, torch.bfloat16)])
    def test_parameters_in_another_dtype(self, backend, x_dtype, param_dtype):
        """fp32 weights with half activations (autocast), and the other way round."""
        _check_gradients(backend, (1, 3, 4, 10), x_dtype, param_dtype=param_dtype)

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


triton = pytest.importorskip("triton")

from litesam_kernels.triton import _configs  # noqa: E402
from litesam_kernels.triton import layer_norm as triton_layer_norm  # noqa: E402


class TestTritonKernels:
    @pytest.mark.parametrize("family,index", [(f.name, i) for f in (triton_layer_norm.FWD_CONFIGS,
                                                                   triton_layer_norm.BWD_CONFIGS)
                                              for i in range(len(f))])
    def test_every_launch_configuration(self, family, index):
        with _configs.force_config(family, index):
            _check_gradients("triton", (1, 5, 17, 40), torch.float32)  # 85 rows: a partial last block

    def test_parameter_gradient_partials_are_bounded(self):
        """Fewer programs than row blocks: each strides over several, the partials stay (programs, 2, C)."""
        x, w, b = _inputs((1, 7, 9, 24), torch.float32)
        grad = torch.randn_like(x)
        x2d, g2d = x.reshape(-1, 24), grad.reshape(-1, 24)
        dx, dw, db = triton_layer_norm.layer_norm_backward(g2d, x2d, w, 1e-6, max_partials=2)
        want = torch.autograd.grad(_layer_norm_reference(x.requires_grad_(), w.requires_grad_(),
                                                         b.requires_grad_(), 1e-6), (x, w, b), grad)
        torch.testing.assert_close(dx.view(x.shape), want[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dw, want[1], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(db, want[2], atol=1e-4, rtol=1e-5)

    def test_wide_rows_get_fewer_per_program(self):
        config = triton_layer_norm.FWD_CONFIGS.configs[1]
        assert triton_layer_norm._blocks(config, 256) == (32, 256)
        assert triton_layer_norm._blocks(config, 4096) == (2, 4096)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("c", [128, 256])
def test_triton_on_gpu(dtype, c):
    from tests.dense_gpu import check_triton_on_gpu

    x, w, b = _inputs((2, 64, 64, c), dtype)
    check_triton_on_gpu(lambda *t: layer_norm2d(*t), lambda *t: _layer_norm_reference(*t, 1e-6), [x, w, b], dtype)


def test_backward_op_checks_its_gradient():
    """Regression (issue 14): the registered backward op is a torch.ops op too; a wrong gradient reached the kernel."""
    x, w = torch.randn(2, 5, 6, 8), torch.ones(8)
    with pytest.raises(ValueError, match=r"grad must have the shape of layer_norm2d's output \(2, 5, 6, 8\)"):
        torch.ops.litesam.layer_norm2d_backward(torch.ones(2, 5, 6, 7), x, w, w, 1e-6)
    with pytest.raises(TypeError, match="grad must have the dtype"):
        torch.ops.litesam.layer_norm2d_backward(torch.ones(2, 5, 6, 8, dtype=torch.float64), x, w, w, 1e-6)
    with pytest.raises(ValueError, match="weight"):
        torch.ops.litesam.layer_norm2d_backward(torch.ones(2, 5, 6, 8), x, torch.ones(7), w, 1e-6)
