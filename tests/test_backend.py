"""Dispatch: the order, forcing a backend, and backend_info()."""
import subprocess
import sys

import pytest
import torch

import litesam_kernels as lk
from litesam_kernels import _backend
from tests.helpers import random_boxes

OP = _backend.implementations("batched_nms")


class TestDispatch:
    def test_default_choice_on_cpu(self):
        expected = "cpu" if _backend.why_not("cpu", OP, torch.device("cpu")) is None else "reference"
        assert _backend.choose(OP, torch.device("cpu")) == expected

    def test_interpreter_is_never_chosen_for_cpu_tensors_unless_forced(self):
        assert _backend.choose(OP, torch.device("cpu")) != "triton"

    def test_use_backend_nests_and_restores(self):
        with lk.use_backend("reference"):
            assert _backend.choose(OP, torch.device("cpu")) == "reference"
            with lk.use_backend(None):
                assert _backend.choose(OP, torch.device("cpu")) != "reference" or _backend.extension() is None
            assert _backend.forced_backend() == "reference"
        assert _backend.forced_backend() is None

    def test_forced_backend_that_cannot_run_raises(self):
        with lk.use_backend("cuda"), pytest.raises(lk.BackendUnavailableError, match="cuda"):
            lk.ops.nms(random_boxes(4), torch.rand(4), 0.5)

    def test_env_var(self, monkeypatch):
        monkeypatch.setenv("LITESAM_BACKEND", "reference")
        assert _backend.choose(OP, torch.device("cpu")) == "reference"
        monkeypatch.setenv("LITESAM_BACKEND", "gpu")
        with pytest.raises(ValueError, match="LITESAM_BACKEND"):
            lk.ops.nms(random_boxes(4), torch.rand(4), 0.5)

    def test_unknown_backend_name(self):
        with pytest.raises(ValueError, match="backend"):
            with lk.use_backend("fastest"):
                pass

    def test_op_without_triton_kernel(self):
        op = _backend.OpImplementations("probe", compiled_kernel=None, has_triton=False)
        assert "no Triton kernel" in _backend.why_not("triton", op, torch.device("cpu"))
        assert "no compiled" in _backend.why_not("cpu", op, torch.device("cpu"))
        assert _backend.choose(op, torch.device("cpu")) == "reference"

    def test_unknown_op(self):
        with pytest.raises(ValueError, match="unknown op"):
            _backend.implementations("no_such_op")


class TestBackendInfo:
    def test_reports_everything(self):
        info = lk.backend_info()
        assert set(info) >= {"extension", "triton", "torch", "forced_backend", "order"}
        assert info["order"] == ["cuda", "triton", "cpu", "reference"]
        ext = info["extension"]
        if ext["loaded"]:
            assert isinstance(ext["cuda"], bool) and ext["compiler"]
            if ext["cuda"]:
                assert ext["cuda_version"] and ext["cuda_archs"]
        else:
            assert ext["error"]
        assert info["triton"]["available"] in (True, False)
        assert info["torch"]["version"] == torch.__version__

    def test_package_imports_without_triton_or_extension(self):
        # Block both optional parts: every op must still work through the reference.
        code = (
            "import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'triton' or name.startswith('triton.') or name == 'litesam_kernels._C':\n"
            "            raise ImportError('blocked for the test')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import torch, litesam_kernels as lk\n"
            "info = lk.backend_info()\n"
            "assert not info['extension']['loaded'] and not info['triton']['available'], info\n"
            "boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])\n"
            "print(lk.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist())\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[0, 2]"
