"""Static GPU report: what the sm_90a machine code of every kernel looks like, read without a GPU; the CI gate.

`TRITON_INTERPRET=0 python -m benchmarks.static_gpu_report [--only cuda|triton] [--modules a,b] [--out DIR]`

- **CUDA**: every kernel in the built extension ``litesam_kernels/_C*.so`` (``cuobjdump -res-usage``,
  ``-sass`` and ``-elf`` on it).
- **Triton**: every ``AOT_KERNELS`` entry of every module of ``litesam_kernels.triton`` (the variants a
  GPU can launch, see ``_configs.LaunchConfigs.aot_entries``), compiled for sm_90a through
  ``litesam_kernels.triton.aot`` from an empty cache, in ``--jobs`` worker processes; the cubin comes from
  ``kernel.asm["cubin"]``, the ``tl.dot`` operations from the kernel's TTIR, spill bytes from ptxas's log.

Per kernel: registers, stack frame / local memory, shared memory, threads per block, resident blocks and
warps per SM on sm_90 (``sass.occupancy``), and SASS instruction classes (tensor-core MMA/GMMA, global-load
widths incl. 128-bit, POPC, atomics, local-memory traffic, calls). Writes ``static_gpu_report.json`` and
``static_gpu_report.md`` to ``--out`` (default ``benchmarks/results/static/``).

Exit status 1 (the CI gate) on: a kernel that uses local memory (register spills or a run-time-indexed
array: a stack frame, local bytes, or LDL/STL in its SASS); a Triton kernel with ``tl.dot`` and no
tensor-core instruction, except where every dot is an exact-fp32 (``input_precision="ieee"``, fp32/fp64
operands) dot, which cannot use tensor cores: those are warnings, failures with ``--strict-fp32``; a
kernel that cannot launch on sm_90 (too much shared memory or too many threads); a Triton entry that fails
to compile, or a ``@triton.jit`` kernel without an ``AOT_KERNELS`` entry (what ``triton.aot`` checks: this
report replaces that CI step, so everything is compiled once).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import io
import json
import os
import re
from collections import Counter
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from benchmarks import sass

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "static"
ASSUMED_THREADS = 256  # occupancy of a CUDA kernel whose block size is not in the binary
LOW_OCCUPANCY_WARPS = 8  # fewer resident warps per SM than this is worth a warning
EXACT_FP32_OPERANDS = ("f32", "f64")


@dataclass
class KernelReport:
    source: str  # "cuda" or "triton"
    module: str  # the .cu file, or the Triton kernel module
    kernel: str  # readable name
    variant: str = ""  # Triton: operand dtypes, constexprs, warps/stages
    registers: int = 0
    stack_bytes: int = 0
    local_bytes: int = 0
    shared_bytes: int = 0  # CUDA: static shared memory only; Triton: all of it (metadata.shared)
    threads_per_block: int = ASSUMED_THREADS
    threads_known: bool = True
    blocks_per_sm: int = 0
    warps_per_sm: int = 0
    occupancy_limiter: str = ""
    spill_store_bytes: Optional[int] = None  # from ptxas's log (Triton); None when not known
    spill_load_bytes: Optional[int] = None
    instructions: Dict[str, int] = field(default_factory=dict)
    tensor_core_opcodes: List[str] = field(default_factory=list)
    dots: List[Dict[str, str]] = field(default_factory=list)  # Triton: [{"precision": ..., "operand": ...}]
    compile_s: Optional[float] = None
    failures: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.source}:{self.module}.{self.kernel}" + (f" [{self.variant}]" if self.variant else "")


# ------------------------------------------------------------------------------------------ reading
def _fill_from_binary(report: KernelReport, resources: sass.Resources, opcodes) -> KernelReport:
    report.registers = resources.registers
    report.stack_bytes = resources.stack_bytes
    report.local_bytes = resources.local_bytes
    report.instructions = sass.instruction_classes(opcodes)
    report.tensor_core_opcodes = sass.tensor_core_opcodes(opcodes)
    occ = sass.occupancy(report.registers, report.shared_bytes, report.threads_per_block)
    report.blocks_per_sm, report.warps_per_sm, report.occupancy_limiter = (
        occ["blocks_per_sm"], occ["warps_per_sm"], occ["limiter"])
    return report


def read_cuda_binary(path: str) -> List[KernelReport]:
    """One report per kernel of a CUDA binary (extension .so, object or cubin), for sm_90a (else sm_90)."""
    resources = sass.parse_resource_usage(sass.cuobjdump("-res-usage", path))
    opcodes = sass.parse_sass(sass.cuobjdump("-sass", path))
    threads = sass.parse_max_threads(sass.cuobjdump("-elf", path))
    names = sass.demangle(resources)
    reports = []
    for mangled, res in sorted(resources.items(), key=lambda kv: ((kv[1].source or ""), names[kv[0]])):
        known = mangled in threads
        report = KernelReport("cuda", Path(res.source).name if res.source else Path(path).name,
                              _short_cuda_name(names[mangled]), variant="", shared_bytes=res.shared_bytes,
                              threads_per_block=threads.get(mangled, ASSUMED_THREADS), threads_known=known)
        reports.append(_fill_from_binary(report, res, opcodes.get(mangled, {})))
    return reports


def _short_cuda_name(readable: str) -> str:
    """``void litesam::(anonymous namespace)::nms_mask_kernel<float>(long, ...)`` -> ``nms_mask_kernel<float>``."""
    name = readable
    if name.startswith("void "):
        name = name[5:]
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # drop the parameter list: the first '(' outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not name.startswith("(anonymous", i):
            cut = i
            break
    name = name[:cut]
    return re.sub(r"^(?:[A-Za-z_][A-Za-z0-9_]*::|\(anonymous namespace\)::)+", "", name)


def parse_ttir_dots(ttir: str) -> List[Dict[str, str]]:
    """The ``tt.dot`` operations of a TTIR module: input precision (``ieee`` when not printed: MLIR
    omits the default) and the A operand's element type (``f32``, ``f16``, ``bf16``, ...)."""
    dots = []
    for line in ttir.splitlines():
        match = re.search(r"\btt\.dot(?:_scaled)?\s.*?:\s*tensor<(?:\d+x)+([a-z0-9]+)", line)
        if not match:
            continue
        precision = re.search(r"inputPrecision\s*=\s*(\w+)", line)
        dots.append({"precision": precision.group(1) if precision else "ieee", "operand": match.group(1)})
    return dots


