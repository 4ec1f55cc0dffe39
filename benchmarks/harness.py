"""The one benchmark harness: timing, reference checks, floors, result rows (CSV/JSON) and the printed table.

On CUDA: ``triton.testing.do_bench`` (CUDA events) median with p20/p80, warm-up excluded. On CPU: a
perf_counter loop with the same statistics. Every implementation's output is checked against the
baseline's before it is timed; a row records whether it matched.

Floors: a benchmark passes ``compare(..., floor=Floor(bytes_moved=..., flops=...))`` (or a function of the
baseline's output that returns one, for outputs whose size is data-dependent, e.g. RLE counts or keep
lists; an ``Implementation`` may carry its own, e.g. for packed input). Every row then carries
``floor_ms`` (bytes / copy bandwidth, or FLOPs / peak rate, whichever is larger), ``pct_of_floor``
(100 * floor / median) and ``achieved_gbps`` (bytes / median). The ceilings are measured once per process on
the device that runs (``measured_ceilings``: a large device-to-device copy and large matrix products on a GPU;
a memcpy and an fp32 matmul on the CPU); ``row.ceilings`` says which ceilings a row used.

Memory: on CUDA every row carries ``peak_cuda_mib``, the allocator's peak during the checked call beyond the
memory allocated when it began (``call_with_peak``).
"""
from __future__ import annotations

import csv
import datetime as _dt
import functools
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch

from litesam_kernels._backend import BackendUnavailableError

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} threads)"


def versions() -> str:
    import litesam_kernels

    parts = [f"torch {torch.__version__}", f"litesam_kernels {litesam_kernels.__version__}"]
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except Exception:
        pass
    return ", ".join(parts)


@dataclass
class Row:
    op: str
    impl: str
    shape: str
    dtype: str
    device: str
    median_ms: Optional[float]
    p20_ms: Optional[float]
    p80_ms: Optional[float]
    baseline: str
    baseline_median_ms: Optional[float]
    speedup: Optional[float]  # baseline median / this median
    matches_baseline: Optional[bool]
    note: str = ""
    floor_ms: Optional[float] = None  # the physical floor of this case on this device (see Floor)
    pct_of_floor: Optional[float] = None  # 100 * floor_ms / median_ms
    achieved_gbps: Optional[float] = None  # the floor's bytes / median: bandwidth this row reached
    copy_gbps: Optional[float] = None  # the copy bandwidth the floor was computed with
    ceilings: str = ""  # where the copy bandwidth / peak rates come from (measured here, or constants)
    peak_cuda_mib: Optional[float] = None  # CUDA: max_memory_allocated during one call, beyond what it began with
    versions: str = field(default_factory=versions)
    timestamp: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def call_with_peak(fn: Callable[[], object], device: torch.device):
    """(fn(), peak MiB): on CUDA the caching allocator's peak of live tensors during the call, beyond the memory
    allocated when it began (``torch.cuda.max_memory_allocated``); None elsewhere."""
    if device.type != "cuda":
        return fn(), None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    return result, (torch.cuda.max_memory_allocated(device) - start) / 2**20


def time_ms(fn: Callable[[], object], device: torch.device, *, min_time_s: float = 0.2, max_reps: int = 200):
    """(median, p20, p80) in milliseconds of fn(), after a warm-up call."""
    fn()
    synchronize(device)
    if device.type == "cuda":
        import triton.testing

        median, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.2, 0.8])
        return float(median), float(p20), float(p80)
    samples: List[float] = []
    start_all = time.perf_counter()
    while len(samples) < max_reps and (len(samples) < 3 or time.perf_counter() - start_all < min_time_s):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    quantile = lambda q: samples[min(len(samples) - 1, int(q * (len(samples) - 1) + 0.5))]  # noqa: E731
    return statistics.median(samples), quantile(0.2), quantile(0.8)


# H200 figures of ../shared/design/PERFORMANCE.md; rows use the ceilings measured on the device that runs.
H200_COPY_GBPS = 4247.0
H200_PEAK_TFLOPS = {"bf16": 686.0, "fp16": 686.0, "tf32": 343.0, "fp32": 51.0}


@dataclass(frozen=True)
class Ceilings:
    """Copy bandwidth (bytes read + written per second) and peak matmul rates per dtype of one device."""

    copy_gbps: float
    peak_tflops: Dict[str, float]
    source: str


