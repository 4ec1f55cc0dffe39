"""Reading NVIDIA GPU binaries without a GPU: cuobjdump's resource and SASS listings, sm_90 occupancy.

The static GPU report (``benchmarks/static_gpu_report.py``) runs the triton wheel's ``cuobjdump`` on the
built extension and on each Triton kernel's cubin; this module turns its text into numbers:

- ``parse_resource_usage``: registers, stack frame, static shared and local memory per function
  (``cuobjdump -res-usage``);
- ``parse_sass`` / ``instruction_classes``: opcode counts per function (``cuobjdump -sass``), grouped
  into the classes the kernels are designed around (tensor-core MMA/GMMA, global-load widths, POPC,
  atomics, local-memory traffic, ...);
- ``parse_max_threads``: the block size fixed by ``__launch_bounds__`` / ``reqntid`` (``cuobjdump -elf``);
- ``occupancy``: resident blocks and warps per SM on sm_90 from registers, shared memory and block size,
  as NVIDIA's occupancy calculator computes them.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple


# ------------------------------------------------------------------------------------------ the tools
def tool(name: str) -> Optional[str]:
    """Path of ``cuobjdump`` / ``nvdisasm`` / ``ptxas``: the triton wheel's copy first (it is what CI has),
    then PATH and ``$CUDA_HOME/bin``; None if there is none."""
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if bundled.exists():
            return str(bundled)
    except Exception:  # triton missing or broken: fall back to a toolkit
        pass
    import os

    found = shutil.which(name)
    if found:
        return found
    candidate = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / name
    return str(candidate) if candidate.exists() else None


def cuobjdump(flag: str, path: str) -> str:
    """``cuobjdump <flag> <path>`` (stdout); raises RuntimeError with its stderr on failure."""
    exe = tool("cuobjdump")
    if exe is None:
        raise RuntimeError("cuobjdump not found (it ships in the triton wheel under backends/nvidia/bin)")
    done = subprocess.run([exe, flag, path], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cuobjdump {flag} {path} failed ({done.returncode}): {done.stderr.strip()[:500]}")
    return done.stdout


def demangle(names: Iterable[str]) -> Dict[str, str]:
    """Mangled C++ name -> readable name (``c++filt`` when present, else unchanged)."""
    names = list(names)
    exe = shutil.which("c++filt")
    if not names or exe is None:
        return {n: n for n in names}
    done = subprocess.run([exe], input="\n".join(names), capture_output=True, text=True)
    readable = done.stdout.splitlines() if done.returncode == 0 else []
    return {n: (readable[i] if i < len(readable) else n) for i, n in enumerate(names)}


# ------------------------------------------------------------------------------------------ listings
def _split_by_arch(text: str) -> List[Tuple[Optional[str], str]]:
    """(arch, text) per embedded ELF of a fat binary listing; a bare cubin gives one block."""
    parts = re.split(r"^Fatbin elf code:\s*$", text, flags=re.MULTILINE)
    blocks = []
    for part in parts:
        if not part.strip():
            continue
        arch = re.search(r"^arch = (\S+)", part, flags=re.MULTILINE)
        if arch is None:
            arch = re.search(r"^\s*\.target\s+(\S+)", part, flags=re.MULTILINE)
        blocks.append((arch.group(1) if arch else None, part))
    return blocks


def _arch_blocks(text: str, arch: Optional[str]) -> Iterable[str]:
    """The ELF blocks of ``text`` for ``arch`` (default: ``pick_arch`` of those present)."""
    blocks = _split_by_arch(text)
    arch = arch or pick_arch(a for a, _ in blocks)
    return [block for block_arch, block in blocks if arch is None or block_arch is None or block_arch == arch]


def pick_arch(archs: Iterable[Optional[str]], preferred: Tuple[str, ...] = ("sm_90a", "sm_90")) -> Optional[str]:
    """The architecture to report on: sm_90a (H100/H200 with wgmma) if built, else sm_90, else the first."""
    archs = [a for a in archs]
    for want in preferred:
        if want in archs:
            return want
    return archs[0] if archs else None


@dataclass(frozen=True)
class Resources:
    registers: int
    stack_bytes: int
    shared_bytes: int  # static shared memory only (dynamic shared memory is a launch argument)
    local_bytes: int
    source: Optional[str] = None  # the compiled file (``identifier`` of the fat binary's ELF), if listed


def parse_resource_usage(text: str, arch: Optional[str] = None) -> Dict[str, Resources]:
    """``cuobjdump -res-usage`` -> {mangled function: Resources}, for ``arch`` (default: ``pick_arch``)."""
    out: Dict[str, Resources] = {}
    for block in _arch_blocks(text, arch):
        source = re.search(r"^identifier = (.+)$", block, flags=re.MULTILINE)
        for name, fields in re.findall(r"^\s*Function (\S+):\s*\n\s*(REG:.*)$", block, flags=re.MULTILINE):
            values = dict(re.findall(r"([A-Z]+(?:\[\d+\])?):(\d+)", fields))
            out[name] = Resources(int(values.get("REG", 0)), int(values.get("STACK", 0)),
                                  int(values.get("SHARED", 0)), int(values.get("LOCAL", 0)),
                                  source.group(1).strip() if source else None)
    return out


_SASS_LINE = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)")


def parse_sass(text: str, arch: Optional[str] = None) -> Dict[str, Counter]:
    """``cuobjdump -sass`` -> {mangled function: Counter of full opcodes (``LDG.E.128``, ``HGMMA.64x64x16.F32``)}."""
    out: Dict[str, Counter] = {}
    for block in _arch_blocks(text, arch):
        current: Optional[Counter] = None
        for line in block.splitlines():
            function = re.match(r"^\s*Function : (\S+)", line)
            if function:
                current = out.setdefault(function.group(1), Counter())
                continue
            match = _SASS_LINE.match(line)
            if match and current is not None:
                current[match.group(1)] += 1
    return out


def parse_max_threads(text: str) -> Dict[str, int]:
    """``cuobjdump -elf`` -> {mangled function: threads per block fixed at compile time}
    (EIATTR_REQNTID from ``reqntid``, else EIATTR_MAX_THREADS from ``__launch_bounds__``)."""
    out: Dict[str, int] = {}
    for section in re.split(r"^\.nv\.info\.", text, flags=re.MULTILINE)[1:]:
        name = section.split(None, 1)[0]
        found = {}
        pattern = r"Attribute:\s*(EIATTR_REQNTID|EIATTR_MAX_THREADS)\s*\n\s*Format:.*\n\s*Value:\s*(.*)"
        for attr, values in re.findall(pattern, section):
            dims = [int(v, 16) for v in values.split()]
            threads = 1
            for d in dims[:3]:
                threads *= max(d, 1)
            found[attr] = threads
        threads = found.get("EIATTR_REQNTID", found.get("EIATTR_MAX_THREADS"))
        if threads:
            out[name] = threads
    return out


# ------------------------------------------------------------------------------------------ classes
TENSOR_CORE_WARP = ("HMMA", "IMMA", "DMMA", "BMMA", "QMMA", "OMMA")  # mma.sync (one warp)
TENSOR_CORE_WARPGROUP = ("HGMMA", "IGMMA", "QGMMA", "BGMMA")  # wgmma (a warpgroup of 4 warps; sm_90)
GLOBAL_ATOMICS = ("ATOMG", "RED", "REDG")
BULK_COPY = ("UTMALDG", "UTMASTG", "UTMAPF", "UBLKCP", "UBLKRED", "UBLKPF")  # the tensor/bulk copy engine


def _access_bits(opcode: str) -> int:
    """Bits per thread of a global load/store opcode: LDG.E.128 -> 128, LDG.E.U8 -> 8, LDG.E -> 32."""
    mods = set(opcode.split(".")[1:])
    for bits in (128, 64):
        if str(bits) in mods:
            return bits
    if mods & {"U16", "S16"}:
        return 16
    if mods & {"U8", "S8"}:
        return 8
    return 32


def instruction_classes(opcodes: Counter) -> Dict[str, int]:
    """The instruction classes the report shows (every key present, zero when absent)."""
    base = Counter()
    for opcode, n in opcodes.items():
        base[opcode.split(".")[0]] += n
    classes = {
        "total": sum(opcodes.values()),
        "mma": sum(base[o] for o in TENSOR_CORE_WARP),
        "gmma": sum(base[o] for o in TENSOR_CORE_WARPGROUP),
        "ldg": base["LDG"],
        "ldg_128": 0, "ldg_64": 0, "ldg_32": 0, "ldg_narrow": 0,
        "stg": base["STG"],
        "stg_128": 0,
        "bulk_copy": sum(base[o] for o in BULK_COPY),
        "cp_async": base["LDGSTS"],
        "popc": base["POPC"] + base["UPOPC"],
        "atomic_global": sum(base[o] for o in GLOBAL_ATOMICS),
        "atomic_shared": base["ATOMS"],
        "atomic_generic": base["ATOM"],
        "local_load": base["LDL"],
        "local_store": base["STL"],
        "shared_load": base["LDS"] + base["LDSM"],
        "shared_store": base["STS"] + base["STSM"],
        "barrier": base["BAR"],
        "shuffle": base["SHFL"],
        "warp_reduce": base["REDUX"],  # warp-wide integer reductions (e.g. packing 32 mask bits into a word)
        "call": base["CALL"],
        "fp64": sum(n for o, n in base.items() if o in ("DFMA", "DADD", "DMUL", "DSETP", "DMNMX")),
        "mufu": base["MUFU"],
    }
    for opcode, n in opcodes.items():
        op = opcode.split(".")[0]
        if op == "LDG":
            bits = _access_bits(opcode)
            classes["ldg_128" if bits == 128 else "ldg_64" if bits == 64 else "ldg_32" if bits == 32
                    else "ldg_narrow"] += n
        elif op == "STG" and _access_bits(opcode) == 128:
            classes["stg_128"] += n
    return classes


def tensor_core_opcodes(opcodes: Counter) -> List[str]:
    """The distinct tensor-core opcodes (e.g. ``HGMMA.64x64x16.F32.BF16``), for the report's text."""
    wanted = TENSOR_CORE_WARP + TENSOR_CORE_WARPGROUP
    return sorted(o for o in opcodes if o.split(".")[0] in wanted)


