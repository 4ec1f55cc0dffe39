"""Launch-configuration families per row-size class (triton/_sized_configs.py)."""
import pytest
import torch

pytest.importorskip("triton")

from litesam_kernels.triton import _configs  # noqa: E402
from litesam_kernels.triton._sized_configs import SizedConfigs, row_bytes  # noqa: E402


def _configs_of(*block_sizes):
    return [_configs.LaunchConfig({"BLOCK": b}) for b in block_sizes]


def test_each_row_size_picks_the_smallest_class_that_holds_it():
    sized = SizedConfigs("test.sized_a", [(128, _configs_of(64, 32)), (512, _configs_of(16))])
    assert [family.name for _, family in sized.classes] == ["test.sized_a.row128", "test.sized_a.row512"]
    assert sized.family(2).name == sized.family(128).name == "test.sized_a.row128"
    assert sized.family(129).name == sized.family(512).name == "test.sized_a.row512"
    ran = []
    sized.launch(300, ("key",), lambda config: ran.append(config.meta["BLOCK"]))
    assert ran == [16]
    with pytest.raises(ValueError, match="exceed the largest class"):
        sized.family(513)


def test_classes_must_increase():
    with pytest.raises(ValueError, match="increasing"):
        SizedConfigs("test.sized_b", [(512, _configs_of(16)), (128, _configs_of(64))])
    with pytest.raises(ValueError, match="increasing"):
        SizedConfigs("test.sized_c", [])


def test_row_bytes():
    assert row_bytes(torch.float16, 128) == 256
    assert row_bytes(torch.bfloat16, 32) == 64
    assert row_bytes(torch.float32, 128) == 512
    assert row_bytes(torch.float64, 256) == 2048
