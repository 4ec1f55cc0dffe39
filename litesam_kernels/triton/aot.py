"""Compile every Triton kernel of the package ahead of time for a GPU target, without a GPU.

`TRITON_INTERPRET=0 python -m litesam_kernels.triton.aot [--arch 90]` imports each module of
``litesam_kernels.triton``, compiles each entry of its ``AOT_KERNELS`` list
``(kernel, signature, constexprs, options)`` for ``GPUTarget("cuda", arch, 32)``, and prints registers,
shared memory and spills per kernel. Exit status 1 if any kernel fails to compile, or if a module
defines ``@triton.jit`` kernels that ``AOT_KERNELS`` does not cover.

A signature type may end in ``":16"`` (``"*fp16:16"``, ``"i32:16"``, as in ``triton.tools.compile``): the
argument is compiled as the JIT specialises a 16-byte-aligned pointer or an integer divisible by 16 at run
time (unpredicated, vectorised, asynchronous copies), so the variant compiled here is the one a GPU runs
for such inputs; without it the AOT code is the pessimistic one the GPU never runs for them.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import time


def ast_source(fn, signature, constexprs):
    """The ``triton.compiler.ASTSource`` of one ``AOT_KERNELS`` entry (``":16"`` hints become attributes)."""
    from triton.compiler import ASTSource

    types, attrs = {}, {}
    for name, kind in signature.items():
        base, _, hint = kind.partition(":")
        if hint not in ("", "16"):
            raise ValueError(f"{fn.__name__}: signature hint of {name} must be ':16', got {kind!r}")
        types[name] = base
        if hint:
            attrs[(fn.arg_names.index(name),)] = [["tt.divisibility", 16]]
    return ASTSource(fn=fn, signature=types, constexprs=constexprs, attrs=attrs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m litesam_kernels.triton.aot", description=__doc__)
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for sm_90a (H100/H200)")
    parser.add_argument("--modules", default="", help="comma-separated kernel modules to compile (default: all), "
                        "e.g. conv_mlp,attention")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("AOT compilation needs TRITON_INTERPRET=0 (interpreted kernels cannot be compiled)", file=sys.stderr)
        return 2

    import triton
    from triton.backends.compiler import GPUTarget

    import litesam_kernels.triton as package

    target = GPUTarget("cuda", args.arch, 32)
    wanted = {m.strip() for m in args.modules.split(",") if m.strip()}
    available = {info.name for info in pkgutil.iter_modules(package.__path__)}
    if wanted - available:
        print(f"unknown kernel module(s): {', '.join(sorted(wanted - available))}", file=sys.stderr)
        return 2
    failures, compiled = [], 0
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name == "aot" or (wanted and info.name not in wanted):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        entries = getattr(module, "AOT_KERNELS", [])
        jitted = {name for name, obj in vars(module).items() if isinstance(obj, triton.runtime.JITFunction)}
        covered = set()
        for kernel, signature, constexprs, options in entries:
            fn = kernel
            while not isinstance(fn, triton.runtime.JITFunction):  # unwrap autotune/heuristics
                fn = fn.fn
            covered.add(fn.__name__)
            label = f"{info.name}.{fn.__name__}{'' if not constexprs else ' ' + str(constexprs)}"
            start = time.perf_counter()
            try:
                kernel_binary = triton.compile(ast_source(fn, signature, constexprs), target=target, options=options)
            except Exception as exc:  # report every failure, not just the first
                failures.append(label)
                print(f"FAIL {label}: {type(exc).__name__}: {exc}")
                continue
            compiled += 1
            meta = kernel_binary.metadata
            print(f"ok   {label}: {time.perf_counter() - start:.1f}s, "
                  f"shared={meta.shared} B, warps={meta.num_warps}")
        for name in sorted(jitted - covered):
            failures.append(f"{info.name}.{name}")
            print(f"FAIL {info.name}.{name}: a @triton.jit kernel with no AOT_KERNELS entry")
    print(f"{compiled} kernel variant(s) compiled for sm_{args.arch}a; {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