H200_CEILINGS = Ceilings(H200_COPY_GBPS, dict(H200_PEAK_TFLOPS), "H200 constants (PERFORMANCE.md)")
CPU_COPY_BYTES = 64 << 20  # larger than a CPU's last-level cache
GPU_COPY_BYTES = 1 << 30  # 1 GiB each way: far larger than the H200's 60 MB L2


def _matmul_tflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)  # random, never zeros (METHOD.md)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    median, _, _ = time_ms(lambda: torch.mm(a, b), device, min_time_s=0.05, max_reps=20)
    return 2.0 * n ** 3 / (median * 1e-3) / 1e12


@functools.lru_cache(maxsize=None)
def _measure(device_str: str) -> Ceilings:
    device = torch.device(device_str)
    nbytes = GPU_COPY_BYTES if device.type == "cuda" else CPU_COPY_BYTES
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    median, _, _ = time_ms(lambda: dst.copy_(src), device, min_time_s=0.1, max_reps=50)
    copy_gbps = 2.0 * nbytes / (median * 1e-3) / 1e9
    del src, dst
    if device.type == "cuda":
        peaks = {"bf16": _matmul_tflops(device, torch.bfloat16, 8192),
                 "fp16": _matmul_tflops(device, torch.float16, 8192)}
        tf32 = torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            peaks["fp32"] = _matmul_tflops(device, torch.float32, 4096)
            torch.backends.cuda.matmul.allow_tf32 = True
            peaks["tf32"] = _matmul_tflops(device, torch.float32, 8192)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        return Ceilings(copy_gbps, peaks, f"measured here: copy {copy_gbps:.0f} GB/s, bf16 {peaks['bf16']:.0f} TFLOP/s")
    fp32 = _matmul_tflops(device, torch.float32, 1024)
    peaks = {"fp32": fp32, "tf32": fp32, "bf16": fp32, "fp16": fp32}  # the CPU has no faster 16-bit path here
    return Ceilings(copy_gbps, peaks, f"measured here: copy {copy_gbps:.0f} GB/s, fp32 matmul {fp32:.2f} TFLOP/s")


