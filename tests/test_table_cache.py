"""Cached device tables under CUDA graphs (litesam_kernels._device_data.DeviceCache).

``SegmentEverything(compile={"mode": "reduce-overhead"})`` captures ``ops.postprocess_masks`` in CUDA graphs,
which bake in the addresses of its cached resize tables (``ops/mask_postprocess._TABLES``) and thresholds
(``device_constants``). An entry used during a capture is pinned (never evicted); the rest is a bounded LRU.
On CPU, capture is simulated by patching ``_device_data.capturing``; the ``gpu`` test captures a real graph,
floods both caches and replays.
"""
import pytest
import torch

from litesam_kernels import _device_data
from litesam_kernels._device_data import DeviceCache


@pytest.fixture
def capture(monkeypatch):
    """``capture(True)`` / ``capture(False)``: whether the current stream "is capturing" from now on."""
    state = {"on": False}
    monkeypatch.setattr(_device_data, "capturing", lambda: state["on"])
    return lambda on: state.update(on=on)


def _entry(key):
    return torch.full((2,), float(key))


class TestDeviceCache:
    def test_least_recently_used_evicted_beyond_the_bound(self, capture):
        cache = DeviceCache(3)
        first = {k: cache.get(k, lambda k=k: _entry(k)) for k in range(3)}
        assert cache.get(0, lambda: pytest.fail("rebuilt a cached entry")) is first[0]  # 0: most recent
        cache.get(3, lambda: _entry(3))
        assert cache.keys() == [2, 0, 3]  # 1 (least recently used) dropped
        built = []
        cache.get(1, lambda: built.append(1) or _entry(1))
        assert built == [1] and len(cache.keys()) == 3

    def test_entries_used_while_capturing_are_never_evicted(self, capture):
        cache = DeviceCache(2)
        warm = cache.get("warm", lambda: _entry(1))  # built before the capture (a warm-up run)
        capture(True)
        assert cache.get("warm", lambda: pytest.fail("rebuilt")) is warm  # looked up during capture: pinned
        new = cache.get("new", lambda: _entry(2))  # built during capture: pinned
        capture(False)
        for k in range(10):
            cache.get(k, lambda k=k: _entry(k))
        cache.clear()
        assert cache.pinned_keys() == ["warm", "new"] and cache.keys() == ["warm", "new"]
        assert cache.get("warm", lambda: pytest.fail("rebuilt")) is warm
        assert cache.get("new", lambda: pytest.fail("rebuilt")) is new

    def test_resize_tables_and_thresholds_pinned_by_a_capture(self, capture):
        from litesam_kernels.ops import mask_postprocess as mp

        logits = torch.randn(2, 16, 16)
        capture(True)
        captured = mp._resize_tables(logits, (60, 64), (45, 48), 64, struct_of_arrays=True)
        constants = _device_data.device_constants((0.0, 1.0, -1.0), torch.float32, "cpu")
        capture(False)
        for size in range(20, 20 + mp._TABLES.max_entries + 5):  # more image sizes than the cache holds
            mp._resize_tables(logits, (64, 64), (size, size), 64, struct_of_arrays=True)
        for i in range(_device_data._constants.max_entries + 5):
            _device_data.device_constants((float(i), 2.0), torch.float32, "cpu")
        assert mp._resize_tables(logits, (60, 64), (45, 48), 64, struct_of_arrays=True) is captured
        assert _device_data.device_constants((0.0, 1.0, -1.0), torch.float32, "cpu") is constants
        evicted = (16, 16, 64, (64, 64), (20, 20), True, torch.device("cpu"))
        assert evicted not in mp._TABLES.keys()  # the unpinned ones are still bounded

    def test_no_autotuning_while_capturing(self, capture, monkeypatch):
        pytest.importorskip("triton")
        from litesam_kernels.triton import _configs

        monkeypatch.setattr(_configs, "interpreter_on", lambda: False)
        monkeypatch.setenv(_configs.AUTOTUNE_ENV, "1")
        timed = []
        monkeypatch.setattr(_configs.LaunchConfigs, "_fastest", lambda family, run, reset: timed.append(1) or 1)
        family = _configs.LaunchConfigs("test.family_capture", [_configs.LaunchConfig(), _configs.LaunchConfig()])
        capture(True)
        assert family.choose("k", lambda c: None) == family.default and timed == [] and family.tuned_keys() == []
        capture(False)
        assert family.choose("k", lambda c: None) == 1 and timed == [1]
        capture(True)
        assert family.choose("k", lambda c: None) == 1  # a choice made before the capture is kept

    def test_capturing_is_false_without_cuda(self):
        if not torch.cuda.is_initialized():
            assert _device_data.capturing() is False


@pytest.mark.gpu
def test_captured_postprocess_replays_after_the_caches_overflow():
    """A CUDA graph of ``ops.postprocess_masks`` replays correctly after both caches saw more sizes and
    values than they hold (before: the graph's tables were evicted and freed, the replay read freed memory)."""
    import litesam_kernels as lk
    from litesam_kernels.ops import mask_postprocess as mp

    logits = torch.randn(6, 256, 256, device="cuda")
    args = ((700, 1024), (480, 700))
    kwargs = dict(mask_threshold=0.0, stability_offset=1.0, packed=True)
    expected = lk.ops.postprocess_masks(logits, *args, **kwargs)  # warm-up: tables, autotune, JIT
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = lk.ops.postprocess_masks(logits, *args, **kwargs)
    for size in range(100, 100 + mp._TABLES.max_entries + 8):
        lk.ops.postprocess_masks(logits[:1], (size, 1024), (size, size + 3), **kwargs)
        lk.ops.postprocess_masks(logits[:1], (size, 1024), (size, size + 3), mask_threshold=size / 1000,
                                 stability_offset=1.0, packed=True)
    for i in range(_device_data._constants.max_entries + 8):
        _device_data.device_constants((float(i),), torch.float32, "cuda")
    junk = [torch.randn(1 << 20, device="cuda") for _ in range(8)]  # reuse whatever was freed
    graph.replay()
    torch.cuda.synchronize()
    del junk
    for got, want in zip(captured, expected):
        assert torch.equal(got, want)
