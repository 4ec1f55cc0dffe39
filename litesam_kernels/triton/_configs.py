"""GPU launch configurations that the CPU suite executes too.

A kernel family declares its configurations once, beside its kernel::

    FWD_CONFIGS = LaunchConfigs("conv_mlp.fwd", [
        LaunchConfig({"BLOCK_M": 128, "BLOCK_H": 64}, num_warps=8, num_stages=3),
        LaunchConfig({"BLOCK_M": 64, "BLOCK_H": 64}, num_warps=4, num_stages=3),
    ])

and its launcher calls ``FWD_CONFIGS.launch(key, run)``, where ``run(config)`` launches the kernel with
``**config.kwargs()`` (plus the meta-parameters that follow from the input, e.g. ``BLOCK_C``). Which one runs:

1. the one a test forced (``with force_config("conv_mlp.fwd", 1): ...``): how the CPU suite runs every GPU
   configuration under ``TRITON_INTERPRET=1``, on small inputs;
2. on a GPU, with several configurations and ``LITESAM_AUTOTUNE`` not ``0``: the fastest for ``key``, each
   configuration timed once (``triton.testing.do_bench``, ~20 ms per configuration) on the first call with
   that key; the choice is cached for the process (the last ``TUNED_KEYS`` keys per family, least recently
   used dropped first). A key first seen while a CUDA graph is being captured runs the default (timing
   synchronises; the graph keeps the choice it captured). ``run`` must be repeatable (it rewrites its
   outputs); a kernel that accumulates into its outputs passes ``reset`` to clear them before each timed
   run and before the final one;
3. otherwise the family's ``default`` configuration (index 0 unless given).

``LITESAM_AUTOTUNE`` (environment, read at every launch): ``1`` (default) autotunes as in 2; ``0`` never
times anything and runs each family's default (reproducible launches, no first-call cost).

Keys: a key holds what changes the best configuration, not every size: dtypes, constexpr switches, model
constants (channels, heads, kernel sizes) exactly, and sizes that vary with the data (image sizes, mask,
box and token counts, batch) as powers of two (:func:`size_bucket`, :func:`rows_bucket`). Exact sizes
would re-time every family for nearly every image of a folder of photos (each new (H, W) a new key: several
do_bench runs, far over SegEvery's ~5 ms per image); bucketed, a process tunes a family a few times.

Every configuration that runs is recorded; ``tests/test_zz_launch_configs.py`` fails the full suite when a
declared configuration never ran. ``aot_entries`` turns configurations into ``AOT_KERNELS`` entries, so CI
compiles (and the static GPU report inspects) exactly the configurations a GPU can pick.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Hashable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from litesam_kernels import _device_data
from litesam_kernels._backend import interpreter_on

AUTOTUNE_ENV = "LITESAM_AUTOTUNE"
TUNED_KEYS = 64  # tuned keys kept per family (bucketed keys: a process needs a few; this bounds a long run)
_FAMILIES: Dict[str, "LaunchConfigs"] = {}
_EXECUTED: Set[Tuple[str, int]] = set()
_forced = threading.local()


@dataclass(frozen=True)
class LaunchConfig:
    """Constexpr meta-parameters (block sizes, switches) and the compile options of one launch."""

    meta: Mapping[str, object] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 2

    def kwargs(self) -> Dict[str, object]:
        """Keyword arguments of ``kernel[grid](...)`` for this configuration."""
        return {**self.meta, "num_warps": self.num_warps, "num_stages": self.num_stages}

    def options(self) -> Dict[str, int]:
        """Compile options for ``triton.compile`` (AOT)."""
        return {"num_warps": self.num_warps, "num_stages": self.num_stages}

    def __str__(self) -> str:
        meta = ", ".join(f"{k}={v}" for k, v in self.meta.items())
        return f"{meta}{', ' if meta else ''}warps={self.num_warps}, stages={self.num_stages}"


class LaunchConfigs:
    """The GPU launch configurations of one kernel family (see the module docstring)."""

    def __init__(self, name: str, configs: Sequence[LaunchConfig], *, default: int = 0) -> None:
        if not configs:
            raise ValueError(f"{name}: at least one launch configuration is needed")
        if not 0 <= default < len(configs):
            raise ValueError(f"{name}: default must index one of the {len(configs)} configurations, got {default}")
        if name in _FAMILIES:
            raise ValueError(f"launch configurations {name!r} are declared twice")
        self.name = name
        self.configs: Tuple[LaunchConfig, ...] = tuple(configs)
        self.default = default
        self._tuned: "OrderedDict[Hashable, int]" = OrderedDict()  # key -> index, least recently used first
        self._tuned_lock = threading.Lock()
        _FAMILIES[name] = self

    def __len__(self) -> int:
        return len(self.configs)

    def choose(self, key: Hashable, run: Callable[[LaunchConfig], object],
               reset: Optional[Callable[[], object]] = None) -> int:
        """Index of the configuration to run for ``key`` (may time every configuration once, see above)."""
        forced = getattr(_forced, "configs", {}).get(self.name)
        if forced is not None:
            return forced
        if len(self.configs) == 1 or interpreter_on() or os.environ.get(AUTOTUNE_ENV, "1") == "0":
            return self.default
        with self._tuned_lock:
            index = self._tuned.get(key)
            if index is not None:
                self._tuned.move_to_end(key)
                return index
        if _device_data.capturing():  # timing synchronises, which a CUDA-graph capture forbids
            return self.default
        index = self._fastest(run, reset)  # outside the lock: another thread may tune the same key too
        with self._tuned_lock:
            self._tuned[key] = index
            self._tuned.move_to_end(key)
            while len(self._tuned) > TUNED_KEYS:
                self._tuned.popitem(last=False)
        return index

    def tuned_keys(self) -> List[Hashable]:
        """The keys whose choice is cached, least recently used first (for tests and diagnostics)."""
        with self._tuned_lock:
            return list(self._tuned)

    def launch(self, key: Hashable, run: Callable[[LaunchConfig], object],
               reset: Optional[Callable[[], object]] = None):
        """Run the chosen configuration (``run(config)``) and return what ``run`` returns."""
        index = self.choose(key, run, reset)
        if reset is not None:
            reset()
        _EXECUTED.add((self.name, index))
        return run(self.configs[index])

    def _fastest(self, run, reset) -> int:
        import triton.testing

        times = []
        for config in self.configs:
            def once(config=config):
                if reset is not None:
                    reset()
                run(config)
            try:
                times.append(float(triton.testing.do_bench(once, warmup=3, rep=15, return_mode="median")))
            except Exception:  # e.g. out of shared memory on a smaller GPU: never chosen
                times.append(float("inf"))
        best = min(range(len(times)), key=times.__getitem__)
        if times[best] == float("inf"):
            return self.default
        return best

    def aot_entries(self, kernel, signature: Mapping[str, str], constexprs: Mapping[str, object],
                    options: Optional[Mapping[str, object]] = None) -> List[tuple]:
        """``AOT_KERNELS`` entries ``(kernel, signature, constexprs, options)``, one per configuration."""
        entries = []
        for config in self.configs:
            opts = {**config.options(), **(options or {})}
            entries.append((kernel, dict(signature), {**constexprs, **config.meta}, opts))
        return entries


def size_bucket(n: int) -> int:
    """``n`` rounded up to a power of two (0 and 1 unchanged): a data-dependent size in an autotune key."""
    n = int(n)
    return n if n <= 1 else 1 << (n - 1).bit_length()


def rows_bucket(shape: Sequence[int]) -> Tuple[int, int, int]:
    """Key part of an NHWC ``(B, H, W, C)`` shape for row-tile kernels: (bucketed B*H rows, bucketed W,
    exact C). Batch and image size vary with the data; the channel count is the model's."""
    b, h, w, c = (int(s) for s in shape)
    return size_bucket(b * h), size_bucket(w), c


@contextlib.contextmanager
def force_config(name: str, index: int) -> Iterator[LaunchConfig]:
    """Run configuration ``index`` of family ``name`` inside the block (this thread): for tests."""
    family = families()[name]
    if not 0 <= index < len(family):
        raise ValueError(f"{name} has {len(family)} configurations, got index {index}")
    previous = dict(getattr(_forced, "configs", {}))
    _forced.configs = {**previous, name: index}
    try:
        yield family.configs[index]
    finally:
        _forced.configs = previous


def families() -> Dict[str, LaunchConfigs]:
    """Every declared family (import the kernel modules first)."""
    return dict(_FAMILIES)


def executed() -> Set[Tuple[str, int]]:
    """(family, index) of every configuration that ran in this process."""
    return set(_EXECUTED)


def never_executed() -> List[str]:
    """``family[index] (config)`` of every declared configuration that has not run in this process."""
    return [f"{name}[{i}] ({config})" for name, family in sorted(_FAMILIES.items())
            for i, config in enumerate(family.configs) if (name, i) not in _EXECUTED]
