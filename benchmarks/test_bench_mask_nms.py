"""pytest-benchmark view of bench_mask_nms: `pytest benchmarks --benchmark-only` (same cases and checks)."""
import pytest
import torch

from benchmarks import bench_mask_nms
from litesam_kernels import _backend, ops, use_backend
from litesam_kernels.ops.bitmask import pack_masks

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = bench_mask_nms.GPU_CASES if DEVICE.type == "cuda" else bench_mask_nms.CPU_CASES
IMPLS = ["dense-matmul"] + [b for b in ("cuda", "triton", "cpu") if DEVICE.type == "cuda" or b == "cpu"]


@pytest.fixture(scope="module", params=CASES, ids=lambda case: "N={}-{}x{}".format(*case))
def inputs(request):
    n, height, width = request.param
    masks, scores = bench_mask_nms.make_masks(n, height, width, DEVICE)
    return masks, pack_masks(masks), scores, width


def _call(impl, masks, packed, scores, width):
    if impl == "dense-matmul":
        return bench_mask_nms.dense_matmul_mask_nms(masks, scores, bench_mask_nms.IOU_THRESHOLD)
    with use_backend(impl):
        return ops.mask_nms(packed, scores, bench_mask_nms.IOU_THRESHOLD, width=width)


@pytest.mark.parametrize("impl", IMPLS)
def test_mask_nms(benchmark, impl, inputs):
    if impl != "dense-matmul" and _backend.why_not(impl, _backend.implementations("mask_nms"), DEVICE):
        pytest.skip(_backend.why_not(impl, _backend.implementations("mask_nms"), DEVICE))
    expected = _call("dense-matmul", *inputs)
    assert torch.equal(_call(impl, *inputs), expected)  # checked before timing

    def run():
        result = _call(impl, *inputs)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return result

    benchmark.extra_info.update(device=str(DEVICE), shape=tuple(inputs[0].shape))
    benchmark(run)
