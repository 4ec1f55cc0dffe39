"""The launch-configuration registry (triton/_configs.py) and the fp32 dot-precision policy (triton/_precision.py)."""
import pytest
import torch

pytest.importorskip("triton")

from litesam_kernels.triton import _configs, _precision  # noqa: E402


class TestLaunchConfigs:
    def test_default_runs_unless_forced(self):
        family = _configs.LaunchConfigs("test.family_a", [_configs.LaunchConfig({"B": 1}), _configs.LaunchConfig({"B": 2}, 8, 3)],
                                        default=1)
        ran = []
        family.launch(("k",), lambda c: ran.append(c.meta["B"]))
        with _configs.force_config("test.family_a", 0) as config:
            assert config.meta == {"B": 1}
            family.launch(("k",), lambda c: ran.append(c.meta["B"]))
        family.launch(("k",), lambda c: ran.append(c.meta["B"]))
        assert ran == [2, 1, 2]
        assert {("test.family_a", 0), ("test.family_a", 1)} <= _configs.executed()

    def test_kwargs_and_aot_entries(self):
        family = _configs.LaunchConfigs("test.family_b", [_configs.LaunchConfig({"BLOCK": 64}, num_warps=8, num_stages=3)])
        assert family.configs[0].kwargs() == {"BLOCK": 64, "num_warps": 8, "num_stages": 3}
        (entry,) = family.aot_entries("kernel", {"x": "*fp32"}, {"FLAG": True}, {"enable_fp_fusion": False})
        assert entry == ("kernel", {"x": "*fp32"}, {"FLAG": True, "BLOCK": 64},
                         {"num_warps": 8, "num_stages": 3, "enable_fp_fusion": False})

    def test_reset_runs_before_the_launch(self):
        family = _configs.LaunchConfigs("test.family_c", [_configs.LaunchConfig()])
        events = []
        family.launch(None, lambda c: events.append("run"), reset=lambda: events.append("reset"))
        assert events == ["reset", "run"]

    def test_bad_declarations_and_indices(self):
        with pytest.raises(ValueError, match="at least one"):
            _configs.LaunchConfigs("test.empty", [])
        with pytest.raises(ValueError, match="default"):
            _configs.LaunchConfigs("test.bad_default", [_configs.LaunchConfig()], default=1)
        _configs.LaunchConfigs("test.twice", [_configs.LaunchConfig()])
        with pytest.raises(ValueError, match="declared twice"):
            _configs.LaunchConfigs("test.twice", [_configs.LaunchConfig()])
        with pytest.raises(ValueError, match="has 1 configurations"):
            with _configs.force_config("test.twice", 1):
                pass
        with pytest.raises(KeyError):
            with _configs.force_config("test.unknown", 0):
                pass


@pytest.fixture
def gpu_autotuning(monkeypatch):
    """Autotuning as on a GPU (several configurations, LITESAM_AUTOTUNE=1), with the timing replaced by a
    recorder that picks the default: the kernels still run (interpreted) and every tuned key is seen."""
    monkeypatch.setattr(_configs, "interpreter_on", lambda: False)
    monkeypatch.setenv(_configs.AUTOTUNE_ENV, "1")
    timed = []

    def fake_fastest(family, run, reset):
        timed.append(family.name)
        return family.default

    monkeypatch.setattr(_configs.LaunchConfigs, "_fastest", fake_fastest)
    for family in _configs.families().values():
        monkeypatch.setattr(family, "_tuned", type(family._tuned)())
    return timed


