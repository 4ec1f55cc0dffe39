"""Compile every Triton kernel of the package ahead of time for a GPU target, without a GPU.

`TRITON_INTERPRET=0 python -m litesam_kernels.triton.aot [--arch 90]` imports each module of
``litesam_kernels.triton``, compiles each entry of its ``AOT_KERNELS`` list
``(kernel, signature, constexprs, options)`` for ``GPUTarget("cuda", arch, 32)``, and prints registers,
shared memory and spills per kernel. Exit status 1 if any kernel fails to compile, or if a module
defines launched ``@triton.jit`` kernels that ``AOT_KERNELS`` does not cover (:func:`launched_kernels`).

``kernel_modules``, ``module_entries`` and ``compile_entry`` are the same steps for other tools (the
static GPU report, ``python -m benchmarks.static_gpu_report``, compiles through them).
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

PACKAGE = "litesam_kernels.triton"


@dataclass(frozen=True)
class AotEntry:
    """One ``AOT_KERNELS`` entry of kernel module ``module`` (``index`` into its list)."""

    module: str
    index: int
    kernel: object  # the JITFunction, autotune/heuristics wrappers removed
    signature: Dict[str, str] = field(hash=False)
    constexprs: Dict[str, object] = field(hash=False)
    options: Dict[str, object] = field(hash=False)

    @property
    def name(self) -> str:
        return self.kernel.__name__

    @property
    def label(self) -> str:
        return f"{self.module}.{self.name}{'' if not self.constexprs else ' ' + str(self.constexprs)}"


def _check_not_interpreting() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("AOT compilation needs TRITON_INTERPRET=0 (interpreted kernels cannot be compiled)")


def kernel_modules(wanted: Sequence[str] = ()) -> List[str]:
    """Names of the kernel modules of the package (all, or those in ``wanted``; ValueError for unknown)."""
    package = importlib.import_module(PACKAGE)
    available = [info.name for info in pkgutil.iter_modules(package.__path__)
                 if not info.name.startswith("_") and info.name != "aot"]
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise ValueError(f"unknown kernel module(s): {', '.join(unknown)}; available: {', '.join(available)}")
    return [name for name in available if not wanted or name in wanted]


def module_entries(module_name: str) -> Tuple[List[AotEntry], List[str]]:
    """(the module's AOT entries, its ``@triton.jit`` kernels that no entry covers)."""
    _check_not_interpreting()
    import triton

    module = importlib.import_module(f"{PACKAGE}.{module_name}")
    entries = []
    for index, (kernel, signature, constexprs, options) in enumerate(getattr(module, "AOT_KERNELS", [])):
        fn = kernel
        while not isinstance(fn, triton.runtime.JITFunction):  # unwrap autotune/heuristics
            fn = fn.fn
        entries.append(AotEntry(module_name, index, fn, dict(signature), dict(constexprs), dict(options or {})))
    return entries, sorted(launched_kernels(module) - {entry.name for entry in entries})


def launched_kernels(module) -> set:
    """Names of the module's own ``@triton.jit`` functions that none of them calls or passes on: the kernels a
    launcher starts. Helpers called from a kernel, or handed to a helper as a constexpr function argument, are
    compiled into it (imported ones, e.g. ``_activations.gelu``, belong to their own module), so they need no
    ``AOT_KERNELS`` entry of their own."""
    import triton

    own = {name: fn for name, fn in vars(module).items()
           if isinstance(fn, triton.runtime.JITFunction) and fn.__module__ == module.__name__}
    called = {name for name in own for other_name, other in own.items()
              if other_name != name and re.search(rf"\b{re.escape(name)}\b", other.src)}
    return set(own) - called


def specialization(kernel, signature: Dict[str, str]) -> Tuple[Dict[str, str], Dict[tuple, list]]:
    """(plain signature, ``ASTSource`` attrs): the specialisation Triton's JIT gives a launch.

    The JIT marks a pointer to a 16-byte aligned tensor (every tensor torch allocates, at offset 0) as
    divisible by 16, which is what lets it emit 128-bit loads and stores; AOT entries are compiled the same
    way. An integer argument may say the same with the suffix ``:16`` (``"C": "i32:16"``, the convention of
    triton's own ``tools/compile.py``) when its launcher only passes multiples of 16."""
    plain, attrs = {}, {}
    for name, kind in signature.items():
        kind, _, hint = kind.partition(":")
        if hint not in ("", "16"):
            raise ValueError(f"{kernel.__name__}: argument {name!r} has hint {hint!r}; only ':16' is known")
        plain[name] = kind
        if kind.startswith("*") or hint == "16":
            attrs[(kernel.arg_names.index(name),)] = [["tt.divisibility", 16]]
    return plain, attrs


def compile_entry(entry: AotEntry, arch: int = 90):
    """``triton.compile`` of one entry for ``GPUTarget("cuda", arch, 32)`` (the CompiledKernel), specialised
    as the JIT specialises a launch on aligned tensors (``specialization``)."""
    _check_not_interpreting()
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, attrs = specialization(entry.kernel, entry.signature)
    return triton.compile(ASTSource(fn=entry.kernel, signature=signature, constexprs=entry.constexprs, attrs=attrs),
                          target=GPUTarget("cuda", arch, 32), options=entry.options)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m litesam_kernels.triton.aot", description=__doc__)
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for sm_90a (H100/H200)")
    parser.add_argument("--modules", default="", help="comma-separated kernel modules to compile (default: all), "
                        "e.g. conv_mlp,attention")
    args = parser.parse_args(argv)
    try:
        _check_not_interpreting()
        modules = kernel_modules([m.strip() for m in args.modules.split(",") if m.strip()])
    except (RuntimeError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2

    failures, compiled = [], 0
    for module_name in modules:
        entries, uncovered = module_entries(module_name)
        for entry in entries:
            start = time.perf_counter()
            try:
                kernel_binary = compile_entry(entry, args.arch)
            except Exception as exc:  # report every failure, not just the first
                failures.append(entry.label)
                print(f"FAIL {entry.label}: {type(exc).__name__}: {exc}")
                continue
            compiled += 1
            meta = kernel_binary.metadata
            print(f"ok   {entry.label}: {time.perf_counter() - start:.1f}s, "
                  f"shared={meta.shared} B, warps={meta.num_warps}")
        for name in uncovered:
            failures.append(f"{module_name}.{name}")
            print(f"FAIL {module_name}.{name}: a @triton.jit kernel with no AOT_KERNELS entry")
    print(f"{compiled} kernel variant(s) compiled for sm_{args.arch}a; {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