def parse_ptxas_spills(log: str) -> Tuple[Optional[int], Optional[int]]:
    """(spill store bytes, spill load bytes) summed over ptxas -v's log, or (None, None) if absent."""
    found = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not found:
        return None, None
    return sum(int(s) for s, _ in found), sum(int(l) for _, l in found)


def _variant(entry) -> str:
    """Operand dtypes (the most common first, every other pointer by name: variants that differ only in one
    pointer's dtype get different labels), constexprs and options."""
    pointers = {name: t[1:].partition(":")[0] for name, t in entry.signature.items() if t.startswith("*")}
    counts = Counter(pointers.values())
    main = max(sorted(counts), key=counts.__getitem__) if counts else ""
    others = ", ".join(f"{name}={dtype}" for name, dtype in pointers.items() if dtype != main)
    dtypes = main + (f" ({others})" if others else "")
    consts = ", ".join(f"{k}={v}" for k, v in entry.constexprs.items())
    opts = ", ".join(f"{k}={v}" for k, v in entry.options.items())
    return "; ".join(part for part in (dtypes, consts, opts) if part)


def read_triton_kernel(entry, compiled, ptxas_log: str = "") -> KernelReport:
    """The report of one compiled AOT entry (``compiled``: triton's CompiledKernel for sm_90a)."""
    meta = compiled.metadata
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / f"{meta.name}.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        resources = sass.parse_resource_usage(sass.cuobjdump("-res-usage", str(cubin)))
        opcodes = sass.parse_sass(sass.cuobjdump("-sass", str(cubin)))
    name = meta.name if meta.name in resources else next(iter(resources))
    report = KernelReport("triton", entry.module, entry.name, _variant(entry), shared_bytes=int(meta.shared),
                          threads_per_block=32 * int(meta.num_warps))
    report.spill_store_bytes, report.spill_load_bytes = parse_ptxas_spills(ptxas_log)
    report.dots = parse_ttir_dots(compiled.asm.get("ttir", ""))
    return _fill_from_binary(report, resources[name], opcodes.get(name, {}))


