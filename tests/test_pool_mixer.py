"""pool_mixer: every backend against the reference (= LiteViT's eager MultiScalePool on BN(x)), gradients in
every dtype, every GPU launch configuration of the Triton walk, and its launch arithmetic at huge sizes."""
import pytest
import torch

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.model.litevit import MultiScalePool
from litesam_kernels.ops.pool_mixer import _pool_mixer_reference, pool_mixer
from tests.half_precision import assert_close_scaled, run_against_float64
from tests.helpers import runnable_backends

OP = _backend.implementations("pool_mixer")
# Against the float64 reference on the same inputs (16-bit x, float32 scale/shift), as max |error| / max
# |reference| per tensor. Measured under the interpreter over 3 seeds x 4 shapes ((1,7,9,5), (2,9,35,20),
# (1,6,7,70) with pools (1,3), (1,40,3,4); every walk loop and several strips, chunks and channel blocks):
#   float16  y 4.0e-4, dx 3.8e-4, dscale 1.8e-7      bfloat16  y 2.9e-3, dx 3.1e-3, dscale 2.1e-7
#   float32  y 2.6e-7, dx 2.2e-7, dscale 1.7e-7
# (y and dx carry the output rounding: half an ulp of the dtype; dscale is a float32 sum). dshift is zero
# mathematically (the shift cancels): |dshift| <= 1e-6 x sum |g| measured 1e-9. Bounds: about 2.5x.
TOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-6}
PARAM_TOL = 1e-6
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(shape, dtype, requires_grad=False, param_dtype=None):
    c = shape[-1]
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    param_dtype = param_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)
    scale = (torch.rand(c, dtype=torch.float64) + 0.5).to(param_dtype)
    shift = (torch.randn(c, dtype=torch.float64) * 0.1).to(param_dtype)
    return [t.requires_grad_(requires_grad) for t in (x, scale, shift)]


def _eager(x, scale, shift, sizes=(3, 5, 7)):
    """The model's modules: x + MultiScalePool(BN(x)), NCHW, float64."""
    z = (x.double() * scale.double() + shift.double()).permute(0, 3, 1, 2)
    return x.double() + MultiScalePool(sizes)(z).permute(0, 2, 3, 1)


def _check_gradients(backend, shape, dtype, sizes=(3, 5, 7), param_dtype=None):
    """Output and gradients of every input against the float64 reference on the same values."""
    out, got, want_out, want, grad = run_against_float64(
        backend, lambda *t: pool_mixer(*t, pool_sizes=sizes), lambda *t: _pool_mixer_reference(*t, sizes),
        _inputs(shape, dtype, requires_grad=True, param_dtype=param_dtype))
    tol = TOL[dtype]
    assert_close_scaled(out, want_out, tol, "y")
    assert_close_scaled(got[0], want[0], tol, "dx")
    assert_close_scaled(got[1], want[1], max(PARAM_TOL, TOL[param_dtype] if param_dtype in TOL else 0), "dscale")
    assert_close_scaled(got[2], want[2], PARAM_TOL, "dshift", scale=grad.double().abs().sum())


class TestPoolMixer:
    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("shape,sizes", [((1, 7, 9, 5), (3, 5, 7)), ((1, 3, 2, 70), (3, 5, 7)),
                                             ((1, 6, 7, 3), (1, 3)), ((1, 9, 8, 4), (3, 7, 7))])
    def test_forward_matches_model(self, backend, dtype, shape, sizes):
        x, scale, shift = _inputs(shape, dtype)
        with lk.use_backend(backend):
            got = pool_mixer(x, scale, shift, sizes)
        assert got.dtype == dtype and got.shape == x.shape
        assert_close_scaled(got, _eager(x, scale, shift, sizes), TOL[dtype])

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_gradients_every_dtype(self, backend, dtype):
        # 20 rows: the walk's top, interior and bottom loops; 35 columns: two strips; 20 channels: padded block
        _check_gradients(backend, (2, 20, 35, 20), dtype)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("x_dtype,param_dtype", [(torch.bfloat16, torch.float32), (torch.float16, torch.float64),
                                                     (torch.float32, torch.bfloat16)])
    def test_parameters_in_another_dtype(self, backend, x_dtype, param_dtype):
        """fp32 BatchNorm parameters with half activations (autocast), and the other way round: gradients come
        back in each tensor's own dtype."""
        _check_gradients(backend, (1, 6, 7, 5), x_dtype, param_dtype=param_dtype)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_gradcheck_float64(self, backend):
        inputs = _inputs((1, 4, 5, 2), torch.float64, requires_grad=True)
        with lk.use_backend(backend):  # two sizes keep the interpreter fast; (3, 5, 7) is checked in float32
            assert torch.autograd.gradcheck(lambda *t: pool_mixer(*t, pool_sizes=(1, 5)), inputs, fast_mode=True)

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

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_inf_and_nan_stay_in_their_windows(self, backend):
        """Window sums are exact sums of their cells (no running add-and-subtract): a NaN or inf reaches only
        the outputs whose windows contain it, as in F.avg_pool2d."""
        x, scale, shift = _inputs((1, 12, 9, 3), torch.float32)
        x[0, 2, 2, 0] = float("nan")
        x[0, 9, 6, 1] = float("inf")
        with lk.use_backend(backend):
            got = pool_mixer(x, scale, shift)
        want = _pool_mixer_reference(x, scale, shift, (3, 5, 7))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, equal_nan=True)
        assert torch.isfinite(got[0, 6:, :, 0]).all() and torch.isfinite(got[0, :5, :, 1]).all()

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
        with pytest.raises(TypeError, match="scale"):
            pool_mixer(x, scale.int(), shift)
        with pytest.raises(ValueError, match="pool_sizes"):
            pool_mixer(x, scale, shift, (2, 4))
        with pytest.raises(ValueError, match="pool_sizes"):
            pool_mixer(x, scale, shift, ())
        with pytest.raises(ValueError, match="pool_sizes"):
            pool_mixer(x, scale, shift, (3, 5, 7, 9))
        with pytest.raises(ValueError, match="pool_sizes"):
            pool_mixer(x, scale, shift, (17,))
        with pytest.raises(ValueError, match="scale"):
            torch.ops.litesam.pool_mixer(x, scale[:2], shift, [3])

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_opcheck(self, backend):
        x, scale, shift = _inputs((1, 3, 4, 5), torch.float32, requires_grad=True)
        with lk.use_backend(backend):
            torch.library.opcheck(torch.ops.litesam.pool_mixer, (x, scale, shift, [1, 3]))


