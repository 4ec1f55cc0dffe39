"""Runs last (file order): every declared GPU launch configuration must have executed in this session.

Meaningful only when the whole suite runs; with a subset selected it skips. A family whose configurations
are not all exercised by its op's tests fails here, naming the configurations that never ran.
"""
import importlib
import pkgutil
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

import litesam_kernels.triton as kernels  # noqa: E402
from litesam_kernels.triton import _configs  # noqa: E402


def _import_every_kernel_module():
    for info in pkgutil.iter_modules(kernels.__path__):
        if not info.name.startswith("_") and info.name != "aot":
            importlib.import_module(f"{kernels.__name__}.{info.name}")


def test_every_gpu_launch_configuration_ran(request):
    _import_every_kernel_module()
    here = Path(__file__).resolve().parent
    collected = {Path(str(item.fspath)).name for item in request.session.items}
    every_file = {p.name for p in here.glob("test_*.py")}
    if collected != every_file:
        pytest.skip("the launch-configuration gate needs the whole suite (a subset was selected)")
    missing = [m for m in _configs.never_executed() if not m.startswith("test.")]
    assert not missing, "GPU launch configurations that no CPU test ran:\n  " + "\n  ".join(missing)
