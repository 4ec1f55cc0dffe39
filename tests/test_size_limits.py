"""Size limits at their boundaries, on CPU: every Triton launch an op makes for an input at a limit has a
grid within CUDA's (2**31 - 1 programs on axis 0, 65535 on axes 1 and 2) and blocks within Triton's
(2**20 elements), or the op rejects the input with a ValueError before launching anything.

The launches are recorded, not run (``recorded_launches`` replaces ``kernel[grid](...)``): the grids and
block sizes are the ones a GPU would get, computed here without one, and an input a million images or
rows long costs nothing. (Where a launcher picks other blocks under the interpreter than on a GPU, the
recorded launch is the interpreter's: noted per test.) The C++/CUDA launch plans are tested by
tests/test_cuda_launch_plans.py.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
import torch
from triton.runtime.jit import KernelInterface

import litesam_kernels as lk
from litesam_kernels import _backend

CUDA_MAX_GRID = (2**31 - 1, 65535, 65535)  # programs along grid axes 0, 1, 2 (CUDA and Triton alike)
MAX_BLOCK_NUMEL = 2**20  # triton.language.TRITON_MAX_TENSOR_NUMEL
AXIS_1 = CUDA_MAX_GRID[1]

pytestmark = pytest.mark.skipif(_backend.why_not("triton", _backend.implementations("layer_norm2d"),
                                                 torch.device("cpu")) is not None,
                                reason="needs Triton under the interpreter")


@dataclass
class Launch:
    kernel: str
    grid: tuple
    blocks: dict

    def problems(self):
        out = [f"{self.kernel}: grid axis {axis} = {n} > {limit}"
               for axis, (n, limit) in enumerate(zip(self.grid, CUDA_MAX_GRID)) if n > limit]
        out += [f"{self.kernel}: {name} = {size} > {MAX_BLOCK_NUMEL}" for name, size in self.blocks.items()
                if size > MAX_BLOCK_NUMEL]
        return out


@contextlib.contextmanager
def recorded_launches():
    """Every ``kernel[grid](...)`` inside the block is recorded (grid, BLOCK* constexprs), not run."""
    launches = []
    original = KernelInterface.__getitem__

    def getitem(kernel, grid):
        def launch(*args, **kwargs):
            resolved = grid(kwargs) if callable(grid) else grid
            resolved = tuple(int(g) for g in (resolved if isinstance(resolved, (tuple, list)) else (resolved,)))
            blocks = {k: int(v) for k, v in kwargs.items() if k.startswith(("BLOCK", "K_BLOCK")) and isinstance(v, int)}
            launches.append(Launch(getattr(kernel, "__name__", str(kernel)), resolved + (1,) * (3 - len(resolved)),
                                   blocks))
        return launch

    KernelInterface.__getitem__ = getitem
    try:
        yield launches
    finally:
        KernelInterface.__getitem__ = original


def assert_launchable(run):
    """run() either raises ValueError before any launch or launches only within the limits."""
    with recorded_launches() as launches, lk.use_backend("triton"):
        try:
            run()
        except ValueError:
            assert not launches, "rejected after launching"
            return
    assert launches, "nothing was launched: the test does not reach the kernel"
    problems = [p for launch in launches for p in launch.problems()]
    assert not problems, problems


def test_recorder_sees_limits():
    """The harness itself: a grid past axis 1 is caught, one at the limit is not."""
    assert Launch("k", (1, AXIS_1 + 1, 1), {}).problems() and not Launch("k", (2**31 - 1, AXIS_1, AXIS_1), {}).problems()
    assert Launch("k", (1, 1, 1), {"BLOCK": 2**21}).problems()


# ---------------------------------------------------------------------------------------------- LiteViT ops
def images(batch, h=1, w=1, c=16, requires_grad=False):
    return torch.zeros(batch, h, w, c, requires_grad=requires_grad)


NHWC_ROWS = "the channels-last grids put B * H on axis 1 (at most 65535 image rows per launch)"


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=f"{NHWC_ROWS}: triton/pool_mixer.py (litevit-a's 1-D strip grids fix it)")
@pytest.mark.parametrize("batch", [AXIS_1 + 1])
def test_pool_mixer_rows_past_grid_axis_1(batch):
    x = images(batch)
    assert_launchable(lambda: lk.ops.pool_mixer(x, torch.ones(16), torch.zeros(16)))


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=f"{NHWC_ROWS}: triton/conv_block.py (litevit-a's row-tile grids fix it)")
def test_dwconv_rows_past_grid_axis_1():
    x = images(AXIS_1 + 1)
    assert_launchable(lambda: lk.ops.dwconv_act(x, torch.ones(16, 3, 3), torch.zeros(16)))


@pytest.mark.parametrize("batch", [AXIS_1, AXIS_1 + 1, 3 * AXIS_1 + 7])
def test_kv_pool2d_batches_past_grid_axis_1(batch):
    """Forward: the batch is grid axis 1; backward: B * H is. Both run in batch slices (ops/attention.py)."""
    x = images(batch, h=2, w=2, c=16, requires_grad=True)
    assert_launchable(lambda: lk.ops.kv_pool2d(x, (2,)))
    grad = torch.zeros(batch, 1, 16)
    assert_launchable(lambda: torch.ops.litesam.kv_pool2d_backward(grad, x.detach(), [2]))


def test_one_dimensional_grids_take_large_batches():
    """layer_norm2d, conv_mlp and attention launch 1-D grids: 2**17 rows / images are one launch each."""
    x = images(2**17)
    assert_launchable(lambda: lk.ops.layer_norm2d(x, torch.ones(16), torch.zeros(16)))
    assert_launchable(lambda: lk.ops.conv_mlp(x, torch.ones(32, 16), torch.zeros(32), torch.ones(16, 32),
                                              torch.zeros(16)))
    q = torch.zeros(2**17, 1, 1, 16)
    assert_launchable(lambda: lk.ops.multi_head_attention(q, q, q))


# ---------------------------------------------------------------------------------------------- mask ops
# One program holds the whole heatmap, its sort keys in shared memory: 8 bytes per cell of
# next_power_of_2(max(H * W, k)) (sm_90a AOT: 32 KB at 4096 cells, 128 KB at 16384; 32768 would need 256 KB,
# more than the 227 KB a Hopper block can have).
PPN_MAX_CELLS = 16384


def assert_ppn_launchable(heat, k):
    with recorded_launches() as launches, lk.use_backend("triton"):
        try:
            lk.ops.ppn_decode(heat, torch.zeros(heat.shape[0], 4, *heat.shape[2:]), k=k)
        except ValueError:
            assert not launches
            return
    assert all(launch.blocks["BLOCK"] <= PPN_MAX_CELLS for launch in launches), [l.blocks for l in launches]


def test_ppn_decode_at_the_shared_memory_limit():
    assert_ppn_launchable(torch.zeros(1, 1, 128, 128), k=256)  # a 2048^2 input at stride 16
    assert_ppn_launchable(torch.zeros(1, 1, 8, 8), k=PPN_MAX_CELLS)


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="a heatmap of more than 16384 cells (or k > 16384) needs more shared memory than a GPU "
                          "block has (and k is an int32 kernel argument): ops/ppn_decode.py (run the reference, or "
                          "raise, when next_power_of_2(max(H * W, k)) > 16384)")
@pytest.mark.parametrize("side,k", [(129, 256), (8, PPN_MAX_CELLS + 1)])
def test_ppn_decode_past_the_shared_memory_limit(side, k):
    assert_ppn_launchable(torch.zeros(1, 1, side, 128), k=k)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="grid axis 1 holds ceil(Na / 32) row tiles: more than 2,097,120 masks in "
                                       "masks_a fail to launch: triton/mask_nms.py (maskops' compacted-pair passes "
                                       "replace this grid)")
def test_mask_iou_masks_past_grid_axis_1():
    masks = torch.ones(32 * AXIS_1 + 1, 1, 1, dtype=torch.bool)
    assert_launchable(lambda: lk.ops.mask_iou(masks, masks[:1]))
