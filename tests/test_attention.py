"""Pooled-KV attention: multi_head_attention and kv_pool2d against their references (and torch SDPA /
avg_pool2d), gradients, and pooled_kv_attention against the model's PooledKVAttention module."""
import pytest
import torch
import torch.nn.functional as F

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.model.litevit import PooledKVAttention
from litesam_kernels.ops.attention import (_attention_reference, _kv_pool_reference, kv_pool2d,
                                           multi_head_attention, pooled_kv_attention)
from tests.helpers import runnable_backends

ATTN = _backend.implementations("multi_head_attention")
POOL = _backend.implementations("kv_pool2d")
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _qkv(b, lq, lk_, nh, d, dtype, requires_grad=False):
    q, k, v = (torch.randn(b, n, nh, d, dtype=torch.float64).to(dtype) for n in (lq, lk_, lk_))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(*(t.double().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)


class TestMultiHeadAttention:
    @pytest.mark.parametrize("backend", runnable_backends(ATTN))
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("b,lq,lk_,nh,d", [(2, 70, 21, 2, 16), (1, 5, 130, 1, 32), (1, 1, 1, 3, 32)])
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

    @pytest.mark.parametrize("backend", runnable_backends(ATTN))
    def test_opcheck(self, backend):
        q, k, v = _qkv(1, 6, 5, 2, 16, torch.float32, requires_grad=True)
        with lk.use_backend(backend):
            torch.library.opcheck(torch.ops.litesam.multi_head_attention, (q, k, v, 0.25))


class TestKVPool2d:
    @pytest.mark.parametrize("backend", runnable_backends(POOL))
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
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

    def test_errors(self):
        with pytest.raises(ValueError, match="pool_sizes"):
            kv_pool2d(torch.randn(1, 4, 4, 2), (0,))
        with pytest.raises(ValueError, match="pool_sizes"):
            kv_pool2d(torch.randn(1, 4, 4, 2), ())
        with pytest.raises(ValueError, match="x"):
            kv_pool2d(torch.randn(4, 4, 2), (2,))
        with pytest.raises(ValueError, match="H >= 1"):
            kv_pool2d(torch.randn(1, 0, 4, 2), (2,))

    @pytest.mark.parametrize("backend", runnable_backends(POOL))
    def test_opcheck(self, backend):
        x = torch.randn(1, 5, 6, 3, requires_grad=True)
        with lk.use_backend(backend):
            torch.library.opcheck(torch.ops.litesam.kv_pool2d, (x, [2, 4]))


class TestPooledKVAttention:
    @pytest.mark.parametrize("backend", ["reference", "triton"])
    def test_matches_model_module(self, backend):
        if _backend.why_not(backend, ATTN, torch.device("cpu")):
            pytest.skip(_backend.why_not(backend, ATTN, torch.device("cpu")))
        module = PooledKVAttention(32, 2, (2, 4))
        x = torch.randn(2, 32, 7, 6)
        want = x + module(x)
        t = x.permute(0, 2, 3, 1)
        with lk.use_backend(backend):
            got = pooled_kv_attention(t, module.q.weight, module.q.bias, module.kv.weight, module.kv.bias,
                                      module.proj.weight, module.proj.bias, 2, (2, 4), residual=t)
            grads = torch.autograd.grad(got.sum(), list(module.parameters()))
        torch.testing.assert_close(got.permute(0, 3, 1, 2), want, atol=1e-5, rtol=1e-5)
        want_grads = torch.autograd.grad(want.sum(), list(module.parameters()))
        for g, e in zip(grads, want_grads):
            torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


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
