"""pool_mixer_block: the fused pool mixer + MLP against the two references composed and the model's
PoolMixerBlock (eval mode, BatchNorms folded), gradients in every dtype, every GPU launch configuration."""
import pytest
import torch

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.model.litevit import PoolMixerBlock
from litesam_kernels.ops.conv_mlp import conv_mlp, fold_batchnorm_into_linear
from litesam_kernels.ops.pool_mixer import pool_mixer
from litesam_kernels.ops.pool_mixer_block import _pool_mixer_block_reference, pool_mixer_block
from tests.half_precision import assert_close_scaled, float64_copies, run_against_float64
from tests.helpers import runnable_backends

OP = _backend.implementations("pool_mixer_block")
# Against the float64 reference on the same inputs (16-bit x, float32 parameters), max |error| / max
# |reference| per tensor (z and the gradients of x, scale, w1, b1, w2, b2). Measured under the interpreter over
# 3 seeds x 4 shapes (C 8-64, HID 16-256): fp16 <= 1.0e-3 (dw1), bf16 <= 5.7e-3 (dw1), fp32 <= 4.8e-7 (the
# interpreter multiplies fp32 dot operands exactly; on a GPU the default TF32 dots, as cuDNN's 1x1 convs,
# add about 1e-3). dshift is zero mathematically (the shift cancels in the mixer): <= 1e-6 x sum |dy|.
# Bounds: about 2.5x.
TOL = {torch.float16: 2.5e-3, torch.bfloat16: 1.5e-2, torch.float32: 1.5e-6}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NAMES = ("x", "scale", "shift", "w1", "b1", "w2", "b2")


def _inputs(shape, hidden, dtype, requires_grad=False, param_dtype=None):
    c = shape[-1]
    pdt = param_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    params = [torch.rand(c, dtype=torch.float64) + 0.5, torch.randn(c, dtype=torch.float64) * 0.1,
              torch.randn(hidden, c, dtype=torch.float64) / c ** 0.5, torch.randn(hidden, dtype=torch.float64) * 0.1,
              torch.randn(c, hidden, dtype=torch.float64) / hidden ** 0.5, torch.randn(c, dtype=torch.float64) * 0.1]
    return [t.requires_grad_(requires_grad) for t in (x, *[p.to(pdt) for p in params])]


def _check_gradients(backend, shape, hidden, dtype, param_dtype=None, sizes=(3, 5, 7)):
    out, got, want_out, want, grad = run_against_float64(
        backend, lambda *t: pool_mixer_block(*t, pool_sizes=sizes), lambda *t: _pool_mixer_block_reference(*t, sizes),
        _inputs(shape, hidden, dtype, requires_grad=True, param_dtype=param_dtype))
    tol = max(TOL[dtype], TOL.get(param_dtype, 0))
    assert_close_scaled(out, want_out, tol, "z")
    for name, g, w in zip(NAMES, got, want):
        scale = grad.double().abs().sum() if name == "shift" else None
        assert_close_scaled(g, w, tol, f"d{name}", scale=scale)


