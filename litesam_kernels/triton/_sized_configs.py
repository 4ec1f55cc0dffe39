"""Launch-configuration families per row-size class, for kernels whose tiles hold whole rows on chip.

ConvMLP keeps all C channels of its tokens on chip and attention a head's D values (or, with the fused
output projection, all C channels of its queries): the shared memory and registers of a configuration grow
with the row's bytes (element size x padded row length), so a tile that is best for 16-bit rows of 128
channels does not fit sm_90's 227 KB of shared memory per block for float32 rows of 256. ``SizedConfigs``
declares one :class:`LaunchConfigs` family per class of row bytes (``"<name>.row<limit>"``): every
configuration of a family fits every input of its class, so the autotuner only ever times configurations
that can launch, and the CPU suite runs each of them on an input of its class.
"""
from __future__ import annotations

from typing import Hashable, List, Sequence, Tuple

import torch

from litesam_kernels.triton._configs import LaunchConfig, LaunchConfigs

AOT_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


class SizedConfigs:
    """``classes``: ``(largest row bytes of the class, configurations)`` in increasing order of the bound."""

    def __init__(self, name: str, classes: Sequence[Tuple[int, Sequence[LaunchConfig]]]) -> None:
        bounds = [bound for bound, _ in classes]
        if not bounds or bounds != sorted(set(bounds)):
            raise ValueError(f"{name}: row-size classes must be given in increasing order of their bound")
        self.name = name
        self.classes: List[Tuple[int, LaunchConfigs]] = [
            (bound, LaunchConfigs(f"{name}.row{bound}", configs)) for bound, configs in classes]

    @property
    def largest_row_bytes(self) -> int:
        return self.classes[-1][0]

    def family(self, row_bytes: int) -> LaunchConfigs:
        """The family of rows of ``row_bytes`` bytes (element size x padded row length)."""
        for bound, family in self.classes:
            if row_bytes <= bound:
                return family
        raise ValueError(f"{self.name}: rows of {row_bytes} bytes exceed the largest class "
                         f"({self.largest_row_bytes} bytes)")

    def launch(self, row_bytes: int, key: Hashable, run, reset=None):
        return self.family(row_bytes).launch(key, run, reset)


def row_bytes(dtype: torch.dtype, padded_length: int) -> int:
    return torch.empty((), dtype=dtype).element_size() * padded_length
