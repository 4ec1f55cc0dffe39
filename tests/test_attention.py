"""Pooled-KV attention: multi_head_attention, multi_head_attention_projected and kv_pool2d against their
references (and torch SDPA / avg_pool2d), gradients, half precision and autocast, TF32, every GPU launch
configuration, and pooled_kv_attention against the model's PooledKVAttention module."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.model import fused_ops
from litesam_kernels.model.litevit import PooledKVAttention
from litesam_kernels.model.litevit_fused import Folds
from litesam_kernels.ops.attention import (_attention_projected_reference, _attention_reference,
                                           _kv_pool_backward_reference, _kv_pool_reference, kv_pool2d,
                                           multi_head_attention, multi_head_attention_projected, pooled_kv_attention)
from tests.half_precision import assert_close_scaled, float64_copies
from tests.helpers import runnable_backends

ATTN = _backend.implementations("multi_head_attention")
POOL = _backend.implementations("kv_pool2d")
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# Half precision against float64 on the same (16-bit) inputs, as max |error| / max |reference| per tensor
# (output and every gradient). Measured under the interpreter (Lq 64-150, Lk 21-130, D 16-64, with and without
# the fused projection + residual, and kv_pool2d): float16 <= 8.4e-4, bfloat16 <= 5.3e-3. Bounds: about 2x.
HALF_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.2e-2}
HALF = [torch.float16, torch.bfloat16]


def _qkv(b, lq, lk_, nh, d, dtype, requires_grad=False):
    q, k, v = (torch.randn(b, n, nh, d, dtype=torch.float64).to(dtype) for n in (lq, lk_, lk_))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def _projection(cout, c, b, lq, dtype, requires_grad=False):
    """wproj, bproj (float32, float64 for float64) and a residual in dtype."""
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    wproj = torch.randn(cout, c, dtype=pdt) / c ** 0.5
    bproj = 0.1 * torch.randn(cout, dtype=pdt)
    residual = torch.randn(b, lq, cout, dtype=torch.float64).to(dtype)
    return [t.requires_grad_(requires_grad) for t in (wproj, bproj, residual)]


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(*(t.double().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)


def _check_against_float64(got, got_grads, want, leaves64, grad, tol):
    assert_close_scaled(got, want, tol)
    for g, e in zip(got_grads, torch.autograd.grad(want, leaves64, grad)):
        assert_close_scaled(g, e, tol)


def _check_state_only_when_a_gradient_can_need_it(backend, function, inputs, op_name, run_inference_op):
    """``function(**inputs)`` runs ``litesam::<op_name>`` (keeping the backward's state) when grad mode is on
    and any input requires grad, ``litesam::<op_name>_inference`` otherwise, with the same output bit for bit;
    the inference op has no backward (``run_inference_op(q)`` calls it on a q that requires grad)."""
    stored, inference = f"litesam.{op_name}.default", f"litesam.{op_name}_inference.default"

    def run(needs_grad=(), grad_mode=True):
        args = {name: t.detach().requires_grad_(name in needs_grad) for name, t in inputs.items()}
        recorder = _OpRecorder()
        with lk.use_backend(backend), torch.set_grad_enabled(grad_mode), recorder:
            y = function(**args)
        ops = [op for op in recorder.ops if op in (stored, inference)]
        assert len(ops) == 1, recorder.ops
        return ops[0], y.detach()

    want_op, want = run()
    assert want_op == inference
    for name in inputs:
        op, y = run(needs_grad=(name,))
        assert op == stored, name
        assert torch.equal(y, want), name
    assert run(needs_grad=tuple(inputs), grad_mode=False)[0] == inference
    with lk.use_backend(backend), pytest.raises(RuntimeError, match="no autograd"):
        run_inference_op(inputs["q"].detach().requires_grad_()).sum().backward()


class TestMultiHeadAttention:
    @pytest.mark.parametrize("backend", runnable_backends(ATTN))
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("b,lq,lk_,nh,d", [(2, 70, 21, 2, 16), (1, 5, 130, 1, 32), (1, 1, 1, 3, 32),
                                               (1, 33, 128, 2, 64)])
    def test_forward_matches_sdpa(self, backend, dtype, b, lq, lk_, nh, d):
        q, k, v = _qkv(b, lq, lk_, nh, d, dtype)
        with lk.use_backend(backend):
            got = multi_head_attention(q, k, v)
        assert got.dtype == dtype and got.shape == q.shape
        torch.testing.assert_close(got.double(), _sdpa(q, k, v), atol=TOL[dtype] * 4, rtol=TOL[dtype])

    @pytest.mark.parametrize("backend", runnable_backends(ATTN))
    def test_gradcheck_float64(self, backend):
        inputs = _qkv(1, 9, 5, 2, 16, torch.float64, requires_grad=True)
        with lk.use_backend(backend):
            assert torch.autograd.gradcheck(lambda *t: multi_head_attention(*t, scale=0.3), inputs, fast_mode=True)

    @pytest.mark.parametrize("backend", runnable_backends(ATTN))
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
    def test_backward_matches_reference(self, backend, dtype):
        q, k, v = _qkv(2, 67, 80, 2, 32, dtype, requires_grad=True)
        grad = torch.randn_like(q)
        with lk.use_backend(backend):
            got = torch.autograd.grad(multi_head_attention(q, k, v), (q, k, v), grad)
        want = torch.autograd.grad(_attention_reference(q, k, v, 32 ** -0.5)[0], (q, k, v), grad)
        tol = 1e-4 if dtype == torch.float32 else 1e-2
        for g, e in zip(got, want):
            torch.testing.assert_close(g.float(), e.float(), atol=tol, rtol=tol)

    @pytest.mark.parametrize("backend", runnable_backends(ATTN))
    @pytest.mark.parametrize("dtype", HALF)
    @pytest.mark.parametrize("b,lq,lk_,nh,d", [(2, 70, 21, 2, 16), (1, 150, 130, 4, 32), (1, 64, 128, 2, 64)])
    def test_half_precision_against_float64(self, backend, dtype, b, lq, lk_, nh, d):
        """Forward and backward in 16 bits (key tails and exact multiples of the key block)."""
        q, k, v = _qkv(b, lq, lk_, nh, d, dtype, requires_grad=True)
        grad = torch.randn(b, lq, nh, d, dtype=torch.float64)
        with lk.use_backend(backend):
            got = multi_head_attention(q, k, v)
            got_grads = torch.autograd.grad(got, (q, k, v), grad.to(dtype))
        assert got.dtype == dtype and all(g.dtype == dtype for g in got_grads)
        leaves = float64_copies([q, k, v])
        want = _attention_reference(*leaves, d ** -0.5)[0]
        _check_against_float64(got, got_grads, want, leaves, grad, HALF_TOL[dtype])

    @pytest.mark.parametrize("backend", runnable_backends(ATTN))
    def test_strided_inputs_and_large_logits(self, backend):
        kv = torch.randn(1, 12, 2, 2, 16)  # a fused KV projection viewed as (B, L, 2, heads, D)
        q = torch.randn(1, 10, 2, 16) * 30  # saturated softmax: online max must keep it finite
        with lk.use_backend(backend):
            got = multi_head_attention(q, kv[:, :, 0], kv[:, :, 1])
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), _sdpa(q, kv[:, :, 0], kv[:, :, 1]), atol=1e-4, rtol=1e-4)

    def test_errors(self):
        q, k, v = _qkv(1, 4, 3, 2, 16, torch.float32)
        with pytest.raises(ValueError, match="head dim"):
            multi_head_attention(q[..., :8], k[..., :8], v[..., :8])
        with pytest.raises(TypeError, match="k"):
            multi_head_attention(q, k.half(), v)
        with pytest.raises(ValueError, match="k and v"):
            multi_head_attention(q, k, v[:, :2])
        with pytest.raises(ValueError, match="k and v"):
            multi_head_attention(q, k[:, :0], v[:, :0])
        with pytest.raises(ValueError, match="q"):
            multi_head_attention(q[0], k, v)
        with pytest.raises(ValueError, match="scale"):
            multi_head_attention(q, k, v, scale=0.0)
        for op in (torch.ops.litesam.multi_head_attention, torch.ops.litesam.multi_head_attention_inference):
            with pytest.raises(ValueError, match="k and v"):
                op(q, k, v[:, :2], 0.25)

    @pytest.mark.parametrize("backend", runnable_backends(ATTN))
    def test_opcheck(self, backend):
        q, k, v = _qkv(1, 6, 5, 2, 16, torch.float32, requires_grad=True)
        with lk.use_backend(backend):
            torch.library.opcheck(torch.ops.litesam.multi_head_attention, (q, k, v, 0.25))
            # not differentiable: opcheck on inputs that need no gradient
            torch.library.opcheck(torch.ops.litesam.multi_head_attention_inference,
                                  (q.detach(), k.detach(), v.detach(), 0.25))

    @pytest.mark.parametrize("backend", runnable_backends(ATTN))
    def test_backward_state_only_when_a_gradient_can_need_it(self, backend):
        """The log-sum-exp-keeping op runs when grad mode is on and any input requires grad, the inference
        op otherwise; both give the same output, bit for bit."""
        q, k, v = _qkv(1, 6, 5, 2, 16, torch.float32)
        _check_state_only_when_a_gradient_can_need_it(
            backend, multi_head_attention, {"q": q, "k": k, "v": v}, "multi_head_attention",
            lambda q: torch.ops.litesam.multi_head_attention_inference(q, k, v, 0.25))


class TestMultiHeadAttentionProjected:
    @pytest.mark.parametrize("backend", runnable_backends(ATTN))
    @pytest.mark.parametrize("residual", [True, False])
    @pytest.mark.parametrize("b,lq,lk_,nh,d,cout", [(2, 70, 21, 2, 16, 32), (1, 45, 130, 4, 32, 128),
                                                    (1, 20, 9, 1, 64, 48)])
    def test_matches_attention_then_linear(self, backend, residual, b, lq, lk_, nh, d, cout):
        """== linear(multi_head_attention(q, k, v).flatten(2), wproj, bproj) [+ residual], values and gradients
        (any output width up to 256, not only heads x D)."""
        q, k, v = _qkv(b, lq, lk_, nh, d, torch.float32, requires_grad=True)
        wproj, bproj, res = _projection(cout, nh * d, b, lq, torch.float32, requires_grad=True)
        res = res if residual else None
        leaves = [q, k, v, wproj, bproj] + ([res] if residual else [])
        grad = torch.randn(b, lq, cout)
        with lk.use_backend(backend):
            got = multi_head_attention_projected(q, k, v, wproj, bproj, res)
            want = F.linear(multi_head_attention(q, k, v).flatten(2), wproj, bproj) + (0 if res is None else res)
            got_grads = torch.autograd.grad(got, leaves, grad)
            want_grads = torch.autograd.grad(want, leaves, grad)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        for g, e in zip(got_grads, want_grads):
            torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)

    @pytest.mark.parametrize("backend", runnable_backends(ATTN))
    @pytest.mark.parametrize("dtype", HALF)
    def test_half_precision_against_float64(self, backend, dtype):
        """16-bit activations and residual with float32 projection weights (as autocast gives them)."""
        q, k, v = _qkv(2, 75, 70, 4, 32, dtype, requires_grad=True)
        wproj, bproj, res = _projection(128, 128, 2, 75, dtype, requires_grad=True)
        leaves = [q, k, v, wproj, bproj, res]
        grad = torch.randn(2, 75, 128, dtype=torch.float64)
        with lk.use_backend(backend):
            got = multi_head_attention_projected(q, k, v, wproj, bproj, res)
            got_grads = torch.autograd.grad(got, leaves, grad.to(dtype))
        assert got.dtype == dtype
        assert [g.dtype for g in got_grads] == [dtype] * 3 + [torch.float32] * 2 + [dtype]
        q64, k64, v64, w64, b64, r64 = leaves64 = float64_copies(leaves)
        want = _attention_projected_reference(q64, k64, v64, 32 ** -0.5, w64, b64, r64)[0]
        _check_against_float64(got, got_grads, want, leaves64, grad, HALF_TOL[dtype])

    @pytest.mark.parametrize("backend", runnable_backends(ATTN))
    def test_gradcheck_float64(self, backend):
        q, k, v = _qkv(1, 7, 5, 2, 16, torch.float64, requires_grad=True)
        wproj, bproj, res = _projection(24, 32, 1, 7, torch.float64, requires_grad=True)
        with lk.use_backend(backend):
            assert torch.autograd.gradcheck(
                lambda *t: multi_head_attention_projected(*t[:5], t[5], scale=0.4), (q, k, v, wproj, bproj, res),
                fast_mode=True)

    def test_errors(self):
        q, k, v = _qkv(1, 4, 3, 2, 16, torch.float32)
        wproj, bproj, res = _projection(32, 32, 1, 4, torch.float32)
        with pytest.raises(ValueError, match="wproj"):
            multi_head_attention_projected(q, k, v, wproj[:, :16], bproj)
        with pytest.raises(ValueError, match="wproj"):
            multi_head_attention_projected(q, k, v, torch.randn(300, 32), torch.randn(300))
        with pytest.raises(ValueError, match="bproj"):
            multi_head_attention_projected(q, k, v, wproj, bproj[:3])
        with pytest.raises(ValueError, match="residual"):
            multi_head_attention_projected(q, k, v, wproj, bproj, res[:, :2])
        with pytest.raises(TypeError, match="residual"):
            multi_head_attention_projected(q, k, v, wproj, bproj, res.double())
        with pytest.raises(TypeError, match="wproj"):
            multi_head_attention_projected(q, k, v, wproj.int(), bproj)
        q128, k128, v128 = _qkv(1, 4, 3, 1, 128, torch.float32)
        with pytest.raises(ValueError, match="head dim"):
            multi_head_attention_projected(q128, k128, v128, torch.randn(32, 128), bproj)
        for op in (torch.ops.litesam.multi_head_attention_projected,
                   torch.ops.litesam.multi_head_attention_projected_inference):
            with pytest.raises(ValueError, match="wproj"):
                op(q, k, v, 0.25, wproj[:, :3], bproj, None)

    @pytest.mark.parametrize("backend", runnable_backends(ATTN))
    def test_opcheck(self, backend):
        q, k, v = _qkv(1, 6, 5, 2, 16, torch.float32, requires_grad=True)
        wproj, bproj, res = _projection(32, 32, 1, 6, torch.float32, requires_grad=True)
        with lk.use_backend(backend):
            torch.library.opcheck(torch.ops.litesam.multi_head_attention_projected, (q, k, v, 0.25, wproj, bproj, res))
            torch.library.opcheck(torch.ops.litesam.multi_head_attention_projected, (q, k, v, 0.25, wproj, bproj, None))
            # not differentiable: opcheck on inputs that need no gradient
            inputs = [t.detach() for t in (q, k, v)] + [0.25, wproj.detach(), bproj.detach(), res.detach()]
            torch.library.opcheck(torch.ops.litesam.multi_head_attention_projected_inference, inputs)

    @pytest.mark.parametrize("backend", runnable_backends(ATTN))
    def test_backward_state_only_when_a_gradient_can_need_it(self, backend):
        """The state-keeping op runs when grad mode is on and any input requires grad, the inference op
        (no O, no log-sum-exp) otherwise; both give the same output, bit for bit."""
        q, k, v = _qkv(1, 6, 5, 2, 16, torch.float32)
        wproj, bproj, res = _projection(32, 32, 1, 6, torch.float32)
        _check_state_only_when_a_gradient_can_need_it(
            backend, multi_head_attention_projected,
            {"q": q, "k": k, "v": v, "wproj": wproj, "bproj": bproj, "residual": res}, "multi_head_attention_projected",
            lambda q: torch.ops.litesam.multi_head_attention_projected_inference(q, k, v, 0.25, wproj, bproj, res))


class TestKVPool2d:
    @pytest.mark.parametrize("backend", runnable_backends(POOL))
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("shape,sizes", [((2, 8, 8, 6), (2, 4)), ((1, 7, 9, 20), (2, 4)), ((1, 3, 2, 5), (4,)),
                                             ((1, 5, 5, 3), (1, 2, 3))])
    def test_matches_avg_pool(self, backend, dtype, shape, sizes):
        x = torch.randn(shape, dtype=torch.float64).to(dtype)
        nchw = x.double().permute(0, 3, 1, 2)
        want = torch.cat([F.avg_pool2d(nchw, s, s, ceil_mode=True).flatten(2) for s in sizes], 2).transpose(1, 2)
        with lk.use_backend(backend):
            got = kv_pool2d(x, sizes)
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, atol=TOL[dtype], rtol=TOL[dtype])

    @pytest.mark.parametrize("backend", runnable_backends(POOL))
    def test_gradients(self, backend):
        x = torch.randn(1, 5, 7, 3, dtype=torch.float64, requires_grad=True)
        with lk.use_backend(backend):
            assert torch.autograd.gradcheck(lambda t: kv_pool2d(t, (2, 4)), (x,), fast_mode=True)
            g = torch.randn(1, 16, 3, dtype=torch.float64)  # 3 x 4 + 2 x 2 tokens
            got = torch.autograd.grad(kv_pool2d(x, (2, 4)), x, g)[0]
        want = torch.autograd.grad(_kv_pool_reference(x, [2, 4]), x, g)[0]
        torch.testing.assert_close(got, want)

    @pytest.mark.parametrize("backend", runnable_backends(POOL))
    @pytest.mark.parametrize("dtype", HALF)
    def test_half_precision_backward(self, backend, dtype):
        x = torch.randn(2, 9, 11, 40, dtype=torch.float64).to(dtype).requires_grad_()
        with lk.use_backend(backend):
            got = kv_pool2d(x, (2, 4))
            grad = torch.randn_like(got)
            got_grad = torch.autograd.grad(got, x, grad)[0]
        assert got_grad.dtype == dtype
        (x64,) = leaves = float64_copies([x])
        _check_against_float64(got, [got_grad], _kv_pool_reference(x64, [2, 4]), leaves, grad.double(),
                               HALF_TOL[dtype])

    def test_errors(self):
        with pytest.raises(ValueError, match="pool_sizes"):
            kv_pool2d(torch.randn(1, 4, 4, 2), (0,))
        with pytest.raises(ValueError, match="pool_sizes"):
            kv_pool2d(torch.randn(1, 4, 4, 2), ())
        with pytest.raises(ValueError, match="x"):
            kv_pool2d(torch.randn(4, 4, 2), (2,))
        with pytest.raises(ValueError, match="H >= 1"):
            kv_pool2d(torch.randn(1, 0, 4, 2), (2,))

    def test_backward_op_checks_its_gradient(self):
        """Regression (issue 14): kv_pool2d_backward and multi_head_attention_backward check their inputs."""
        x = torch.randn(2, 5, 6, 8)
        with pytest.raises(ValueError, match=r"grad must have the shape of kv_pool2d's output \(2, 13, 8\)"):
            torch.ops.litesam.kv_pool2d_backward(torch.ones(2, 12, 8), x, [2, 4])
        with pytest.raises(ValueError, match="pool_sizes"):
            torch.ops.litesam.kv_pool2d_backward(torch.ones(2, 13, 8), x, [0])
        q = torch.randn(2, 7, 2, 16)
        out, lse = torch.ops.litesam.multi_head_attention(q, q, q, 0.25)
        with pytest.raises(TypeError, match="grad must have the dtype"):
            torch.ops.litesam.multi_head_attention_backward(q.double(), q, q, q, out, lse, 0.25)
        with pytest.raises(ValueError, match="lse must have shape"):
            torch.ops.litesam.multi_head_attention_backward(q, q, q, q, out, lse[:, :1], 0.25)

    @pytest.mark.parametrize("backend", runnable_backends(POOL))
    def test_opcheck(self, backend):
        x = torch.randn(1, 5, 6, 3, requires_grad=True)
        with lk.use_backend(backend):
            torch.library.opcheck(torch.ops.litesam.kv_pool2d, (x, [2, 4]))


class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


# the backends pooled_kv_attention's ops run on CPU (its GEMMs are torch's)
BLOCK_BACKENDS = [p for p in runnable_backends(ATTN) if p.values[0] in ("reference", "triton")]


def _block_inputs(module, dtype):
    x = torch.randn(2, module.q.in_features, 7, 6)
    t = x.permute(0, 2, 3, 1).to(dtype)
    params = (module.q.weight, module.q.bias, module.kv.weight, module.kv.bias, module.proj.weight, module.proj.bias)
    return x, t, params


class TestPooledKVAttention:
    def test_errors(self):
        """Regression (issue 14): the weights, heads and pool sizes are checked, naming the argument."""
        module = PooledKVAttention(32, 2, (2, 4))
        _, t, params = _block_inputs(module, torch.float32)
        wq, bq, wkv, bkv, wproj, bproj = params
        with pytest.raises(TypeError, match="wq must be a torch.Tensor"):
            pooled_kv_attention(t, wq.detach().numpy(), bq, wkv, bkv, wproj, bproj, 2)
        with pytest.raises(ValueError, match="wkv must have shape"):
            pooled_kv_attention(t, wq, bq, wkv[:5], bkv, wproj, bproj, 2)
        with pytest.raises(ValueError, match="bkv must have 64 entries"):
            pooled_kv_attention(t, wq, bq, wkv, bkv[:-1], wproj, bproj, 2)
        with pytest.raises(TypeError, match="num_heads must be an int"):
            pooled_kv_attention(t, *params, 2.0)
        with pytest.raises(ValueError, match="num_heads must divide"):
            pooled_kv_attention(t, *params, 3)
        with pytest.raises(ValueError, match="kv_pool_sizes"):
            pooled_kv_attention(t, *params, 2, (0,))
        with pytest.raises(ValueError, match="residual"):
            pooled_kv_attention(t, *params, 2, residual=t[..., :5])

    @pytest.mark.parametrize("backend", BLOCK_BACKENDS)
    def test_matches_model_module(self, backend):
        module = PooledKVAttention(32, 2, (2, 4))
        x, t, params = _block_inputs(module, torch.float32)
        want = x + module(x)
        with lk.use_backend(backend):
            got = pooled_kv_attention(t, *params, 2, (2, 4), residual=t)
            grads = torch.autograd.grad(got.sum(), list(module.parameters()))
        torch.testing.assert_close(got.permute(0, 3, 1, 2), want, atol=1e-5, rtol=1e-5)
        want_grads = torch.autograd.grad(want.sum(), list(module.parameters()))
        for g, e in zip(grads, want_grads):
            torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)

    @pytest.mark.parametrize("backend", BLOCK_BACKENDS)
    @pytest.mark.parametrize("dtype", HALF)
    def test_half_activations_float32_weights(self, backend, dtype):
        """16-bit activations with the module's float32 parameters (the projections run in 16 bits), against
        the float64 module on the same inputs."""
        module = PooledKVAttention(64, 4, (2, 4))
        x, t, params = _block_inputs(module, dtype)
        with lk.use_backend(backend):
            got = pooled_kv_attention(t, *params, 4, (2, 4), residual=t)
        assert got.dtype == dtype
        x64 = t.double().permute(0, 3, 1, 2)
        want = x64 + module.double()(x64)
        assert_close_scaled(got.permute(0, 3, 1, 2), want, HALF_TOL[dtype])

    @pytest.mark.parametrize("backend", BLOCK_BACKENDS)
    def test_autocast(self, backend):
        module = PooledKVAttention(32, 2, (2, 4))
        x, t, params = _block_inputs(module, torch.float32)
        with lk.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
            t16 = F.linear(t, torch.eye(32))  # bf16 under autocast, as the preceding layer hands it over
            got = pooled_kv_attention(t16, *params, 2, (2, 4), residual=t16)
        assert got.dtype == torch.bfloat16
        grads = torch.autograd.grad(got.float().sum(), list(module.parameters()))
        assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
        x64 = t16.double().permute(0, 3, 1, 2)
        assert_close_scaled(got.permute(0, 3, 1, 2), x64 + module.double()(x64), HALF_TOL[torch.bfloat16])

    def test_output_projection_is_fused(self):
        """The projection, its bias and the residual run in the attention op's epilogue (no separate GEMM)."""
        module = PooledKVAttention(32, 2, (2, 4))
        _, t, params = _block_inputs(module, torch.float32)
        recorder = _OpRecorder()
        with torch.no_grad(), recorder:
            pooled_kv_attention(t, *params, 2, (2, 4), residual=t)
        assert "litesam.multi_head_attention_projected_inference.default" in recorder.ops  # no gradient: no state
        assert not {"litesam.multi_head_attention.default", "litesam.multi_head_attention_inference.default"} & set(
            recorder.ops)
        gemms = [op for op in recorder.ops if op.split(".")[1] in ("mm", "addmm", "bmm", "linear")]
        assert len(gemms) == 2, recorder.ops  # the q and kv projections only

    @pytest.mark.parametrize("backend", BLOCK_BACKENDS)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
    @pytest.mark.parametrize("channels,heads", [(32, 2), (256, 2)], ids=["fused-projection", "attention-then-gemm"])
    def test_op_tables_run_the_ops_composition(self, backend, dtype, channels, heads):
        """The prepared encoder's direct table of this backend (weights folded as the encoder folds them)
        gives the op's output bit for bit, on both ways through: the fused projection (C <= 256, D <= 64) and
        attention followed by a GEMM (D = 128)."""
        table = {"reference": fused_ops.ReferenceOps, "triton": fused_ops.TritonOps}[backend]
        module = PooledKVAttention(channels, heads, (2, 4))
        _, t, params = _block_inputs(module, dtype)
        t = t.contiguous()  # as the encoder's LayerNorm hands it over
        folds = Folds(dtype)
        with torch.no_grad(), lk.use_backend(backend):
            want = pooled_kv_attention(t, *params, heads, (2, 4), residual=t)
            got = table.pooled_kv_attention(t, folds.linear(module.q), folds.linear(module.kv),
                                            folds.linear(module.proj), heads, (2, 4), residual=t)
        assert got.dtype == dtype and torch.equal(got, want)

    @pytest.mark.parametrize("backend", BLOCK_BACKENDS)
    @pytest.mark.parametrize("channels,heads", [(32, 2), (256, 2)], ids=["fused-projection", "attention-then-gemm"])
    def test_empty_batch(self, backend, channels, heads):
        """B = 0 gives (0, H, W, C) and zero gradients, on the op (with and without a residual) and on the
        direct table."""
        module = PooledKVAttention(channels, heads, (2, 4))
        _, t, params = _block_inputs(module, torch.float32)
        t = t[:0].contiguous().requires_grad_()
        with lk.use_backend(backend):
            for residual in (t, None):
                got = pooled_kv_attention(t, *params, heads, (2, 4), residual=residual)
                assert got.shape == t.shape
                grads = torch.autograd.grad(got.sum(), [t, *module.parameters()])
                assert all(g.shape == p.shape and not g.any() for g, p in zip(grads, [t, *module.parameters()]))
            table = {"reference": fused_ops.ReferenceOps, "triton": fused_ops.TritonOps}[backend]
            linear = Folds(torch.float32).linear
            with torch.no_grad():
                got = table.pooled_kv_attention(t, linear(module.q), linear(module.kv), linear(module.proj), heads,
                                                (2, 4), residual=t)
        assert got.shape == t.shape


# ------------------------------------------------------------------------- the Triton kernels' GPU paths
def _triton_missing():
    return _backend.why_not("triton", ATTN, torch.device("cpu"))


triton_only = pytest.mark.skipif(bool(_triton_missing()), reason=str(_triton_missing()))


def _families(*names):
    if _triton_missing():
        return []
    from litesam_kernels.triton import attention as kernels

    params = []
    for name in names:
        for bound, family in getattr(kernels, name).classes:
            params += [pytest.param(family, bound, i, id=f"{family.name}[{i}]") for i in range(len(family))]
    return params


# an input of each per-head row-size class (element size x D): (dtype, D)
_HEAD_CLASS_INPUTS = {64: (torch.float16, 32), 256: (torch.bfloat16, 128), 1024: (torch.float32, 128)}
# and of each projection class (element size x padded output channels): (dtype, heads, D, C_out)
_PROJ_CLASS_INPUTS = {256: (torch.bfloat16, 4, 32, 128), 512: (torch.float32, 2, 64, 128),
                      2048: (torch.float32, 4, 64, 256)}


@triton_only
@pytest.mark.parametrize("family,bound,index", _families("FWD_CONFIGS", "DQ_CONFIGS", "DKV_CONFIGS"))
def test_every_attention_configuration(family, bound, index):
    """Each GPU configuration of the per-head kernels, forced under the interpreter on an input of its class:
    a query tail and a key tail (two full key blocks before it), forward and backward against float64."""
    from litesam_kernels.triton._configs import force_config

    dtype, d = _HEAD_CLASS_INPUTS[bound]
    meta = family.configs[index].meta
    lq, lk_ = meta["BLOCK_M"] + 5, 2 * meta["BLOCK_N"] + 3
    q, k, v = _qkv(1, lq, lk_, 2, d, dtype, requires_grad=True)
    grad = torch.randn(1, lq, 2, d, dtype=torch.float64)
    with lk.use_backend("triton"), force_config(family.name, index):
        got = multi_head_attention(q, k, v)
        got_grads = torch.autograd.grad(got, (q, k, v), grad.to(dtype))
    leaves = float64_copies([q, k, v])
    want = _attention_reference(*leaves, d ** -0.5)[0]
    _check_against_float64(got, got_grads, want, leaves, grad, HALF_TOL.get(dtype, 1e-5))


# The log-sum-exp state (log2 units on Triton, natural log in the reference; values about 5) against float64
# on the same inputs, max |error|: measured <= 6.3e-7 over every projection configuration and <= 6.8e-7 over
# every per-head forward configuration, with fp16, bf16 and fp32 inputs alike (the scores accumulate in fp32).
# Bound: about 3x.
LSE_ATOL = 2e-6


@triton_only
@pytest.mark.parametrize("family,bound,index", _families("FWD_INFERENCE_CONFIGS"))
def test_every_attention_inference_configuration(family, bound, index):
    """Each GPU configuration of the per-head forward without the log-sum-exp, forced under the interpreter on
    an input of its class (a query tail, a key tail after two full key blocks, two images): the output of the
    same configuration with the log-sum-exp, bit for bit, and float64's within the half-precision bound."""
    from litesam_kernels.triton import attention as kernels
    from litesam_kernels.triton._configs import force_config

    storing = kernels.FWD_CONFIGS.family(bound)
    assert storing.configs == family.configs
    dtype, d = _HEAD_CLASS_INPUTS[bound]
    meta = family.configs[index].meta
    lq, lk_ = meta["BLOCK_M"] + 5, 2 * meta["BLOCK_N"] + 3
    q, k, v = _qkv(2, lq, lk_, 2, d, dtype)
    with lk.use_backend("triton"):
        with force_config(storing.name, index):
            out, lse = torch.ops.litesam.multi_head_attention(q, k, v, d ** -0.5)
        with force_config(family.name, index):
            got = torch.ops.litesam.multi_head_attention_inference(q, k, v, d ** -0.5)
    assert torch.equal(got, out)
    want, want_lse = _attention_reference(*float64_copies([q, k, v]), d ** -0.5)
    assert_close_scaled(got, want, HALF_TOL.get(dtype, 1e-5))
    torch.testing.assert_close(lse.double() * math.log(2), want_lse, atol=LSE_ATOL, rtol=0)


@triton_only
@pytest.mark.parametrize("family,bound,index", _families("PROJ_CONFIGS"))
def test_every_projection_configuration(family, bound, index):
    """Each GPU configuration of both fused-projection variants, forced under the interpreter on an input of
    its class (a query tail, a key tail, two images): with the backward's state (y, O and the log-sum-exp
    against float64) and without it (the same y, bit for bit)."""
    from litesam_kernels.triton import attention as kernels
    from litesam_kernels.triton._configs import force_config

    inference = kernels.PROJ_INFERENCE_CONFIGS.family(bound)
    assert inference.configs == family.configs
    dtype, nh, d, cout = _PROJ_CLASS_INPUTS[bound]
    meta = family.configs[index].meta
    lq, lk_ = meta["BLOCK_M"] + 5, meta["BLOCK_N"] + 3
    q, k, v = _qkv(2, lq, lk_, nh, d, dtype)
    wproj, bproj, res = _projection(cout, nh * d, 2, lq, dtype)
    args = (q, k, v, d ** -0.5, wproj, bproj, res)
    with lk.use_backend("triton"):
        with force_config(family.name, index):
            y, out, lse = torch.ops.litesam.multi_head_attention_projected(*args)
        with force_config(inference.name, index):
            y_inference = torch.ops.litesam.multi_head_attention_projected_inference(*args)
    assert torch.equal(y_inference, y)
    want_y, want_out, want_lse = _attention_projected_reference(*(t.double() if torch.is_tensor(t) else t
                                                                  for t in args))
    assert_close_scaled(y, want_y, HALF_TOL.get(dtype, 1e-5))
    assert_close_scaled(out, want_out, HALF_TOL.get(dtype, 1e-5))
    torch.testing.assert_close(lse.double() * math.log(2), want_lse, atol=LSE_ATOL, rtol=0)


@triton_only
def test_prepared_table_and_inference_never_store_the_backward_state(monkeypatch):
    """The Triton table (the prepared encoder) and the ops without a gradient to compute launch only the
    variants without the log-sum-exp (and, projected, O); with a gradient the ops launch the others."""
    from litesam_kernels.triton import attention as kernels

    def storing(*args, **kwargs):
        raise AssertionError("the state-storing variant ran")

    q, k, v = _qkv(1, 6, 5, 2, 16, torch.float32)
    wproj, bproj, res = _projection(32, 32, 1, 6, torch.float32)
    proj = fused_ops.LinearWeights(wproj, bproj, bproj)
    monkeypatch.setattr(kernels.PROJ_CONFIGS, "launch", storing)
    monkeypatch.setattr(kernels.FWD_CONFIGS, "launch", storing)
    with lk.use_backend("triton"):
        fused_ops.TritonOps.attention_projected(proj, q, k, v, 0.25, res)
        fused_ops.TritonOps.attention(q, k, v, 0.25)
        with torch.no_grad():
            multi_head_attention_projected(q.requires_grad_(), k, v, wproj, bproj, res)
            multi_head_attention(q, k, v)
        with pytest.raises(AssertionError, match="state-storing"):
            multi_head_attention_projected(q, k, v, wproj, bproj, res)
        with pytest.raises(AssertionError, match="state-storing"):
            multi_head_attention(q, k, v)


@triton_only
class TestGrids:
    """The launch grids as plain arithmetic, at sizes no CPU test could launch: 1-D, so B x H (pooling
    backward), B (pooling forward) and B x heads (attention) beyond 65535 launch; beyond 2**31 - 1 programs a
    ValueError before any launch."""

    def test_pool_grids_beyond_65535_rows_are_1d(self):
        from triton import cdiv

        from litesam_kernels.triton import attention as kernels

        for config in kernels.POOL_BWD_CONFIGS.configs:  # B x H = 70_000 image rows: grid axis 1 failed here
            bw, bc = config.meta["BLOCK_W"], config.meta["BLOCK_C"]
            grid = kernels.kv_pool_backward_grid((700, 100, 64, 128), bw, bc)
            assert grid == (cdiv(64, bw) * cdiv(128, bc) * 70_000,)
        for config in kernels.POOL_FWD_CONFIGS.configs:  # B = 70_000 images
            bt, bc = config.meta["BLOCK_T"], config.meta["BLOCK_C"]
            grid = kernels.kv_pool_forward_grid(70_000, 1024, 128, bt, bc)
            assert grid == (cdiv(1024, bt) * cdiv(128, bc) * 70_000,)
        assert kernels.query_tile_grid(70_000, 4096, 64) == (70_000 * 64,)  # B x heads = 70_000

    def test_too_many_programs_are_rejected_before_launch(self):
        from litesam_kernels.triton import attention as kernels

        assert kernels.kv_pool_forward_grid(2**31 - 1, 1, 1, 32, 64) == (2**31 - 1,)
        with pytest.raises(ValueError, match="programs"):  # 2**31 one-pixel images: 4 GB of fp16, allocatable
            kernels.kv_pool_forward_grid(2**31, 1, 1, 32, 64)
        with pytest.raises(ValueError, match="programs"):
            kernels.kv_pool_backward_grid((2**30, 2, 1, 1), 32, 64)
        with pytest.raises(ValueError, match="programs"):
            kernels.query_tile_grid(2**25, 4096, 64)

    def test_empty_inputs_launch_nothing(self):
        from litesam_kernels.triton import attention as kernels

        assert kernels.kv_pool_forward_grid(0, 16, 32, 32, 64) == (0,)
        assert kernels.kv_pool_backward_grid((0, 4, 4, 32), 32, 64) == (0,)


@triton_only
@pytest.mark.parametrize("name", ["attention.kv_pool_fwd", "attention.kv_pool_bwd"])
def test_every_pool_configuration(name):
    from litesam_kernels.triton import attention as kernels
    from litesam_kernels.triton._configs import force_config

    family = kernels.POOL_FWD_CONFIGS if name.endswith("fwd") else kernels.POOL_BWD_CONFIGS
    # tails in W, in tokens and in channels for each block; two images (the 1-D grid's outermost index)
    x = torch.randn(2, 5, 34, 70, dtype=torch.float64)
    grad = torch.randn(2, 3 * 17 + 2 * 9, 70, dtype=torch.float64)
    want = _kv_pool_reference(x, [2, 4]) if name.endswith("fwd") else _kv_pool_backward_reference(grad, x, [2, 4])
    for index in range(len(family)):
        with lk.use_backend("triton"), force_config(name, index):
            if name.endswith("fwd"):
                got = kv_pool2d(x, (2, 4))
            else:
                got = torch.ops.litesam.kv_pool2d_backward(grad, x, [2, 4])
        torch.testing.assert_close(got, want)


@pytest.fixture
def matmul_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


@triton_only
def test_float32_dots_follow_matmul_tf32_switch(matmul_tf32, monkeypatch):
    """fp32 attention dots run as TF32 only when ``torch.backends.cuda.matmul.allow_tf32`` (off by default,
    as for eager matmuls) allows it. With TF32 products emulated by the interpreter (tests/tf32_emulation.py),
    the fused attention + projection at LiteViT's head shape (4 heads of 32, 1280 keys) was measured at 8.0e-4
    of the output's max with TF32 and 5.7e-7 without."""
    from tests.tf32_emulation import emulated_tf32

    monkeypatch.delenv("LITESAM_FP32_DOT", raising=False)
    q, k, v = _qkv(1, 64, 1280, 4, 32, torch.float32)
    q = q * 2  # sharper softmax: TF32 rounding of the logits shows
    wproj, bproj, res = _projection(128, 128, 1, 64, torch.float32)
    want = _attention_projected_reference(*(t.double() for t in (q, k, v)), 32 ** -0.5, wproj.double(),
                                          bproj.double(), None)[0]

    def relative_error():
        with emulated_tf32(), lk.use_backend("triton"):
            got = multi_head_attention_projected(q, k, v, wproj, bproj)
        return float((got.double() - want).abs().max() / want.abs().max())

    torch.backends.cuda.matmul.allow_tf32 = False
    assert relative_error() < 5e-6
    torch.backends.cuda.matmul.allow_tf32 = True
    assert 5e-5 < relative_error() < 3e-3
    monkeypatch.setenv("LITESAM_FP32_DOT", "ieee")
    assert relative_error() < 5e-6


@pytest.mark.gpu
class TestAttentionGPU:
    """The model's real attention shape (64^2 queries, 1024 + 256 pooled keys, 4 heads of 32) on CUDA."""

    @pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2), (torch.float32, 1e-5)])
    def test_real_shape_against_sdpa(self, dtype, tol):
        q = torch.randn(2, 4096, 4, 32, device="cuda", dtype=dtype, requires_grad=True)
        kv = torch.randn(2, 1280, 2, 4, 32, device="cuda", dtype=dtype, requires_grad=True)
        with lk.use_backend("triton"):
            got = multi_head_attention(q, kv[:, :, 0], kv[:, :, 1])
            grads = torch.autograd.grad(got.float().sum(), (q, kv))
        want = _sdpa(q, kv[:, :, 0], kv[:, :, 1])
        torch.testing.assert_close(got.double(), want, atol=tol * 4, rtol=tol)
        want_grads = torch.autograd.grad(want.sum(), (q, kv))
        for g, e in zip(grads, want_grads):
            torch.testing.assert_close(g.double(), e, atol=tol * 40, rtol=tol * 10)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
    def test_projected_real_shape(self, dtype):
        from tests.dense_gpu import check_triton_on_gpu

        q, k, v = _qkv(2, 4096, 1280, 4, 32, dtype)
        wproj, bproj, res = _projection(128, 128, 2, 4096, dtype)
        check_triton_on_gpu(lambda *t: multi_head_attention_projected(*t),
                            lambda q, k, v, w, b, r: _attention_projected_reference(q, k, v, 32 ** -0.5, w, b, r)[0],
                            [q, k, v, wproj, bproj, res], dtype)
