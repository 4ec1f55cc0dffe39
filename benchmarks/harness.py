"""The one benchmark harness: timing, reference checks, result rows (CSV/JSON) and the printed table.

On CUDA: ``triton.testing.do_bench`` (CUDA events) median with p20/p80, warm-up excluded. On CPU: a
perf_counter loop with the same statistics. Every implementation's output is checked against the
baseline's before it is timed; a row records whether it matched.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

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
    versions: str = field(default_factory=versions)
    timestamp: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


# H200 figures of ../shared/design/PERFORMANCE.md; on a GPU the copy bandwidth is measured in the same run.
H200_COPY_GBPS = 4247.0
H200_PEAK_TFLOPS = {"bf16": 686.0, "fp16": 686.0, "tf32": 343.0, "fp32": 51.0}


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


@dataclass
class Implementation:
    name: str
    fn: Callable[[], object]
    skip_reason: Optional[str] = None


def backend_implementations(
    op_name: str,
    device: torch.device,
    call: Callable[[], object],
    *,
    label: str = "",
    not_timed: Optional[Callable[[str], Optional[str]]] = None,
    backends: Sequence[str] = ("cuda", "triton", "cpu", "reference"),
) -> List[Implementation]:
    """One row per backend of ``op_name``: ``call()`` run under ``use_backend(backend)``, skipped with the
    reason where that backend cannot run on ``device``. The Triton interpreter is never timed (it is a test
    tool), and ``not_timed(backend)`` may name a reason to skip a backend (e.g. a reference too slow here)."""
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

        impls.append(Implementation(f"litesam-{backend}{label}", fn, reason))
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
    floor: Optional[Floor] = None,
) -> List[Row]:
    """Time the baseline and every implementation; check each against the baseline's output first.
    With ``floor``, every timed row carries ``floor_ms`` and ``pct_of_floor``."""
    rows = _compare(op, shape, dtype, device, baseline, implementations, matches, note)
    if floor is not None:
        floor_ms = floor.ms()
        for row in rows:
            row.floor_ms = floor_ms
            if row.median_ms:
                row.pct_of_floor = 100.0 * floor_ms / row.median_ms
    return rows


def _compare(op, shape, dtype, device, baseline, implementations, matches, note) -> List[Row]:
    dev = device_name(device)
    dtype_name = str(dtype).replace("torch.", "")
    expected = baseline.fn()
    synchronize(device)
    base_median, base_p20, base_p80 = time_ms(baseline.fn, device)
    rows = [Row(op, baseline.name, shape, dtype_name, dev, base_median, base_p20, base_p80, baseline.name,
                base_median, 1.0, True, note)]
    for impl in implementations:
        if impl.skip_reason:
            rows.append(Row(op, impl.name, shape, dtype_name, dev, None, None, None, baseline.name, base_median,
                            None, None, f"skipped: {impl.skip_reason}"))
            continue
        got = impl.fn()
        synchronize(device)
        ok = bool(matches(got, expected))
        if not ok:
            rows.append(Row(op, impl.name, shape, dtype_name, dev, None, None, None, baseline.name, base_median,
                            None, False, "output differs from the baseline: not timed"))
            continue
        median, p20, p80 = time_ms(impl.fn, device)
        rows.append(Row(op, impl.name, shape, dtype_name, dev, median, p20, p80, baseline.name, base_median,
                        base_median / median if median > 0 else None, True, note))
    return rows


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
    header = ("op", "impl", "shape", "dtype", "median ms", "p20", "p80", "vs baseline", "match", "note")
    lines = [header]
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    for r in rows:
        speed = "-" if r.speedup is None else f"{r.speedup:.2f}x {r.baseline}"
        match = "-" if r.matches_baseline is None else ("yes" if r.matches_baseline else "NO")
        lines.append((r.op, r.impl, r.shape, r.dtype, fmt(r.median_ms), fmt(r.p20_ms), fmt(r.p80_ms), speed, match, r.note))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = [" | ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)
