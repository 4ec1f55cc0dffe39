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