def compile_and_read(module: str, index: int, arch: int = 90) -> dict:
    """Worker: compile entry ``index`` of kernel module ``module`` and read it (a dict, picklable)."""
    from litesam_kernels.triton import aot

    entry = aot.module_entries(module)[0][index]
    start = time.perf_counter()
    try:
        compiled, log = compile_with_ptxas_log(entry, arch)
    except Exception as exc:  # a compile failure is a finding, not a crash of the report
        return {"error": f"{entry.label}: {type(exc).__name__}: {str(exc).strip()[:2000]}"}
    report = read_triton_kernel(entry, compiled, log)
    report.compile_s = round(time.perf_counter() - start, 2)
    return {"report": dataclasses.asdict(report)}


def compile_with_ptxas_log(entry, arch: int = 90):
    """(CompiledKernel, ptxas -v log) of one AOT entry; the log is empty when Triton's cache served it."""
    from litesam_kernels.triton import aot
    import triton

    log = io.StringIO()
    previous = triton.knobs.nvidia.dump_ptxas_log
    triton.knobs.nvidia.dump_ptxas_log = True  # ptxas's log is printed to stdout while compiling: caught here
    try:
        with contextlib.redirect_stdout(log):
            compiled = aot.compile_entry(entry, arch)
    finally:
        triton.knobs.nvidia.dump_ptxas_log = previous
    return compiled, log.getvalue()


def triton_reports(modules: Sequence[str] = (), arch: int = 90, jobs: int = 1,
                   progress=print) -> Tuple[List[KernelReport], List[str]]:
    """(reports of every AOT entry of ``modules`` (default all), report-level failures: compile errors
    and ``@triton.jit`` kernels without an entry)."""
    from litesam_kernels.triton import aot

    tasks, failures = [], []
    for module in aot.kernel_modules(modules):
        entries, uncovered = aot.module_entries(module)
        tasks += [(module, e.index) for e in entries]
        failures += [f"triton:{module}.{name}: a @triton.jit kernel with no AOT_KERNELS entry" for name in uncovered]
    results: Dict[Tuple[str, int], dict] = {}

    def done(task, result):
        results[task] = result
        if "error" in result:
            progress(f"FAIL {result['error'].splitlines()[0]}")
        else:
            r = result["report"]
            progress(f"ok   triton:{r['module']}.{r['kernel']} [{r['variant']}] {r['compile_s']}s "
                     f"regs={r['registers']} smem={r['shared_bytes']} warps/SM={r['warps_per_sm']}")

    if jobs <= 1:
        for task in tasks:
            done(task, compile_and_read(*task, arch))
    else:
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(compile_and_read, *task, arch): task for task in tasks}
            for future in concurrent.futures.as_completed(futures):
                done(futures[future], future.result())
    reports = []
    for task in tasks:  # in declaration order, whatever order the workers finished in
        result = results[task]
        if "error" in result:
            failures.append(f"triton:{result['error']}")
        else:
            reports.append(KernelReport(**result["report"]))
    return reports, failures