class TestAutotuneKeys:
    def test_size_bucket_and_rows_bucket(self):
        assert [_configs.size_bucket(n) for n in (0, 1, 2, 3, 4, 5, 1000, 1024, 1025)] == \
            [0, 1, 2, 4, 4, 8, 1024, 1024, 2048]
        assert _configs.rows_bucket((2, 60, 60, 48)) == (128, 64, 48)
        assert _configs.rows_bucket((1, 128, 33, 48)) == (128, 64, 48)

    def test_tunes_once_per_key_and_the_cache_is_bounded(self, gpu_autotuning):
        family = _configs.LaunchConfigs("test.family_lru", [_configs.LaunchConfig({"B": 1}),
                                                            _configs.LaunchConfig({"B": 2})])
        for key in range(_configs.TUNED_KEYS):
            family.launch(key, lambda c: None)
        family.launch(0, lambda c: None)  # a hit: key 0 becomes the most recently used
        assert gpu_autotuning.count("test.family_lru") == _configs.TUNED_KEYS
        family.launch("new", lambda c: None)  # over the bound: the least recently used (key 1) goes
        keys = family.tuned_keys()
        assert len(keys) == _configs.TUNED_KEYS and 1 not in keys and keys[-2:] == [0, "new"]
        family.launch(1, lambda c: None)
        assert gpu_autotuning.count("test.family_lru") == _configs.TUNED_KEYS + 2

    def test_autotune_off_never_times(self, gpu_autotuning, monkeypatch):
        monkeypatch.setenv(_configs.AUTOTUNE_ENV, "0")
        family = _configs.LaunchConfigs("test.family_off", [_configs.LaunchConfig(), _configs.LaunchConfig()],
                                        default=1)
        ran = []
        family.launch("k", lambda c: ran.append(c))
        assert ran == [family.configs[1]] and gpu_autotuning == [] and family.tuned_keys() == []

    def test_postprocess_keys_ignore_the_exact_image_size(self, gpu_autotuning):
        """Photos of different sizes in one (rows, words) bucket reuse one tuning; SAME_HEIGHT/SAME_WIDTH
        and packed stay exact. 3 masks of 40x70 and of 42x90 -> 128 rows, 4 words; 50x70 -> 256 rows."""
        import litesam_kernels as lk
        from litesam_kernels.triton import mask_postprocess as kernels

        logits = torch.randn(3, 16, 16)
        with lk.use_backend("triton"):
            for original in ((40, 70), (42, 90), (50, 70), (40, 70)):
                lk.ops.postprocess_masks(logits, (64, 64), original, image_size=64, packed=True)
            lk.ops.postprocess_masks(logits, (64, 64), (64, 64), image_size=64, packed=True)  # SAME_* on
            lk.ops.postprocess_masks(logits, (64, 64), (40, 70), image_size=64, packed=False)
            for size in (40, 60):  # stability: 3 x 40 and 3 x 60 rows of 2 words -> 128 / 256
                lk.ops.stability_score(torch.randn(3, size, 40), 0.0, 1.0)
                lk.ops.stability_score(torch.randn(3, size, 50), 0.0, 1.0)
            for width in (40, 60):  # boxes: 3 x 40 rows of 2 words, packed or not
                lk.ops.masks_to_boxes(torch.rand(3, 40, width) > 0.5)
        assert set(kernels.POSTPROCESS_CONFIGS.tuned_keys()) == {
            (torch.float32, True, False, False, 128, 4), (torch.float32, True, False, False, 256, 4),
            (torch.float32, True, True, True, 256, 2), (torch.float32, False, False, False, 128, 4)}
        assert kernels.STABILITY_CONFIGS.tuned_keys() == [(torch.float32, 128, 2), (torch.float32, 256, 2)]
        assert kernels.BOX_CONFIGS.tuned_keys() == [(False, 128, 2)]
        assert gpu_autotuning.count("mask_postprocess.fused") == 4

    def test_box_and_mask_nms_keys_bucket_the_counts(self, gpu_autotuning):
        import litesam_kernels as lk
        from litesam_kernels.triton import mask_nms as mask_kernels
        from litesam_kernels.ops.bitmask import pack_masks
        from litesam_kernels.triton import nms as box_kernels

        with lk.use_backend("triton"):
            for n in (70, 100, 130):  # 2, 2 and 3 column blocks of 64 boxes -> 2, 2, 4
                xy = torch.rand(n, 2) * 100
                lk.ops.nms(torch.cat([xy, xy + 10 + torch.rand(n, 2) * 20], 1), torch.rand(n), 0.5)
            for width in (40, 60):  # 2 words per row either way
                masks = torch.rand(4, 24, width) > 0.3
                lk.ops.mask_nms(pack_masks(masks), torch.rand(4), 0.5, width=width)
        assert box_kernels.MASK_CONFIGS.tuned_keys() == [(torch.float32, False, 2), (torch.float32, False, 4)]
        assert box_kernels.GATHER_CONFIGS.tuned_keys() == [2, 4, 1]  # mask NMS walks 4 masks: 1 block
        assert mask_kernels.AREA_CONFIGS.tuned_keys() == [64]
        assert set(mask_kernels.POPCOUNT_CONFIGS.tuned_keys()) <= {1, 2}