def _model_block(c, hidden):
    """An eval-mode PoolMixerBlock with random BatchNorm statistics, float64."""
    block = PoolMixerBlock(c, (3, 5, 7), hidden / c).double().eval()
    with torch.no_grad():
        for bn in (block.norm1, block.norm2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
    return block


def _folded(bn):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class TestPoolMixerBlock:
    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("shape,hidden", [((1, 7, 9, 32), 128), ((2, 5, 6, 8), 32)])
    def test_matches_model_block(self, backend, dtype, shape, hidden):
        """The exact call the fused LiteViT makes in eval mode (see the op's docstring)."""
        block = _model_block(shape[-1], hidden)
        x = torch.randn(shape, dtype=torch.float64).to(dtype)
        want = block(x.double().permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach()
        scale1, shift1 = _folded(block.norm1)
        fc1, fc2 = block.mlp.fc1, block.mlp.fc2
        w1, b1 = fold_batchnorm_into_linear(fc1.weight[:, :, 0, 0], fc1.bias, *_folded(block.norm2))
        args = [t.detach().float() for t in (scale1, shift1, w1, b1, fc2.weight[:, :, 0, 0], fc2.bias)]
        with lk.use_backend(backend):
            got = pool_mixer_block(x, *args, pool_sizes=block.mixer.pool_sizes)
        assert got.dtype == dtype and got.shape == x.shape
        # the model runs in float64 throughout; the op rounds y (and the MLP operands) to x's dtype
        assert_close_scaled(got, want, 4 * TOL[dtype])

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("shape,hidden", [((1, 9, 10, 32), 128), ((1, 7, 9, 64), 256), ((1, 6, 5, 20), 40)])
    def test_gradients_every_dtype(self, backend, dtype, shape, hidden):
        _check_gradients(backend, shape, hidden, dtype)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_parameters_in_another_dtype(self, backend):
        """fp32 parameters with bf16 activations (autocast); gradients in each tensor's own dtype."""
        _check_gradients(backend, (1, 5, 6, 16), 64, torch.bfloat16, param_dtype=torch.float32)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_equals_the_two_ops(self, backend):
        """Including too-wide blocks (C > 64 runs the two ops on the Triton backend)."""
        for shape, hidden in (((1, 4, 5, 16), 32), ((1, 3, 4, 96), 32)):
            x, scale, shift, w1, b1, w2, b2 = _inputs(shape, hidden, torch.float32)
            with lk.use_backend(backend):
                y = pool_mixer(x, scale, shift)
                torch.testing.assert_close(pool_mixer_block(x, scale, shift, w1, b1, w2, b2),
                                           conv_mlp(y, w1, b1, w2, b2, residual=y), atol=2e-6, rtol=2e-6)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_gradcheck_float64(self, backend):
        inputs = _inputs((1, 3, 4, 4), 8, torch.float64, requires_grad=True)
        with lk.use_backend(backend):
            assert torch.autograd.gradcheck(lambda *t: pool_mixer_block(*t, pool_sizes=(1, 3)), inputs,
                                            fast_mode=True)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_edge_cases(self, backend):
        x, *params = _inputs((1, 4, 5, 8), 16, torch.float32)
        x_nc = x.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
        with lk.use_backend(backend):
            torch.testing.assert_close(pool_mixer_block(x_nc, *params), pool_mixer_block(x, *params))
            one = x[:, :1, :1]  # a 1x1 image: the mixer is the identity, the block is x + MLP(x)
            torch.testing.assert_close(pool_mixer_block(one, *params),
                                       conv_mlp(one, *params[2:], residual=one), atol=1e-5, rtol=1e-5)
            assert pool_mixer_block(x[:0], *params).shape == (0, 4, 5, 8)

    def test_errors(self):
        x, scale, shift, w1, b1, w2, b2 = _inputs((1, 4, 5, 8), 16, torch.float32)
        cases = [
            (TypeError, "x", (x.int(), scale, shift, w1, b1, w2, b2)),
            (ValueError, "x", (x[0], scale, shift, w1, b1, w2, b2)),
            (TypeError, "x", (x.numpy(), scale, shift, w1, b1, w2, b2)),
            (ValueError, "scale", (x, scale[:3], shift, w1, b1, w2, b2)),
            (TypeError, "shift", (x, scale, None, w1, b1, w2, b2)),
            (ValueError, "w1", (x, scale, shift, w1[:, :3], b1, w2, b2)),
            (TypeError, "w1", (x, scale, shift, w1.int(), b1, w2, b2)),
            (ValueError, "w2", (x, scale, shift, w1, b1, w2.t(), b2)),
            (ValueError, "b1", (x, scale, shift, w1, b1[:3], w2, b2)),
            (ValueError, "b2", (x, scale, shift, w1, b1, w2, b2[:3])),
            (ValueError, "x", (torch.randn(1, 2, 2, 300), torch.ones(300), torch.zeros(300), torch.randn(4, 300),
                               torch.randn(4), torch.randn(300, 4), torch.randn(300))),
        ]
        for error, name, args in cases:
            with pytest.raises(error, match=name):
                pool_mixer_block(*args)
        with pytest.raises(ValueError, match="pool_sizes"):
            pool_mixer_block(x, scale, shift, w1, b1, w2, b2, pool_sizes=(2,))
        with pytest.raises(ValueError, match="w1"):
            torch.ops.litesam.pool_mixer_block(x, scale, shift, w1[:, :3], b1, w2, b2, [3])

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_opcheck(self, backend):
        inputs = _inputs((1, 3, 4, 8), 16, torch.float32, requires_grad=True)
        with lk.use_backend(backend):
            torch.library.opcheck(torch.ops.litesam.pool_mixer_block, (*inputs, [1, 3]))


triton = pytest.importorskip("triton")

from litesam_kernels.triton import _configs  # noqa: E402
from litesam_kernels.triton import pool_mixer_block as triton_block  # noqa: E402


class TestTritonKernel:
    @pytest.mark.parametrize("channels,index", [(c, i) for c, f in triton_block.FWD_CONFIGS.items()
                                                for i in range(len(f))])
    def test_every_launch_configuration(self, channels, index):
        """Each GPU configuration (forward: the backward runs the unfused ops): two strips and two row chunks,
        the hidden units in two chunks where the configuration's chunk leaves room."""
        family = triton_block.FWD_CONFIGS[channels]
        with _configs.force_config(family.name, index) as config:
            shape = (1, config.meta["ROWS"] + 2, config.meta["TILE"] // channels + 1, channels)
            hidden = min(config.meta["BLOCK_H"] + 16, triton_block.MAX_HIDDEN)
            assert triton_block.fits(channels, hidden)
            inputs = _inputs(shape, hidden, torch.float32)
            with lk.use_backend("triton"):
                got = pool_mixer_block(*inputs, pool_sizes=(1, 3))
            assert_close_scaled(got, _pool_mixer_block_reference(*float64_copies(inputs), (1, 3)), TOL[torch.float32])

    def test_what_fits_one_kernel(self):
        assert triton_block.fits(64, 256) and triton_block.fits(1, 1)
        assert not triton_block.fits(65, 256) and not triton_block.fits(32, 257)
        assert triton_block.configs_for(20) is triton_block.FWD_CONFIGS[32]
        assert triton_block.configs_for(33) is triton_block.FWD_CONFIGS[64]
        assert triton_block.hidden_chunks(triton_block.FWD_CONFIGS[64].configs[0], 256) == (128, 2)
        assert triton_block.hidden_chunks(triton_block.FWD_CONFIGS[32].configs[0], 40) == (64, 1)

    def test_aot_entries_use_tensor_cores_precision(self):
        for kernel, signature, constexprs, options in triton_block.AOT_KERNELS:
            assert constexprs["PREC"] == "tf32" and constexprs["FAST"] == (signature["x_ptr"] != "*fp32:16")
            assert constexprs["HID_CHUNKS"] * constexprs["BLOCK_H"] >= 128


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape,hidden", [((8, 256, 256, 32), 128), ((8, 128, 128, 64), 256)])
def test_triton_on_gpu(dtype, shape, hidden):
    from tests.dense_gpu import check_triton_on_gpu

    check_triton_on_gpu(lambda *t: pool_mixer_block(*t), lambda *t: _pool_mixer_block_reference(*t, (3, 5, 7)),
                        _inputs(shape, hidden, dtype), dtype)