# ------------------------------------------------------------------------------------------ the gate
def judge(report: KernelReport, strict_fp32: bool = False) -> KernelReport:
    """Fill ``report.failures`` (the CI gate) and ``report.warnings``."""
    report.failures, report.warnings = [], []
    ins = report.instructions
    local_traffic = ins.get("local_load", 0) + ins.get("local_store", 0)
    if report.stack_bytes or report.local_bytes or local_traffic or report.spill_store_bytes:
        spills = ("" if report.spill_store_bytes is None
                  else f"; ptxas: {report.spill_store_bytes} B spill stores, {report.spill_load_bytes} B spill loads")
        report.failures.append(
            f"local memory: {report.stack_bytes} B stack frame, {report.local_bytes} B local, "
            f"{ins.get('local_load', 0)} LDL / {ins.get('local_store', 0)} STL{spills} "
            "(spilled registers or a run-time-indexed array)")
    if report.blocks_per_sm == 0:
        report.failures.append(f"cannot launch on sm_90: {report.threads_per_block} threads, {report.registers} "
                               f"registers, {report.shared_bytes} B shared memory per block")
    tensor_core = ins.get("mma", 0) + ins.get("gmma", 0)
    if report.dots and tensor_core == 0:
        exact = all(d["precision"] == "ieee" and d["operand"] in EXACT_FP32_OPERANDS for d in report.dots)
        kinds = ", ".join(sorted({f"{d['operand']} {d['precision']}" for d in report.dots}))
        if exact:
            message = (f"tl.dot on FMA units by request ({kinds}: exact fp32, tensor cores cannot do it; "
                       "tf32x3 is about as accurate on tensor cores)")
            (report.failures if strict_fp32 else report.warnings).append(message)
        else:
            report.failures.append(f"tl.dot without tensor-core instructions ({kinds})")
    elif report.dots and ins.get("gmma", 0) == 0:
        report.warnings.append("tl.dot on warp-level mma.sync (HMMA), not wgmma (HGMMA): the slower Hopper path")
    if not report.threads_known:
        report.warnings.append(f"block size not in the binary (no __launch_bounds__): occupancy assumes "
                               f"{report.threads_per_block} threads")
    if 0 < report.warps_per_sm < LOW_OCCUPANCY_WARPS:
        report.warnings.append(f"{report.warps_per_sm} resident warps per SM (limited by {report.occupancy_limiter})")
    return report


# ------------------------------------------------------------------------------------------ output
def find_extension() -> Optional[Path]:
    """The built ``litesam_kernels/_C*.so`` (of the imported package), or None."""
    import importlib.util

    spec = importlib.util.find_spec("litesam_kernels")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("_C*.so")) + sorted(Path(folder).glob("_C*.pyd"))
        if found:
            return found[0]
    return None


def _display_path(path: Path) -> str:
    """``path`` relative to the repository when inside it (the kept report names no machine's folders)."""
    root = Path(__file__).resolve().parents[1]
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def _tool_versions() -> Dict[str, str]:
    versions = {}
    try:
        import triton

        versions["triton"] = triton.__version__
    except Exception:
        pass
    exe = sass.tool("cuobjdump")
    if exe:
        import subprocess

        out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
        release = re.search(r"release ([\d.]+)", out)
        versions["cuobjdump"] = release.group(1) if release else "?"
    return versions


def build_report(reports: List[KernelReport], failures: List[str], *, extension: Optional[str], arch: int,
                 strict_fp32: bool, seconds: float) -> dict:
    for r in reports:
        judge(r, strict_fp32)
    all_failures = list(failures) + [f"{r.label}: {f}" for r in reports for f in r.failures]
    all_warnings = [f"{r.label}: {w}" for r in reports for w in r.warnings]
    return {
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "arch": f"sm_{arch}a",
        "extension": extension,
        "tools": _tool_versions(),
        "limits": dataclasses.asdict(sass.SM90),
        "strict_fp32": strict_fp32,
        "seconds": round(seconds, 1),
        "summary": {
            "kernels": len(reports),
            "cuda": sum(r.source == "cuda" for r in reports),
            "triton": sum(r.source == "triton" for r in reports),
            "failures": len(all_failures),
            "warnings": len(all_warnings),
            "dot_kernels": sum(bool(r.dots) for r in reports),
            "dot_kernels_with_tensor_cores": sum(bool(r.dots) and (r.instructions.get("mma", 0)
                                                                   + r.instructions.get("gmma", 0)) > 0
                                                 for r in reports),
        },
        "failures": all_failures,
        "warnings": all_warnings,
        "kernels": [dataclasses.asdict(r) for r in reports],
    }