# ------------------------------------------------------------------------------------------ occupancy
@dataclass(frozen=True)
class SMLimits:
    """Per-SM limits of compute capability 9.0 (H100/H200), as in NVIDIA's occupancy calculator."""

    registers: int = 65536
    register_unit: int = 256  # registers are allocated per warp in units of 256
    max_registers_per_thread: int = 255
    shared_bytes: int = 233472  # 228 KB with the largest carve-out
    max_shared_per_block: int = 232448  # 227 KB opt-in
    reserved_shared_per_block: int = 1024  # the runtime's own share of every block
    shared_unit: int = 128
    max_warps: int = 64
    max_blocks: int = 32
    max_threads_per_block: int = 1024


SM90 = SMLimits()


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def occupancy(registers: int, shared_bytes: int, threads_per_block: int, limits: SMLimits = SM90) -> dict:
    """Resident blocks and warps per SM and which resource limits them (``limiter``: registers,
    shared, warps or blocks; ``cannot launch`` when one block does not fit)."""
    warps_per_block = -(-threads_per_block // 32)
    if (threads_per_block > limits.max_threads_per_block or registers > limits.max_registers_per_thread
            or shared_bytes > limits.max_shared_per_block or warps_per_block == 0):
        return {"blocks_per_sm": 0, "warps_per_sm": 0, "limiter": "cannot launch"}
    by = {"warps": limits.max_warps // warps_per_block, "blocks": limits.max_blocks}
    if registers > 0:
        per_warp = _round_up(registers * 32, limits.register_unit)
        by["registers"] = (limits.registers // per_warp) // warps_per_block
    per_block_shared = _round_up(shared_bytes + limits.reserved_shared_per_block, limits.shared_unit)
    by["shared"] = limits.shared_bytes // per_block_shared
    # On a tie, name the hardware cap first: at 64 resident warps nothing else matters.
    limiter = min(by, key=lambda k: (by[k], ("warps", "blocks", "registers", "shared").index(k)))
    blocks = by[limiter]
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * warps_per_block,
            "limiter": limiter if blocks > 0 else "cannot launch"}
