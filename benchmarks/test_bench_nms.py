"""pytest-benchmark view of bench_nms: `pytest benchmarks --benchmark-only` (same cases, baselines and checks)."""
import pytest
import torch

from benchmarks import bench_nms
from litesam_kernels import _backend, ops, use_backend

pytest.importorskip("torchvision")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = list(bench_nms.cases(DEVICE, quick=False))
IMPLS = ["torchvision"] + [b for b in ("cuda", "triton", "cpu") if DEVICE.type == "cuda" or b == "cpu"]


def _call(impl, op, boxes, scores, classes):
    if impl == "torchvision":
        return bench_nms.torchvision_baselines(boxes, scores, classes, 0.5)[op].fn()
    with use_backend(impl):
        return ops.nms(boxes, scores, 0.5) if op == "nms" else ops.batched_nms(boxes, scores, classes, 0.5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", ["nms", "batched_nms"])
@pytest.mark.parametrize("n, dtype", CASES, ids=[f"N={n}-{str(d)[6:]}" for n, d in CASES])
def test_nms(benchmark, impl, op, n, dtype):
    if impl != "torchvision" and _backend.why_not(impl, _backend.implementations("batched_nms"), DEVICE):
        pytest.skip(_backend.why_not(impl, _backend.implementations("batched_nms"), DEVICE))
    boxes, scores, classes = bench_nms.make_inputs(n, DEVICE, dtype=dtype)
    expected = _call("torchvision", op, boxes, scores, classes)
    assert torch.equal(_call(impl, op, boxes, scores, classes), expected)  # checked before timing

    def run():
        result = _call(impl, op, boxes, scores, classes)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return result

    benchmark.extra_info.update(device=str(DEVICE), n=n, dtype=str(dtype))
    benchmark(run)