def _status(r: dict) -> str:
    if r["failures"]:
        return "**FAIL**: " + "; ".join(r["failures"])
    return "; ".join(r["warnings"]) if r["warnings"] else "ok"


def _kb(n: int) -> str:
    return f"{n / 1024:.1f}"


def _dots(k: dict) -> str:
    return ", ".join(sorted({f"{d['operand']} {d['precision']}" for d in k["dots"]})) or "-"


def _tensor_cores(k: dict) -> str:
    return ", ".join(f"`{o}`" for o in k["tensor_core_opcodes"]) or ("**none**" if k["dots"] else "-")


def _threads(k: dict) -> str:
    return f"{k['threads_per_block']}" + ("" if k["threads_known"] else " (assumed)")


def _atomics(k: dict) -> str:
    i = k["instructions"]
    return f"{i['atomic_global'] + i['atomic_generic']} / {i['atomic_shared']}"


def _per(a: str, b: str):
    return lambda k: f"{k['instructions'][a]} / {k['instructions'][b]}"


_COMMON_HEAD = [("regs", lambda k: k["registers"]), ("stack B", lambda k: k["stack_bytes"])]
_OCCUPANCY = ("warps/SM (limit)", lambda k: f"{k['warps_per_sm']} ({k['occupancy_limiter']})")
CUDA_COLUMNS = [("file", lambda k: k["module"]), ("kernel", lambda k: f"`{k['kernel']}`"), *_COMMON_HEAD,
                ("static smem KB", lambda k: _kb(k["shared_bytes"])), ("threads", _threads), _OCCUPANCY,
                ("LDG.128 / LDG", _per("ldg_128", "ldg")), ("STG.128 / STG", _per("stg_128", "stg")),
                ("POPC", lambda k: k["instructions"]["popc"]),
                ("atomics global / shared", _atomics),
                ("calls", lambda k: k["instructions"]["call"]), ("status", _status)]
TRITON_COLUMNS = [("module", lambda k: k["module"]), ("kernel", lambda k: f"`{k['kernel']}`"),
                  ("variant", lambda k: k["variant"]), *_COMMON_HEAD, ("smem KB", lambda k: _kb(k["shared_bytes"])),
                  _OCCUPANCY, ("tl.dot", _dots), ("tensor-core ops", _tensor_cores),
                  ("LDG.128 / LDG", _per("ldg_128", "ldg")), ("POPC", lambda k: k["instructions"]["popc"]),
                  ("atomics", lambda k: sum(k["instructions"][a] for a in ("atomic_global", "atomic_shared",
                                                                          "atomic_generic"))),
                  ("status", _status)]


def _table(title: str, kernels: List[dict], columns) -> List[str]:
    if not kernels:
        return []
    lines = [f"## {title}", "", "| " + " | ".join(h for h, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell(k)) for _, cell in columns) + " |" for k in kernels]
    return lines + [""]


def to_markdown(data: dict) -> str:
    s = data["summary"]
    lines = [
        "# Static GPU report",
        "",
        f"{data['arch']} machine code read without a GPU (`python -m benchmarks.static_gpu_report`), "
        f"{data['generated']}; tools: {', '.join(f'{k} {v}' for k, v in data['tools'].items())}. "
        f"Extension: `{data['extension'] or 'not found'}`.",
        "",
        f"**{s['kernels']} kernels** ({s['cuda']} CUDA, {s['triton']} Triton variants): "
        f"**{s['failures']} gate failure(s)**, {s['warnings']} warning(s); {s['dot_kernels_with_tensor_cores']} of "
        f"{s['dot_kernels']} `tl.dot` kernels use tensor cores.",
        "",
        "Occupancy: resident warps per SM on sm_90 (64 max) from registers (64K per SM, allocated per warp in "
        "units of 256), shared memory (228 KB per SM, +1 KB per block) and threads per block. CUDA shared memory "
        "is the static part only (dynamic shared memory is a launch argument). The gate fails on local memory "
        "(spills or run-time-indexed arrays), on a `tl.dot` kernel without tensor-core instructions (exact-fp32 "
        "`ieee` dots are warnings unless `--strict-fp32`), on a kernel that cannot launch, and on Triton "
        "compile errors or kernels without an AOT entry.",
        "",
    ]
    if data["failures"]:
        lines += ["## Gate failures", ""] + [f"- {f}" for f in data["failures"]] + [""]
    lines += _table("CUDA kernels", [k for k in data["kernels"] if k["source"] == "cuda"], CUDA_COLUMNS)
    lines += _table("Triton kernels (every AOT variant)", [k for k in data["kernels"] if k["source"] == "triton"],
                    TRITON_COLUMNS)
    return "\n".join(lines)