triton = pytest.importorskip("triton")

from litesam_kernels.triton import _configs, _tiles  # noqa: E402
from litesam_kernels.triton import pool_mixer as triton_pool_mixer  # noqa: E402


class TestTritonWalk:
    @pytest.mark.parametrize("family,index", [(f.name, i) for f in (triton_pool_mixer.FWD_CONFIGS,
                                                                   triton_pool_mixer.BWD_CONFIGS)
                                              for i in range(len(f))])
    def test_every_launch_configuration(self, family, index):
        """Each GPU configuration on an input with several strips, row chunks and channel blocks."""
        with _configs.force_config(family, index) as config:
            # two row chunks (the second one short) and two strips of 32-channel tiles
            shape = (1, config.meta["ROWS"] + 3, config.meta["TILE"] // 32 + 1, 20)
            _check_gradients("triton", shape, torch.float32, sizes=(1, 5))

    def test_pool_parameters(self):
        """Distinct radii ascending, repeated sizes weighted by their multiplicity."""
        assert triton_pool_mixer.pools((7, 3, 5)) == dict(R0=1, R1=2, R2=3, RMAX=3, NUM_POOLS=3, PW0=1 / 3,
                                                         PW1=1 / 3, PW2=1 / 3)
        assert triton_pool_mixer.pools((7, 3, 7)) == dict(R0=1, R1=3, R2=0, RMAX=3, NUM_POOLS=2, PW0=1 / 3,
                                                         PW1=2 / 3, PW2=0.0)
        assert triton_pool_mixer.pools((1,)) == dict(R0=0, R1=0, R2=0, RMAX=0, NUM_POOLS=1, PW0=1.0, PW1=0.0,
                                                    PW2=0.0)


class TestLaunchLimits:
    """The launch arithmetic of the NHWC kernels at sizes no CPU test can allocate (issue 14, item 3)."""

    def test_one_dimensional_grids_past_65535_rows(self):
        # B*H = 70_000 image rows: the old grid put them on CUDA's axis 1 (at most 65535)
        assert _tiles.row_tile_grid((70_000, 1, 64, 32), 32, 32) == (70_000 * 2,)
        assert _tiles.strip_grid((70_000, 1, 64, 32), 32, 32, 32) == (70_000 * 2,)
        assert _tiles.strip_grid((1, 70_000, 64, 32), 32, 32, 32) == (2 * 2188,)
        assert _tiles.strip_partial_rows((3, 70, 100, 8), 32, 32) == 3 * 3 * 4

    def test_grid_beyond_axis_zero_is_rejected(self):
        with pytest.raises(ValueError, match="programs"):
            _tiles.row_tile_grid((2**20, 2**11, 32, 16), 32, 16)

    def test_image_size_bound_of_32_bit_offsets(self):
        _tiles.check_image_size("x", (8, 4096, 4096, 64))  # 1.1e9 elements per image (with the halo): fine
        with pytest.raises(ValueError, match="32-bit"):
            _tiles.check_image_size("x", (1, 8192, 8192, 64))
        # the halo counts (taps outside the image form offsets too): 46_340^2 < 2^31 <= 46_341^2
        _tiles.check_image_size("x", (1, 46_340 - 16, 46_340 - 16, 1))
        with pytest.raises(ValueError, match="32-bit"):
            _tiles.check_image_size("x", (1, 46_341 - 16, 46_341 - 16, 1))

    def test_aot_signatures_carry_the_jit_specialisation(self):
        for kernel, signature, constexprs, options in triton_pool_mixer.AOT_KERNELS:
            assert all(kind.endswith(":16") for name, kind in signature.items() if name.endswith("_ptr"))
            assert signature["C"] == "i32:16"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_triton_on_gpu(dtype):
    from tests.dense_gpu import check_triton_on_gpu

    x, scale, shift = _inputs((2, 128, 128, 64), dtype)
    check_triton_on_gpu(lambda *t: pool_mixer(*t), lambda *t: _pool_mixer_reference(*t, (3, 5, 7)),
                        [x, scale, shift], dtype)


def test_backward_op_checks_its_gradient():
    """Regression (issue 14): the registered backward op is a torch.ops op too; a wrong gradient reached the kernel."""
    x, s = torch.randn(2, 5, 6, 8), torch.ones(8)
    with pytest.raises(ValueError, match=r"grad must have the shape of pool_mixer's output \(2, 5, 6, 8\)"):
        torch.ops.litesam.pool_mixer_backward(torch.ones(2, 5, 6, 7), x, s, s, [3])
    with pytest.raises(ValueError, match="pool_sizes"):
        torch.ops.litesam.pool_mixer_backward(torch.ones(2, 5, 6, 8), x, s, s, [4])
