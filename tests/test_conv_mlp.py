"""conv_mlp: every backend against the reference and the model's modules (ConvMLP, AttentionBlock's
``x + mlp(norm2(x))``), gradients, half precision and autocast, the fused LayerNorm, TF32, and every GPU
launch configuration of the Triton kernels."""
import pytest
import torch
import torch.nn.functional as F

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.model.litevit import AttentionBlock, ConvMLP
from litesam_kernels.ops.conv_mlp import _conv_mlp_reference, conv_mlp, fold_batchnorm_into_linear
from litesam_kernels.ops.layer_norm import layer_norm2d
from tests.half_precision import assert_close_scaled, float64_copies
from tests.helpers import runnable_backends

OP = _backend.implementations("conv_mlp")
TOL = {torch.float32: 1e-4}
# Half precision against the float64 reference on the same (16-bit) inputs with float32 master weights, as
# max |error| / max |reference| per tensor (the output and every gradient). Measured under the interpreter
# (M 70-300, C 20-128, HID 50-640, with and without the fused LayerNorm, residual = x): float16 <= 9.4e-4,
# bfloat16 <= 5.2e-3 (16-bit weights and hidden values, tanh-form GELU). Bounds: about 2x that.
HALF_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.2e-2}
HALF = [torch.float16, torch.bfloat16]


def _inputs(m_shape, c, hid, dtype, requires_grad=False, residual=True, norm=False):
    """x, w1, b1, w2, b2, residual[, norm_weight, norm_bias]: parameters in float32 (float64 for float64)."""
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(*m_shape, c, dtype=torch.float64).to(dtype)
    w1 = torch.randn(hid, c, dtype=pdt) / c ** 0.5
    b1 = torch.randn(hid, dtype=pdt) * 0.1
    w2 = torch.randn(c, hid, dtype=pdt) / hid ** 0.5
    b2 = torch.randn(c, dtype=pdt) * 0.1
    res = torch.randn_like(x) if residual else None
    extra = [1 + 0.2 * torch.randn(c, dtype=pdt), 0.1 * torch.randn(c, dtype=pdt)] if norm else []
    return [t if t is None else t.requires_grad_(requires_grad) for t in (x, w1, b1, w2, b2, res, *extra)]


def _norm_kwargs(norm_weight, norm_bias, eps=1e-6):
    return dict(norm_weight=norm_weight, norm_bias=norm_bias, norm_eps=eps)


def _grads(out, leaves, grad):
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    return torch.autograd.grad(out, wanted, grad)