def write_report(data: dict, out_dir: Path) -> Dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "static_gpu_report.json", "md": out_dir / "static_gpu_report.md"}
    paths["json"].write_text(json.dumps(data, indent=1) + "\n")
    paths["md"].write_text(to_markdown(data) + "\n")
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.static_gpu_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("cuda", "triton"), help="report only the CUDA or only the Triton kernels")
    parser.add_argument("--modules", default="", help="comma-separated Triton kernel modules (default: all)")
    parser.add_argument("--extension", type=Path, help="the CUDA binary to read (default: litesam_kernels/_C*.so)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for static_gpu_report.{json,md}")
    parser.add_argument("--arch", type=int, default=90, help="compute capability of the Triton target")
    parser.add_argument("--jobs", type=int, default=max(1, min(os.cpu_count() or 1, 8)),
                        help="Triton compile processes (default: the CPU count, at most 8)")
    parser.add_argument("--strict-fp32", action="store_true", help="fail on exact-fp32 (ieee) tl.dot kernels too")
    parser.add_argument("--keep-cache", action="store_true",
                        help="use the usual Triton cache (default: an empty one, so everything really compiles)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.only != "cuda" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("the Triton part needs TRITON_INTERPRET=0 (interpreted kernels cannot be compiled)", file=sys.stderr)
        return 2
    if sass.tool("cuobjdump") is None:
        print("cuobjdump not found (it ships in the triton wheel under backends/nvidia/bin)", file=sys.stderr)
        return 2

    reports: List[KernelReport] = []
    failures: List[str] = []
    extension = None
    if args.only != "triton":
        path = args.extension or find_extension()
        if path is None:
            failures.append("cuda: no built extension litesam_kernels/_C*.so")
        else:
            extension = _display_path(path)
            cuda = read_cuda_binary(str(path))
            if not cuda:
                failures.append(f"cuda: {path} holds no sm_90 kernels (built without CUDA, or for other archs)")
            reports += cuda
            print(f"cuda: {len(cuda)} kernel(s) in {path}")
    if args.only != "cuda":
        with contextlib.ExitStack() as stack:
            if not args.keep_cache:
                os.environ["TRITON_CACHE_DIR"] = stack.enter_context(tempfile.TemporaryDirectory())
            modules = [m.strip() for m in args.modules.split(",") if m.strip()]
            try:
                triton, triton_failures = triton_reports(modules, args.arch, args.jobs)
            except ValueError as exc:  # an unknown --modules name
                parser.error(str(exc))
        reports += triton
        failures += triton_failures

    data = build_report(reports, failures, extension=extension, arch=args.arch, strict_fp32=args.strict_fp32,
                        seconds=time.perf_counter() - start)
    paths = write_report(data, args.out)
    s = data["summary"]
    print(f"{s['kernels']} kernel(s): {s['failures']} gate failure(s), {s['warnings']} warning(s); "
          f"{s['dot_kernels_with_tensor_cores']}/{s['dot_kernels']} dot kernels on tensor cores; "
          f"{data['seconds']} s; report: {paths['md']}")
    for failure in data["failures"]:
        print(f"GATE: {failure}", file=sys.stderr)
    return 1 if data["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
