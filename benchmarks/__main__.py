"""The benchmark suite, the project's main job: `python -m benchmarks [--device cuda|cpu] [--ops nms,...]`.

Runs every bench_<op>.py on the current device (CUDA when present, else CPU at smaller sizes), prints
one table and writes the rows as CSV and JSON (default: benchmarks/results/local/, or --out DIR), plus
one PNG chart per op beside them (``benchmarks/charts.py``; needs matplotlib, skipped without it). The files
are rewritten after every suite, so a run that is cut off keeps the rows of the suites that finished."""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import pkgutil
import re
import sys
import traceback
from pathlib import Path

import torch

import benchmarks
from benchmarks.charts import write_charts
from benchmarks.harness import RESULTS_DIR, device_name, format_table, write_rows


def available_suites():
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", default="all", help=f"comma-separated subset of: {', '.join(available_suites())}")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "local", help="folder for the CSV/JSON rows")
    parser.add_argument("--quick", action="store_true", help="only the smallest sizes")
    parser.add_argument("--no-charts", action="store_true", help="write no PNG charts")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but no CUDA device is visible")
    suites = available_suites() if args.ops == "all" else [s.strip() for s in args.ops.split(",") if s.strip()]
    unknown = sorted(set(suites) - set(available_suites()))
    if unknown:
        parser.error(f"unknown --ops {unknown}; available: {available_suites()}")
    if device.type != "cuda":
        print("No GPU: benchmarking the CPU implementations at smaller sizes (GPU numbers need a CUDA device).")
    print(f"device: {device_name(device)}")

    rows, failed, paths = [], [], None
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{device_name(device)}_{dt.date.today().isoformat()}")
    for suite in suites:
        module = importlib.import_module(f"benchmarks.bench_{suite}")
        print(f"[{suite}] running...", flush=True)
        try:
            suite_rows = module.run(device, quick=args.quick)
        except Exception:  # one broken suite must not cost the others' rows
            traceback.print_exc()
            failed.append(suite)
            continue
        rows += suite_rows
        print(format_table(suite_rows), flush=True)
        paths = write_rows(rows, args.out, stem)  # after every suite: a cut-off run keeps what finished
        if not args.no_charts:
            write_charts(suite_rows, args.out, stem)
    print(f"rows written to {paths['csv']} and {paths['json']}" if paths else "no rows")
    mismatched = [r for r in rows if r.matches_baseline is False]
    if mismatched:
        print(f"ERROR: {len(mismatched)} implementation(s) disagree with their baseline", file=sys.stderr)
    if failed:
        print(f"ERROR: suite(s) raised: {', '.join(failed)}", file=sys.stderr)
    return 1 if mismatched or failed else 0


if __name__ == "__main__":
    sys.exit(main())