@pytest.fixture
def tf32_switches():
    """Restores torch's TF32 switches (module attributes behind __getattr__: monkeypatch cannot set them)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class TestDotPrecision:
    def test_follows_torch_switches(self, monkeypatch, tf32_switches):
        monkeypatch.delenv(_precision.FP32_DOT_ENV, raising=False)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True
        assert _precision.dot_precision(torch.float32, "matmul") == "ieee"
        assert _precision.dot_precision(torch.float32, "conv") == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = False
        assert _precision.dot_precision(torch.float32, "matmul") == "tf32"
        assert _precision.dot_precision(torch.float32, "conv") == "ieee"
        assert _precision.dot_precision(torch.float64, "conv") == "ieee"
        assert _precision.dot_precision(torch.bfloat16, "matmul") == "tf32"

    def test_environment_override(self, monkeypatch):
        monkeypatch.setenv(_precision.FP32_DOT_ENV, "tf32x3")
        assert _precision.dot_precision(torch.float32, "matmul") == "tf32x3"
        monkeypatch.setenv(_precision.FP32_DOT_ENV, "fast")
        with pytest.raises(ValueError, match="LITESAM_FP32_DOT"):
            _precision.dot_precision(torch.float32, "conv")
        with pytest.raises(ValueError, match="kind"):
            _precision.fp32_dot_precision("attention")


import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from litesam_kernels.triton._activations import gelu, gelu_and_grad  # noqa: E402


@triton.jit
def _gelu_probe_kernel(a_ptr, y_ptr, y2_ptr, d_ptr, n, FAST: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    ok = offs < n
    a = tl.load(a_ptr + offs, mask=ok, other=0.0)
    y, d = gelu_and_grad(a, FAST)
    tl.store(y_ptr + offs, gelu(a, FAST), mask=ok)
    tl.store(y2_ptr + offs, y, mask=ok)
    tl.store(d_ptr + offs, d, mask=ok)


class TestGelu:
    """The shared GELU forms (triton/_activations.py) against torch, fp32 accumulation."""

    @pytest.mark.parametrize("fast", [False, True])
    def test_values_and_gradients(self, fast):
        a = torch.cat([torch.linspace(-12, 12, 1001), torch.tensor([-100.0, 100.0, 0.0])])
        y, y2, d = torch.empty_like(a), torch.empty_like(a), torch.empty_like(a)
        _gelu_probe_kernel[(1,)](a, y, y2, d, a.numel(), FAST=fast, BLOCK=2048)
        approximate = "tanh" if fast else "none"
        torch.testing.assert_close(y, torch.nn.functional.gelu(a, approximate=approximate), rtol=1e-6, atol=2e-6)
        torch.testing.assert_close(y2, y)
        leaf = a.clone().requires_grad_()
        torch.nn.functional.gelu(leaf, approximate=approximate).sum().backward()
        torch.testing.assert_close(d, leaf.grad, rtol=1e-5, atol=1e-5)  # 1 - t*t cancels where t -> -1
        if fast:  # the documented bound: the tanh form stays within 5e-4 of the exact GELU
            assert (y - torch.nn.functional.gelu(a)).abs().max() < 5e-4
