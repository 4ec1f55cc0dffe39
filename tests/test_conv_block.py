"""dwconv_act: every backend against the reference and the model's DWConvBNAct (BN folded), gradients in every
dtype and activation/residual combination, every GPU launch configuration, the bounded weight-gradient partials."""
import pytest
import torch

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.model.litevit import DWConvBNAct
from litesam_kernels.ops.conv_block import _dwconv_reference, dwconv_act, fold_batchnorm
from tests.half_precision import assert_close_scaled, run_against_float64
from tests.helpers import runnable_backends

OP = _backend.implementations("dwconv_act")
# Against the float64 reference on the same inputs (16-bit x, float32 weight/bias), max |error| / max
# |reference| per tensor. Measured under the interpreter over 3 seeds x 5 cases (3x3 and 7x7, C 5-70, every
# activation/residual combination): y: fp16 4.2e-4, bf16 2.5e-3; dx: fp16 1.0e-3, bf16 3.7e-3; dweight/dbias:
# 8.6e-4 and 1.0e-3 with GELU (the 16-bit kernels' tanh-form GELU and its derivative against the exact one;
# 1.3e-7 without); float32: every tensor <= 2.6e-7. Bounds: about 2.5x.
TOL = {torch.float16: (1e-3, 2.5e-3, 2.5e-3), torch.bfloat16: (8e-3, 1e-2, 2.5e-3), torch.float32: (1e-6, 1e-6, 1e-6)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
COMBINATIONS = [("gelu", True), ("gelu", False), ("none", True), ("none", False)]


def _inputs(shape, k, dtype, requires_grad=False, param_dtype=None):
    c = shape[-1]
    pdt = param_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    w = (torch.randn(c, k, k, dtype=torch.float64) / k).to(pdt)
    b = (torch.randn(c, dtype=torch.float64) * 0.1).to(pdt)
    return [t.requires_grad_(requires_grad) for t in (x, w, b)]


def _check_gradients(backend, shape, k, dtype, activation, residual, param_dtype=None):
    out, got, want_out, want, _ = run_against_float64(
        backend, lambda *t: dwconv_act(*t, activation, residual),
        lambda *t: _dwconv_reference(*t, activation, residual),
        _inputs(shape, k, dtype, requires_grad=True, param_dtype=param_dtype))
    y_tol, dx_tol, param_tol = TOL[dtype]
    param_tol = max(param_tol, TOL[param_dtype][0] if param_dtype in TOL else 0)  # the parameters' own rounding
    assert_close_scaled(out, want_out, y_tol, "y")
    assert_close_scaled(got[0], want[0], dx_tol, "dx")
    assert_close_scaled(got[1], want[1], param_tol, "dweight")
    assert_close_scaled(got[2], want[2], param_tol, "dbias")


class TestDWConvAct:
    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", DTYPES)
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
        assert_close_scaled(got, want.detach(), TOL[dtype][0])

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("k", [3, 7])
    @pytest.mark.parametrize("activation,residual", COMBINATIONS)
    def test_gradients_every_dtype_and_combination(self, backend, dtype, k, activation, residual):
        _check_gradients(backend, (1, 4, 7, 20), k, dtype, activation, residual)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("x_dtype,param_dtype", [(torch.bfloat16, torch.float32), (torch.float16, torch.float64),
                                                     (torch.float32, torch.bfloat16)])
    def test_parameters_in_another_dtype(self, backend, x_dtype, param_dtype):
        """fp32 weights with half activations (autocast), and the other way round."""
        _check_gradients(backend, (1, 5, 6, 5), 3, x_dtype, "gelu", True, param_dtype=param_dtype)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("activation,residual", [("gelu", True), ("none", False)])
    def test_gradcheck_float64(self, backend, activation, residual):
        inputs = _inputs((1, 4, 5, 3), 3, torch.float64, requires_grad=True)
        with lk.use_backend(backend):
            assert torch.autograd.gradcheck(lambda *t: dwconv_act(*t, activation, residual), inputs, fast_mode=True)

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
        with pytest.raises(ValueError, match="weight"):
            dwconv_act(x, torch.randn(6, 11, 11), b)
        with pytest.raises(TypeError, match="weight"):
            dwconv_act(x, w.int(), b)
        with pytest.raises(ValueError, match="bias"):
            dwconv_act(x, w, b[:2])
        with pytest.raises(ValueError, match="activation"):
            dwconv_act(x, w, b, "relu")
        with pytest.raises(TypeError, match="residual"):
            dwconv_act(x, w, b, "gelu", 1)
        with pytest.raises(ValueError, match="activation"):
            torch.ops.litesam.dwconv_act(x, w, b, "tanh", False)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_opcheck(self, backend):
        x, w, b = _inputs((1, 3, 4, 5), 3, torch.float32, requires_grad=True)
        with lk.use_backend(backend):
            torch.library.opcheck(torch.ops.litesam.dwconv_act, (x, w, b, "gelu", True))


triton = pytest.importorskip("triton")

from litesam_kernels.triton import _configs  # noqa: E402
from litesam_kernels.triton import conv_block as triton_conv_block  # noqa: E402

FAMILIES = (triton_conv_block.FWD_CONFIGS, triton_conv_block.GRAD_PRE_CONFIGS, triton_conv_block.DX_CONFIGS,
            triton_conv_block.WGRAD_CONFIGS)


class TestTritonKernels:
    @pytest.mark.parametrize("family,index", [(f.name, i) for f in FAMILIES for i in range(len(f))])
    def test_every_launch_configuration(self, family, index):
        """Each GPU configuration of each kernel (the others at their defaults), with GELU and residual, on an
        input with two W blocks and a padded channel block."""
        with _configs.force_config(family, index):
            _check_gradients("triton", (1, 2, 70, 20), 3, torch.float32, "gelu", True)

    @pytest.mark.parametrize("k,act", [(3, True), (7, False)])
    def test_weight_gradient_partials_are_bounded(self, k, act):
        """Few partial rows for many row tiles: every program strides over several tiles, and the buffer does
        not grow with the image."""
        x, w, b = _inputs((2, 5, 40, 6), k, torch.float32)
        grad = torch.randn_like(x)
        taps = w.reshape(6, k * k).t().contiguous()
        want = torch.autograd.grad(_dwconv_reference(x.requires_grad_(), w.requires_grad_(), b.requires_grad_(),
                                                     "gelu" if act else "none", True), (x, w, b), grad)
        dx, dtaps, db = triton_conv_block.dwconv_backward(grad, x.detach(), taps, b.detach(), k, act, True,
                                                          max_partials=3)
        torch.testing.assert_close(dx, want[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dtaps.t().reshape(6, k, k), want[1], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(db, want[2], atol=1e-4, rtol=1e-5)
        assert triton_conv_block.wgrad_programs(x.shape, 4, 3) == (3, 2 * 5 * 10)
        assert triton_conv_block.wgrad_programs((64, 1024, 1024, 64), 4) == (triton_conv_block.WGRAD_PARTIALS,
                                                                           64 * 1024 * 256)

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("activation,residual", [("gelu", True), ("none", False)])  # the model's two uses
    def test_every_launch_has_an_aot_entry(self, monkeypatch, dtype, activation, residual):
        """What a GPU compiles for the forward and backward launches (pointer dtypes, K, ACT, RESIDUAL) is among
        AOT_KERNELS, so CI compiles and the static report reads it: without an activation the backward's
        pre-activation gradient is the output's, in x's dtype (a 16-bit ``gu_ptr``)."""
        launched = []
        for name in ("_dwconv_fwd_kernel", "_dwconv_grad_pre_kernel", "_dwconv_dx_kernel", "_dwconv_wgrad_kernel"):
            monkeypatch.setattr(triton_conv_block, name, _LaunchRecorder(getattr(triton_conv_block, name), launched))
        x, w, b = _inputs((1, 3, 20, 8), 3, dtype)
        taps = w.reshape(8, 9).t().contiguous()
        act = activation == "gelu"
        triton_conv_block.dwconv_forward(x, taps, b, 3, act, residual)
        triton_conv_block.dwconv_backward(torch.randn_like(x), x, taps, b, 3, act, residual)
        compiled = {_launch_key(kernel.__name__, [v for v in signature.values() if v.startswith("*")], constexprs)
                    for kernel, signature, constexprs, _ in triton_conv_block.AOT_KERNELS}
        assert len(launched) == (4 if act else 3)
        for launch in launched:
            assert launch in compiled, launch

    def test_launch_limits(self):
        with pytest.raises(ValueError, match="row tiles"):
            triton_conv_block.wgrad_programs((2**16, 2**14, 16, 8), 4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k,shape", [(3, (2, 64, 64, 128)), (7, (1, 256, 256, 32))])
def test_triton_on_gpu(dtype, k, shape):
    from tests.dense_gpu import check_triton_on_gpu

    x, w, b = _inputs(shape, k, dtype)
    check_triton_on_gpu(lambda *t: dwconv_act(*t, "gelu", True), lambda *t: _dwconv_reference(*t, "gelu", True),
                        [x, w, b], dtype)


def test_backward_op_checks_its_gradient():
    """Regression (issue 14): the registered backward op is a torch.ops op too; a wrong gradient reached the kernel."""
    x, w, b = torch.randn(2, 5, 6, 8), torch.randn(8, 3, 3), torch.ones(8)
    with pytest.raises(ValueError, match=r"grad must have the shape of dwconv_act's output \(2, 5, 6, 8\)"):
        torch.ops.litesam.dwconv_act_backward(torch.ones(2, 5, 6, 7), x, w, b, "gelu", False)
    with pytest.raises(ValueError, match="activation"):
        torch.ops.litesam.dwconv_act_backward(torch.ones(2, 5, 6, 8), x, w, b, "relu", False)


_TRITON_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _launch_key(kernel_name, pointers, constexprs):
    """A launch as the AOT entries name it: the kernel, its pointers' dtypes in order, the specialising flags."""
    flags = tuple((name, constexprs[name]) for name in ("K", "ACT", "RESIDUAL") if name in constexprs)
    return kernel_name, tuple(p.split(":")[0] for p in pointers), flags


class _LaunchRecorder:
    """``kernel[grid](...)`` that records the launch's :func:`_launch_key` before running it."""

    def __init__(self, kernel, launched):
        self.kernel, self.launched, self.__name__ = kernel, launched, kernel.__name__

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            pointers = ["*" + _TRITON_DTYPES[a.dtype] for a in args if isinstance(a, torch.Tensor)]
            self.launched.append(_launch_key(self.__name__, pointers, kwargs))
            return self.kernel[grid](*args, **kwargs)
        return launch
