"""pool_mixer: every backend against the reference (= LiteViT's eager MultiScalePool on BN(x)), gradients."""
import pytest
import torch

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.model.litevit import MultiScalePool
from litesam_kernels.ops.pool_mixer import _pool_mixer_reference, pool_mixer
from tests.helpers import runnable_backends

OP = _backend.implementations("pool_mixer")
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _inputs(shape, dtype, requires_grad=False):
    c = shape[-1]
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    scale = (torch.rand(c, dtype=torch.float64) + 0.5)
    shift = torch.randn(c, dtype=torch.float64) * 0.1
    if dtype != torch.float64:
        scale, shift = scale.float(), shift.float()
    return [t.requires_grad_(requires_grad) for t in (x, scale, shift)]


def _eager(x, scale, shift, sizes=(3, 5, 7)):
    """The model's modules: x + MultiScalePool(BN(x)), NCHW, float64."""
    z = (x.double() * scale.double() + shift.double()).permute(0, 3, 1, 2)
    return x.double() + MultiScalePool(sizes)(z).permute(0, 2, 3, 1)


class TestPoolMixer:
    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("shape,sizes", [((1, 7, 9, 5), (3, 5, 7)), ((1, 3, 2, 40), (3, 5, 7)),
                                             ((1, 6, 7, 3), (1, 3))])
    def test_forward_matches_model(self, backend, dtype, shape, sizes):
        x, scale, shift = _inputs(shape, dtype)
        with lk.use_backend(backend):
            got = pool_mixer(x, scale, shift, sizes)
        assert got.dtype == dtype and got.shape == x.shape
        torch.testing.assert_close(got.double(), _eager(x, scale, shift, sizes), atol=TOL[dtype] * 4, rtol=TOL[dtype])

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_gradcheck_float64(self, backend):
        inputs = _inputs((1, 4, 5, 2), torch.float64, requires_grad=True)
        with lk.use_backend(backend):  # two sizes keep the interpreter fast; (3, 5, 7) is checked in float32
            assert torch.autograd.gradcheck(lambda *t: pool_mixer(*t, pool_sizes=(1, 5)), inputs, fast_mode=True)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_backward_float32_matches_reference(self, backend):
        x, scale, shift = _inputs((2, 5, 9, 6), torch.float32, requires_grad=True)
        grad = torch.randn_like(x)
        with lk.use_backend(backend):
            got = torch.autograd.grad(pool_mixer(x, scale, shift), (x, scale, shift), grad)
        want = torch.autograd.grad(_pool_mixer_reference(x, scale, shift, (3, 5, 7)), (x, scale, shift), grad)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_non_contiguous_and_one_pixel(self, backend):
        x, scale, shift = _inputs((1, 4, 5, 6), torch.float32)
        x_nc = x.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
        one = x[:, :1, :1]
        with lk.use_backend(backend):
            torch.testing.assert_close(pool_mixer(x_nc, scale, shift), pool_mixer(x, scale, shift))
            # a 1x1 image: every pool is the pixel itself, so the mixer is the identity
            torch.testing.assert_close(pool_mixer(one, scale, shift), one, atol=1e-6, rtol=1e-6)
            assert pool_mixer(x[:0], scale, shift).shape == (0, 4, 5, 6)

    def test_errors(self):
        x, scale, shift = _inputs((1, 4, 5, 6), torch.float32)
        with pytest.raises(TypeError, match="x"):
            pool_mixer(x.int(), scale, shift)
        with pytest.raises(ValueError, match="x"):
            pool_mixer(x[0], scale, shift)
        with pytest.raises(ValueError, match="scale"):
            pool_mixer(x, scale[:3], shift)
        with pytest.raises(TypeError, match="shift"):
            pool_mixer(x, scale, "a")
        with pytest.raises(ValueError, match="pool_sizes"):
            pool_mixer(x, scale, shift, (2, 4))
        with pytest.raises(ValueError, match="pool_sizes"):
            pool_mixer(x, scale, shift, ())

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_opcheck(self, backend):
        x, scale, shift = _inputs((1, 3, 4, 5), torch.float32, requires_grad=True)
        with lk.use_backend(backend):
            torch.library.opcheck(torch.ops.litesam.pool_mixer, (x, scale, shift, [1, 3]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_triton_on_gpu(dtype):
    from tests.dense_gpu import check_triton_on_gpu

    x, scale, shift = _inputs((2, 128, 128, 64), dtype)
    check_triton_on_gpu(lambda *t: pool_mixer(*t), lambda *t: _pool_mixer_reference(*t, (3, 5, 7)),
                        [x, scale, shift], dtype)
