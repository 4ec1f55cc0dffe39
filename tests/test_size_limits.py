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
import importlib
from dataclasses import dataclass

import pytest
import torch
from triton.runtime.jit import KernelInterface

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.ops.bitmask import pack_masks

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


@pytest.mark.parametrize("batch", [AXIS_1 + 1, 3 * AXIS_1 + 7])
def test_channels_last_ops_take_rows_past_grid_axis_1(batch):
    """pool_mixer, dwconv_act and the fused pool-mixer block launch 1-D grids: more than 65535 image rows
    (B * H) are one launch each (they put B * H on grid axis 1 before litevit-a's 1-D grids)."""
    x = images(batch)
    scale, shift = torch.ones(16), torch.zeros(16)
    assert_launchable(lambda: lk.ops.pool_mixer(x, scale, shift))
    assert_launchable(lambda: lk.ops.dwconv_act(x, torch.ones(16, 3, 3), shift))
    assert_launchable(lambda: lk.ops.pool_mixer_block(x, scale, shift, torch.ones(32, 16), torch.zeros(32),
                                                      torch.ones(16, 32), shift))


@pytest.mark.parametrize("batch", [AXIS_1, AXIS_1 + 1, 3 * AXIS_1 + 7])
def test_kv_pool2d_batches_past_grid_axis_1(batch):
    """Forward and backward launch 1-D grids (the batch, and B * H, were grid axis 1 before attn2's)."""
    x = images(batch, h=2, w=2, c=16, requires_grad=True)
    assert_launchable(lambda: lk.ops.kv_pool2d(x, (2,)))
    grad = torch.zeros(batch, 1, 16)
    assert_launchable(lambda: torch.ops.litesam.kv_pool2d_backward(grad, x.detach(), [2]))
    tall = images(1, h=AXIS_1 + 1, w=1, c=16)
    assert_launchable(lambda: torch.ops.litesam.kv_pool2d_backward(torch.zeros(1, AXIS_1 + 1, 16), tall, [1]))


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


def ppn_launches(heat, k, backend=None):
    """The Triton launches of ppn_decode on ``heat`` (recorded, not run), with ``backend`` forced or the default
    choice of a device that has Triton."""
    regression = torch.zeros(heat.shape[0], 4, *heat.shape[2:])
    with recorded_launches() as launches, contextlib.ExitStack() as stack:
        if backend is not None:
            stack.enter_context(lk.use_backend(backend))
        else:  # what a GPU's default choice does: Triton where it fits
            stack.enter_context(pytest.MonkeyPatch.context()).setattr(_backend, "choose", lambda *a: "triton")
        out = lk.ops.ppn_decode(heat, regression, k=k)
    return launches, out


def test_ppn_decode_at_the_shared_memory_limit():
    from litesam_kernels.ops.ppn_decode import TRITON_MAX_CELLS

    assert TRITON_MAX_CELLS == PPN_MAX_CELLS
    for heat, k in ((torch.zeros(1, 1, 128, 128), 256), (torch.zeros(1, 1, 8, 8), PPN_MAX_CELLS)):
        launches, _ = ppn_launches(heat, k, "triton")  # a 2048^2 input at stride 16; the largest k
        assert [launch.blocks["BLOCK"] for launch in launches] == [PPN_MAX_CELLS]


@pytest.mark.parametrize("side,k", [(129, 256), (8, PPN_MAX_CELLS + 1)])
def test_ppn_decode_past_the_shared_memory_limit(side, k):
    """Regression (issue 14): past 16384 sorted keys the default choice runs the reference (same result, no
    launch), a forced Triton backend is refused before launching."""
    heat = torch.randn(1, 1, side, 128, generator=torch.Generator().manual_seed(0))
    launches, out = ppn_launches(heat, k)
    assert not launches
    want = lk.ops.ppn_decode(heat, torch.zeros(1, 4, side, 128), k=k)
    assert all(torch.equal(a, b) for a, b in zip(out, want))
    with pytest.raises(_backend.BackendUnavailableError, match="sorts at most 16384 keys"):
        ppn_launches(heat, k, "triton")


def test_ppn_decode_k_limit():
    from litesam_kernels.ops.ppn_decode import MAX_K

    heat = torch.zeros(1, 1, 2, 2)
    assert lk.ops.ppn_decode(heat, torch.zeros(1, 4, 2, 2), k=MAX_K).indices.shape == (1, MAX_K)
    with pytest.raises(ValueError, match=r"k must be in \[1, 65536\]"):
        lk.ops.ppn_decode(heat, torch.zeros(1, 4, 2, 2), k=MAX_K + 1)


def test_mask_iou_masks_past_grid_axis_1():
    """Regression (issue 14): the pair grids hold ceil(Na / 32) tiles on axis 1: a longer masks_a runs in
    slices (ops/mask_nms.py); the ranked passes of mask NMS reject that many masks before launching."""
    from litesam_kernels.ops.mask_nms import TRITON_MAX_FIRST_STACK

    assert TRITON_MAX_FIRST_STACK == 32 * AXIS_1
    masks = torch.ones(32 * AXIS_1 + 1, 1, 1, dtype=torch.bool)
    assert_launchable(lambda: lk.ops.mask_iou(masks, masks[:1]))
    with recorded_launches() as launches, lk.use_backend("triton"):
        with pytest.raises(ValueError, match="at most 2097120 masks"):
            lk.ops.mask_nms(masks, torch.rand(masks.shape[0]), 0.5)
    assert not [launch for launch in launches if "pair" in launch.kernel]


def test_mask_iou_slices_give_the_unsliced_result(monkeypatch):
    """The slicing is exact: with a limit of 3 masks, several slices give the reference's IoUs."""
    mask_nms = importlib.import_module("litesam_kernels.ops.mask_nms")

    masks = torch.rand(8, 20, 40, generator=torch.Generator().manual_seed(0)) > 0.4
    want = mask_nms._mask_iou_reference(pack_masks(masks), pack_masks(masks[:5]), 40)
    monkeypatch.setattr(mask_nms, "TRITON_MAX_FIRST_STACK", 3)
    with lk.use_backend("triton"):
        torch.testing.assert_close(lk.ops.mask_iou(masks, masks[:5]), want, rtol=0, atol=0)