class TestConvMLP:
    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", [torch.float32, *HALF])
    @pytest.mark.parametrize("m_shape,c,hid", [((2, 5, 7), 8, 16), ((1, 9, 10), 32, 160), ((70,), 20, 50)])
    def test_matches_model_module(self, backend, dtype, m_shape, c, hid):
        module = ConvMLP(c, hid).double()
        x = torch.randn(*m_shape, c, dtype=torch.float64).to(dtype).double()
        nchw = x.reshape(1, -1, 1, c).permute(0, 3, 1, 2)
        want = (x + module(nchw).permute(0, 2, 3, 1).reshape(x.shape)).detach()
        args = [p.detach().float() for p in (module.fc1.weight[:, :, 0, 0], module.fc1.bias,
                                             module.fc2.weight[:, :, 0, 0], module.fc2.bias)]
        with lk.use_backend(backend):
            got = conv_mlp(x.to(dtype), *args, residual=x.to(dtype))
        assert got.dtype == dtype and got.shape == x.shape
        if dtype == torch.float32:
            torch.testing.assert_close(got.double(), want, atol=TOL[dtype] * 5, rtol=TOL[dtype])
        else:
            assert_close_scaled(got, want, HALF_TOL[dtype])

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", HALF)
    @pytest.mark.parametrize("norm", [False, True], ids=["plain", "layer_norm"])
    @pytest.mark.parametrize("m_shape,c,hid", [((70,), 20, 50), ((2, 9, 10), 32, 128)])
    def test_half_precision_against_float64(self, backend, dtype, norm, m_shape, c, hid):
        """16-bit activations with float32 master weights (what autocast hands the op): output and every
        gradient, residual = x, against the float64 reference on the same values."""
        x, w1, b1, w2, b2, _, *nwb = _inputs(m_shape, c, hid, dtype, requires_grad=True, norm=norm)
        if norm:
            x = (x.detach() * 3 + 1).requires_grad_()  # a LayerNorm input with an offset and a scale
        kwargs = _norm_kwargs(*nwb) if norm else {}
        grad = torch.randn(*m_shape, c, dtype=torch.float64)
        leaves = [x, w1, b1, w2, b2, *nwb]
        with lk.use_backend(backend):
            got = conv_mlp(x, w1, b1, w2, b2, residual=x, **kwargs)
            got_grads = _grads(got, leaves, grad.to(dtype))
        assert got.dtype == dtype
        assert [g.dtype for g in got_grads] == [dtype] + [torch.float32] * (len(leaves) - 1)
        x64, *params64 = float64_copies(leaves)
        want = _conv_mlp_reference(x64, *params64[:4], x64, *params64[4:])
        assert_close_scaled(got, want, HALF_TOL[dtype])
        for g, e in zip(got_grads, _grads(want, [x64, *params64], grad)):
            assert_close_scaled(g, e, HALF_TOL[dtype])

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_autocast_with_float32_weights(self, backend):
        """Under CPU autocast (bf16) the op keeps its own dtype rules: a bf16 output from bf16 x, float32
        gradients for the float32 weights, float32 accumulation inside (autocast does not reach the body)."""
        x, w1, b1, w2, b2, _, nw, nb = _inputs((40,), 24, 96, torch.float32, requires_grad=True, norm=True)
        proj = torch.randn(24, 24, requires_grad=True)
        with lk.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
            t = F.linear(x, proj)  # bf16 under autocast, as a preceding layer would hand it over
            assert t.dtype == torch.bfloat16
            y = conv_mlp(t, w1, b1, w2, b2, residual=t, **_norm_kwargs(nw, nb))
        assert y.dtype == torch.bfloat16
        grads = torch.autograd.grad(y.float().sum(), [w1, b1, w2, b2, nw, nb, proj])
        assert all(g.dtype == torch.float32 for g in grads)
        t64 = t.detach().double()
        want = _conv_mlp_reference(t64, *(p.detach().double() for p in (w1, b1, w2, b2)), t64,
                                   nw.detach().double(), nb.detach().double())
        assert_close_scaled(y, want, HALF_TOL[torch.bfloat16])

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("residual", [True, False])
    @pytest.mark.parametrize("norm", [False, True], ids=["plain", "layer_norm"])
    def test_gradcheck_float64(self, backend, residual, norm):
        inputs = _inputs((2, 3), 5, 7, torch.float64, requires_grad=True, residual=residual, norm=norm)
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

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_fused_layer_norm_is_the_composition(self, backend, dtype):
        """``conv_mlp(x, ..., residual=x, norm_*)`` == ``x + conv_mlp(layer_norm2d(x))``, values and gradients."""
        x, w1, b1, w2, b2, _, nw, nb = _inputs((2, 5, 6), 20, 60, dtype, requires_grad=True, norm=True)
        leaves = [x, w1, b1, w2, b2, nw, nb]
        grad = torch.randn_like(x)
        with lk.use_backend(backend):
            got = conv_mlp(x, w1, b1, w2, b2, residual=x, **_norm_kwargs(nw, nb, 1e-5))
            want = conv_mlp(layer_norm2d(x, nw, nb, 1e-5), w1, b1, w2, b2, residual=x)
            got_grads, want_grads = _grads(got, leaves, grad), _grads(want, leaves, grad)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
        for g, e in zip(got_grads, want_grads):
            torch.testing.assert_close(g, e, atol=tol * 10, rtol=tol * 10)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_attention_block_mlp(self, backend):
        """The call LiteViT's attention stage makes for ``x + mlp(norm2(x))``, against the eager module."""
        block = AttentionBlock(32, 2, (2, 4), 2.0)
        with torch.no_grad():
            block.norm2.weight.add_(torch.randn(32) * 0.2)
            block.norm2.bias.add_(torch.randn(32) * 0.1)
        x = torch.randn(2, 32, 5, 7)
        want = x + block.mlp(block.norm2(x))
        fc1, fc2, norm = block.mlp.fc1, block.mlp.fc2, block.norm2
        t = x.permute(0, 2, 3, 1)
        with lk.use_backend(backend):
            got = conv_mlp(t, fc1.weight[:, :, 0, 0], fc1.bias, fc2.weight[:, :, 0, 0], fc2.bias, residual=t,
                           norm_weight=norm.weight, norm_bias=norm.bias, norm_eps=norm.eps)
            grads = torch.autograd.grad(got.sum(), [norm.weight, norm.bias, fc1.weight, fc2.bias])
        torch.testing.assert_close(got.permute(0, 3, 1, 2), want, atol=1e-5, rtol=1e-5)
        want_grads = torch.autograd.grad(want.sum(), [norm.weight, norm.bias, fc1.weight, fc2.bias])
        for g, e in zip(grads, want_grads):
            torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("norm", [False, True], ids=["plain", "layer_norm"])
    def test_residual_is_input_or_a_copy(self, backend, norm):
        """residual=x (read once) and residual=a copy of x give the same output and input gradient."""
        x, w1, b1, w2, b2, _, *nwb = _inputs((3, 11), 16, 48, torch.float32, requires_grad=True, norm=norm)
        kwargs = _norm_kwargs(*nwb) if norm else {}
        with lk.use_backend(backend):
            same = conv_mlp(x, w1, b1, w2, b2, residual=x, **kwargs)
            x_copy = x.detach().clone().requires_grad_()
            copy = conv_mlp(x_copy, w1, b1, w2, b2, residual=x_copy.clone(), **kwargs)
            torch.testing.assert_close(same, copy)
            torch.testing.assert_close(torch.autograd.grad(same.sum(), x)[0], torch.autograd.grad(copy.sum(), x_copy)[0])

    def test_folded_batchnorm(self):
        x, w1, b1, w2, b2, _ = _inputs((4, 3), 6, 12, torch.float64)
        scale, shift = torch.rand(6, dtype=torch.float64) + 0.5, torch.randn(6, dtype=torch.float64)
        fw1, fb1 = fold_batchnorm_into_linear(w1, b1, scale, shift)
        torch.testing.assert_close(conv_mlp(x, fw1, fb1, w2, b2), conv_mlp(x * scale + shift, w1, b1, w2, b2))

    @pytest.mark.parametrize("dtype", HALF)
    def test_folded_batchnorm_half_weights(self, dtype):
        """Half weights with a BatchNorm's float32 scale/shift (issue 9): folded in float32, returned in the
        weights' dtype, within one 16-bit rounding of the float64 fold."""
        w1, b1 = torch.randn(12, 6).to(dtype), torch.randn(12).to(dtype)
        scale, shift = torch.rand(6) + 0.5, torch.randn(6)
        fw1, fb1 = fold_batchnorm_into_linear(w1, b1, scale, shift)
        assert fw1.dtype == fb1.dtype == dtype
        want_w1, want_b1 = fold_batchnorm_into_linear(w1.double(), b1.double(), scale.double(), shift.double())
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(fw1.double(), want_w1, rtol=eps, atol=0)
        torch.testing.assert_close(fb1.double(), want_b1, rtol=eps, atol=eps)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_edge_cases(self, backend):
        x, w1, b1, w2, b2, res, nw, nb = _inputs((1, 4, 5), 6, 12, torch.float32, norm=True)
        x_nc = x.transpose(1, 2).contiguous().transpose(1, 2)
        with lk.use_backend(backend):
            torch.testing.assert_close(conv_mlp(x_nc, w1, b1, w2, b2, res), conv_mlp(x, w1, b1, w2, b2, res))
            torch.testing.assert_close(conv_mlp(x_nc, w1, b1, w2, b2, x_nc, nw, nb),
                                       conv_mlp(x, w1, b1, w2, b2, x, nw, nb))
            one = x[:, :1, :1]
            torch.testing.assert_close(conv_mlp(one, w1, b1, w2, b2), _conv_mlp_reference(one, w1, b1, w2, b2, None),
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(conv_mlp(one, w1, b1, w2, b2, None, nw, nb),
                                       _conv_mlp_reference(one, w1, b1, w2, b2, None, nw, nb), atol=1e-5, rtol=1e-5)
            assert conv_mlp(x[:0], w1, b1, w2, b2).shape == (0, 4, 5, 6)
            assert conv_mlp(x[:0], w1, b1, w2, b2, None, nw, nb).shape == (0, 4, 5, 6)
            # one channel: the LayerNorm output is its bias, whatever x is
            x1 = torch.randn(7, 1)
            torch.testing.assert_close(conv_mlp(x1, w1[:, :1], b1, w2[:1], b2[:1], None, nw[:1], nb[:1]),
                                       conv_mlp(torch.zeros(7, 1) + nb[:1], w1[:, :1], b1, w2[:1], b2[:1]))

    def test_errors(self):
        x, w1, b1, w2, b2, res, nw, nb = _inputs((1, 4, 5), 6, 12, torch.float32, norm=True)
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
        with pytest.raises(ValueError, match="norm_weight and norm_bias"):
            conv_mlp(x, w1, b1, w2, b2, norm_weight=nw)
        with pytest.raises(ValueError, match="norm_bias"):
            conv_mlp(x, w1, b1, w2, b2, norm_weight=nw, norm_bias=nb[:2])
        with pytest.raises(TypeError, match="norm_weight"):
            conv_mlp(x, w1, b1, w2, b2, norm_weight=nw.int(), norm_bias=nb)
        with pytest.raises(ValueError, match="norm_eps"):
            conv_mlp(x, w1, b1, w2, b2, norm_weight=nw, norm_bias=nb, norm_eps=0.0)
        with pytest.raises(ValueError, match="norm_eps"):
            torch.ops.litesam.conv_mlp(x, w1, b1, w2, b2, None, nw, nb, -1.0)

    def test_backward_op_checks_its_gradient(self):
        """Regression (issue 14): the backward op is a torch.ops entry too; a wrong gradient never reaches
        a kernel."""
        x, w1, b1, w2, b2, _, nw, nb = _inputs((1, 4, 5), 6, 12, torch.float32, norm=True)
        backward = torch.ops.litesam.conv_mlp_backward
        with pytest.raises(ValueError, match="grad must have the shape"):
            backward(torch.ones(1, 4, 5, 5), x, w1, b1, w2, b2, nw, nb, 1e-6)
        with pytest.raises(TypeError, match="grad must have the dtype"):
            backward(torch.ones(1, 4, 5, 6, dtype=torch.float64), x, w1, b1, w2, b2, nw, nb, 1e-6)
        with pytest.raises(ValueError, match="w2"):
            backward(torch.ones(1, 4, 5, 6), x, w1, b1, w2[:, :3], b2, None, None, 1e-6)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_opcheck(self, backend):
        x, w1, b1, w2, b2, res, nw, nb = _inputs((2, 3), 5, 7, torch.float32, requires_grad=True, norm=True)
        with lk.use_backend(backend):
            torch.library.opcheck(torch.ops.litesam.conv_mlp, (x, w1, b1, w2, b2, res))
            torch.library.opcheck(torch.ops.litesam.conv_mlp, (x, w1, b1, w2, b2, None))
            torch.library.opcheck(torch.ops.litesam.conv_mlp, (x, w1, b1, w2, b2, res, nw, nb, 1e-5))


# ------------------------------------------------------------------------- the Triton kernels' GPU paths
triton_only = pytest.mark.skipif(bool(_backend.why_not("triton", OP, torch.device("cpu"))),
                                 reason=str(_backend.why_not("triton", OP, torch.device("cpu"))))


def _families():
    if _backend.why_not("triton", OP, torch.device("cpu")):
        return []
    from litesam_kernels.triton.conv_mlp import BWD_CONFIGS, FWD_CONFIGS

    return [(family, bound, i) for sized in (FWD_CONFIGS, BWD_CONFIGS) for bound, family in sized.classes
            for i in range(len(family))]


# an input of each row-size class (element size x padded C): (dtype, C)
_CLASS_INPUTS = {128: (torch.float16, 40), 256: (torch.bfloat16, 100), 512: (torch.float32, 100),
                 2048: (torch.float32, 200)}


@triton_only
@pytest.mark.parametrize("family,bound,index", [pytest.param(*f, id=f"{f[0].name}[{f[2]}]") for f in _families()])
def test_every_launch_configuration(family, bound, index):
    """Each GPU configuration, forced under the interpreter on an input of its class with a token tail and a
    hidden-dim tail: forward with the fused LayerNorm (separate residual) and without (residual = x), and the
    fused-LayerNorm backward, against the float64 reference."""
    from litesam_kernels.triton._configs import force_config

    dtype, c = _CLASS_INPUTS[bound]
    config = family.configs[index]
    m, hid = config.meta["BLOCK_M"] + 5, config.meta["BLOCK_H"] + 8
    x, w1, b1, w2, b2, _, nw, nb = _inputs((m,), c, hid, dtype, requires_grad=True, norm=True)
    leaves = [x, w1, b1, w2, b2, nw, nb]
    grad = torch.randn(m, c, dtype=torch.float64)
    with lk.use_backend("triton"), force_config(family.name, index):
        plain = conv_mlp(x, w1, b1, w2, b2, residual=x)
        fused = conv_mlp(x, w1, b1, w2, b2, residual=x, **_norm_kwargs(nw, nb))
        got_grads = _grads(fused, leaves, grad.to(dtype))
    x64, *p64 = float64_copies(leaves)
    tol = HALF_TOL.get(dtype, 1e-5)
    assert_close_scaled(plain, _conv_mlp_reference(x64, *p64[:4], x64), tol)
    want = _conv_mlp_reference(x64, *p64[:4], x64, *p64[4:])
    assert_close_scaled(fused, want, tol)
    for g, e in zip(got_grads, _grads(want, [x64, *p64], grad)):
        assert_close_scaled(g, e, tol)


@pytest.fixture
def cudnn_tf32():
    saved = torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32 = saved


@triton_only
def test_float32_dots_follow_cudnn_tf32_switch(cudnn_tf32, monkeypatch):
    """fp32 dots run as TF32 when ``torch.backends.cudnn.allow_tf32`` (the eager 1x1 convs' switch, on by
    default) allows it, else exactly. With TF32 products emulated by the interpreter (tests/tf32_emulation.py),
    the error against float64 at the attention stage's shape (C=128, HID=640) was measured at 4.2e-4 of the
    output's max with TF32 and 3.2e-7 without."""
    from tests.tf32_emulation import emulated_tf32

    monkeypatch.delenv("LITESAM_FP32_DOT", raising=False)
    x, w1, b1, w2, b2, _, nw, nb = _inputs((96,), 128, 640, torch.float32, norm=True)
    want = _conv_mlp_reference(*float64_copies([x, w1, b1, w2, b2]), None, *float64_copies([nw, nb]))

    def relative_error():
        with emulated_tf32(), lk.use_backend("triton"):
            got = conv_mlp(x, w1, b1, w2, b2, None, nw, nb)
        return float((got.double() - want).abs().max() / want.abs().max())

    torch.backends.cudnn.allow_tf32 = True
    assert 5e-5 < relative_error() < 2e-3
    monkeypatch.setenv("LITESAM_FP32_DOT", "ieee")  # the override wins over the switch
    assert relative_error() < 5e-6
    monkeypatch.delenv("LITESAM_FP32_DOT")
    torch.backends.cudnn.allow_tf32 = False
    assert relative_error() < 5e-6


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("c,hid,norm", [(32, 128, False), (128, 640, True)])
def test_triton_on_gpu(dtype, c, hid, norm):
    from tests.dense_gpu import check_triton_on_gpu

    x, w1, b1, w2, b2, res, *nwb = _inputs((2, 64, 64), c, hid, dtype, norm=norm)
    check_triton_on_gpu(lambda *t: conv_mlp(*t), _conv_mlp_reference, [x, w1, b1, w2, b2, res, *nwb], dtype)