def measured_ceilings(device: torch.device) -> Ceilings:
    """This device's ceilings, measured once per process (about 0.1 s on a GPU, 0.5 s on a CPU)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _measure(str(device))


@dataclass(frozen=True)
class Floor:
    """The least work a case must do: bytes that must move (inputs read once, outputs written once) and the
    FLOPs of its math at the peak rate of ``flops_dtype``. The floor is the larger of the two times."""

    bytes_moved: float = 0.0
    flops: float = 0.0
    flops_dtype: str = "bf16"

    def ms(self, copy_gbps: float = H200_COPY_GBPS, peak_tflops: Optional[Dict[str, float]] = None) -> float:
        peaks = peak_tflops or H200_PEAK_TFLOPS
        memory_ms = self.bytes_moved / (copy_gbps * 1e9) * 1e3
        math_ms = self.flops / (peaks[self.flops_dtype] * 1e12) * 1e3 if self.flops else 0.0
        return max(memory_ms, math_ms)


# A floor, or a function of the baseline's output that gives one (when the output size is data-dependent).
FloorSpec = Union[Floor, Callable[[object], Floor]]


@dataclass
class Implementation:
    name: str
    fn: Callable[[], object]
    skip_reason: Optional[str] = None
    floor: Optional[FloorSpec] = None  # this implementation's own floor (e.g. it reads packed input)


def backend_implementations(
    op_name: str,
    device: torch.device,
    call: Callable[[], object],
    *,
    label: str = "",
    not_timed: Optional[Callable[[str], Optional[str]]] = None,
    backends: Sequence[str] = ("cuda", "triton", "cpu", "reference"),
    floor: Optional[FloorSpec] = None,
) -> List[Implementation]:
    """One row per backend of ``op_name``: ``call()`` run under ``use_backend(backend)``, skipped with the
    reason where that backend cannot run on ``device``. The Triton interpreter is never timed (it is a test
    tool), and ``not_timed(backend)`` may name a reason to skip a backend (e.g. a reference too slow here).
    ``floor``: the rows' own floor when it differs from the case's (see ``Implementation.floor``)."""
    from litesam_kernels import _backend, use_backend

    op = _backend.implementations(op_name)
    impls = []
    for backend in backends:
        if device.type != "cuda" and backend in ("cuda", "triton"):
            continue
        reason = _backend.why_not(backend, op, device) or (not_timed(backend) if not_timed else None)

        def fn(backend=backend):
            with use_backend(backend):
                return call()

        impls.append(Implementation(f"litesam-{backend}{label}", fn, reason, floor))
    return impls


def compare(
    op: str,
    shape: str,
    dtype: torch.dtype,
    device: torch.device,
    baseline: Implementation,
    implementations: Sequence[Implementation],
    matches: Callable[[object, object], bool],
    note: str = "",
    floor: Optional[FloorSpec] = None,
    ceilings: Optional[Ceilings] = None,
) -> List[Row]:
    """Time the baseline and every implementation; check each against the baseline's output first.

    With ``floor`` (a ``Floor``, or a function of the baseline's output returning one) every row carries
    ``floor_ms``, ``pct_of_floor`` and ``achieved_gbps``, computed with ``ceilings`` (default: measured on
    ``device``, ``measured_ceilings``). An implementation that rejects the input (``TypeError``,
    ``ValueError``, ``NotImplementedError``, ``BackendUnavailableError``: e.g. a dtype its backend does not
    take) gets a row saying so instead of a time."""
    dev = device_name(device)
    dtype_name = str(dtype).replace("torch.", "")
    expected, base_peak = call_with_peak(baseline.fn, device)
    if floor is not None or any(impl.floor is not None for impl in implementations):
        ceilings = ceilings or measured_ceilings(device)

    def row(impl: Implementation, median=None, p20=None, p80=None, matched=None, row_note=note, peak=None) -> Row:
        speedup = 1.0 if impl is baseline else (base_median / median if median else None)
        r = Row(op, impl.name, shape, dtype_name, dev, median, p20, p80, baseline.name, base_median, speedup,
                matched, row_note, peak_cuda_mib=peak)
        spec = impl.floor if impl.floor is not None else floor
        if spec is not None:
            _set_floor(r, spec(expected) if callable(spec) else spec, ceilings)
        return r

    base_median, base_p20, base_p80 = time_ms(baseline.fn, device)
    rows = [row(baseline, base_median, base_p20, base_p80, True, peak=base_peak)]
    for impl in implementations:
        if impl.skip_reason:
            rows.append(row(impl, row_note=f"skipped: {impl.skip_reason}"))
            continue
        try:
            got, peak = call_with_peak(impl.fn, device)
        except REJECTIONS as exc:
            rows.append(row(impl, row_note=f"not run: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
            continue
        if not matches(got, expected):
            rows.append(row(impl, matched=False, row_note="output differs from the baseline: not timed", peak=peak))
            continue
        median, p20, p80 = time_ms(impl.fn, device)
        rows.append(row(impl, median, p20, p80, True, peak=peak))
    return rows


def _set_floor(row: Row, floor: Floor, ceilings: Ceilings) -> None:
    row.floor_ms = floor.ms(ceilings.copy_gbps, ceilings.peak_tflops)
    row.copy_gbps = ceilings.copy_gbps
    row.ceilings = ceilings.source
    if row.median_ms:
        row.pct_of_floor = 100.0 * row.floor_ms / row.median_ms
        row.achieved_gbps = floor.bytes_moved / (row.median_ms * 1e-3) / 1e9


# What an implementation raises when it does not take an input (a dtype its backend lacks, say): reported.
REJECTIONS = (TypeError, ValueError, NotImplementedError, BackendUnavailableError)


def write_rows(rows: Sequence[Row], out_dir: Path, stem: str) -> Dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"
    records = [asdict(r) for r in rows]
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0].keys()) if records else ["op"])
        writer.writeheader()
        writer.writerows(records)
    json_path.write_text(json.dumps(records, indent=1))
    return {"csv": csv_path, "json": json_path}


def format_table(rows: Sequence[Row]) -> str:
    header = ("op", "impl", "shape", "dtype", "median ms", "p20", "p80", "vs baseline", "match", "% of floor", "GB/s",
              "note")
    lines = [header]
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    for r in rows:
        speed = "-" if r.speedup is None else f"{r.speedup:.2f}x {r.baseline}"
        match = "-" if r.matches_baseline is None else ("yes" if r.matches_baseline else "NO")
        lines.append((r.op, r.impl, r.shape, r.dtype, fmt(r.median_ms), fmt(r.p20_ms), fmt(r.p80_ms), speed, match,
                      fmt(r.pct_of_floor), fmt(r.achieved_gbps), r.note))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = [" | ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)
