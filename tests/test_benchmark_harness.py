"""The benchmark harness (benchmarks/harness.py), its charts, the suite runner, gpu_check.sh's staging and
the device wheels.

Floors and rows are checked with injected ceilings (exact arithmetic); the measured ceilings, the charts
and one op benchmark (ppn_decode, every dtype) run for real on the CPU; gpu_check.sh runs its dry run and
its self-test (the stage machinery on dummy commands) here, build_device_wheels.sh its dry run."""
import csv
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from benchmarks import __main__ as bench_main
from benchmarks import bench_nms, bench_ppn_decode, charts, harness
from benchmarks.harness import Ceilings, Floor, Implementation, Row, compare

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
CEILINGS = Ceilings(copy_gbps=100.0, peak_tflops={"fp32": 2.0, "bf16": 4.0, "fp16": 4.0, "tf32": 2.0}, source="test")


def _compare(impls, floor=None, baseline=None, matches=torch.equal):
    baseline = baseline or Implementation("base", lambda: torch.arange(10))
    return compare("op", "shape", torch.float32, CPU, baseline, impls, matches, note="n", floor=floor,
                   ceilings=CEILINGS)


# ------------------------------------------------------------------------------------------ floors
def test_floor_is_the_larger_of_bytes_and_flops():
    assert Floor(bytes_moved=1e9).ms(copy_gbps=1000.0) == pytest.approx(1.0)
    assert Floor(bytes_moved=1e9, flops=4e12, flops_dtype="bf16").ms(1000.0, {"bf16": 1.0}) == pytest.approx(4000.0)
    assert Floor(bytes_moved=1e9, flops=1e6).ms(1000.0) == pytest.approx(1.0)  # the bytes dominate
    assert Floor(bytes_moved=4247e6).ms() == pytest.approx(1.0)  # H200 copy bandwidth by default


def test_every_row_carries_floor_percent_and_bandwidth():
    rows = _compare([Implementation("same", lambda: torch.arange(10))], floor=Floor(bytes_moved=2e6))
    for row in rows:
        assert row.floor_ms == pytest.approx(2e6 / 100e9 * 1e3)  # 0.02 ms at 100 GB/s
        assert row.pct_of_floor == pytest.approx(100 * row.floor_ms / row.median_ms)
        assert row.achieved_gbps == pytest.approx(2e6 / (row.median_ms * 1e-3) / 1e9)
        assert row.copy_gbps == 100.0 and row.ceilings == "test"
    assert rows[0].speedup == 1.0 and rows[1].matches_baseline is True


def test_a_floor_can_depend_on_the_baseline_output_and_an_implementation_can_have_its_own():
    seen = []

    def floor(output):
        seen.append(output)
        return Floor(bytes_moved=8 * output.numel())

    rows = _compare([Implementation("own", lambda: torch.arange(10), floor=Floor(bytes_moved=1e9)),
                     Implementation("case", lambda: torch.arange(10))], floor=floor)
    assert torch.equal(seen[0], torch.arange(10))
    assert rows[0].floor_ms == pytest.approx(80 / 100e9 * 1e3)
    assert rows[1].floor_ms == pytest.approx(1e9 / 100e9 * 1e3)
    assert rows[2].floor_ms == rows[0].floor_ms


def test_rows_without_a_time_keep_the_floor_but_no_percent():
    rows = _compare([Implementation("skipped", lambda: None, skip_reason="not here"),
                     Implementation("wrong", lambda: torch.zeros(10))], floor=Floor(bytes_moved=1e6))
    assert rows[1].note == "skipped: not here" and rows[1].median_ms is None and rows[1].pct_of_floor is None
    assert rows[2].matches_baseline is False and "not timed" in rows[2].note
    assert rows[1].floor_ms == rows[2].floor_ms == rows[0].floor_ms


@pytest.mark.parametrize("error", [TypeError("takes float32 logits"), ValueError("bad"),
                                   NotImplementedError("no half kernel")])
def test_an_implementation_that_rejects_the_input_gets_a_row_saying_so(error):
    def rejects():
        raise error

    rows = _compare([Implementation("rejects", rejects), Implementation("fine", lambda: torch.arange(10))])
    assert rows[1].note.startswith(f"not run: {type(error).__name__}") and rows[1].median_ms is None
    assert rows[1].matches_baseline is None and rows[2].matches_baseline is True


def test_a_crash_is_not_a_rejection():
    def crashes():
        raise RuntimeError("illegal memory access")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        _compare([Implementation("crashes", crashes)])


def test_measured_ceilings_on_cpu_are_positive_and_cached():
    first = harness.measured_ceilings(CPU)
    assert first.copy_gbps > 0 and all(v > 0 for v in first.peak_tflops.values())
    assert set(first.peak_tflops) == {"fp32", "tf32", "bf16", "fp16"} and first.source.startswith("measured here")
    assert harness.measured_ceilings(CPU) is first


def test_rows_stay_constructible_positionally_as_other_benchmarks_build_them():
    row = Row("op", "impl", "shape", "float32", "dev", 1.0, 0.9, 1.1, "base", 2.0, 2.0, True, "note")
    assert row.floor_ms is None and row.achieved_gbps is None and row.ceilings == ""


def test_backend_implementations_pass_the_floor_through():
    floor = Floor(bytes_moved=1.0)
    impls = harness.backend_implementations("batched_nms", CPU, lambda: None, floor=floor)
    assert {i.name for i in impls} == {"litesam-cpu", "litesam-reference"} and all(i.floor is floor for i in impls)


def test_written_rows_have_the_floor_columns(tmp_path):
    rows = _compare([Implementation("same", lambda: torch.arange(10))], floor=Floor(bytes_moved=1e6))
    paths = harness.write_rows(rows, tmp_path, "stem")
    header = next(csv.reader(open(paths["csv"])))
    assert {"floor_ms", "pct_of_floor", "achieved_gbps", "copy_gbps", "ceilings"} <= set(header)
    assert json.loads(paths["json"].read_text())[1]["ceilings"] == "test"
    assert "% of floor" in harness.format_table(rows)


def test_rows_carry_the_peak_memory_on_cuda_only():
    rows = _compare([Implementation("same", lambda: torch.arange(10))])
    assert all(r.peak_cuda_mib is None for r in rows)  # CPU: no allocator peak to read


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_memory_counts_what_a_call_allocates_beyond_its_start():
    cuda = torch.device("cuda")
    held = torch.empty(64 * 2**20, dtype=torch.uint8, device=cuda)  # allocated before: not counted
    result, peak = harness.call_with_peak(lambda: torch.empty(32 * 2**20, dtype=torch.uint8, device=cuda) + 1, cuda)
    assert 63.9 <= peak <= 64.1 and result.numel() == 32 * 2**20 and held.numel()  # the temporary and the result


# ------------------------------------------------------------------------------------------ charts
def _rows_for_charts():
    rows = []
    for shape, median in (("N=1", 1.0), ("N=2", 2.0)):
        rows += [Row("op a", "base", shape, "float32", "dev", median, None, None, "base", median, 1.0, True,
                     pct_of_floor=10.0),
                 Row("op a", "ours", shape, "float32", "dev", median / 4, None, None, "base", median, 4.0, True,
                     pct_of_floor=40.0),
                 Row("op a", "skipped", shape, "float32", "dev", None, None, None, "base", median, None, None)]
    rows.append(Row("op/b", "base", "N=1", "bfloat16", "dev", 1.0, None, None, "base", 1.0, 1.0, True))
    return rows


def test_chart_series_by_case():
    data = charts.series(_rows_for_charts())
    assert data["op a"]["cases"] == ["N=1\nfloat32", "N=2\nfloat32"]
    assert data["op a"]["impls"]["ours"] == {"speedup": [4.0, 4.0], "pct_of_floor": [40.0, 40.0]}
    assert data["op a"]["impls"]["skipped"]["speedup"] == [None, None]
    assert data["op/b"]["impls"]["base"]["pct_of_floor"] == [None]


def test_one_png_per_op(tmp_path):
    pytest.importorskip("matplotlib")
    paths = charts.write_charts(_rows_for_charts(), tmp_path, "CPU (x), 2026")
    assert sorted(p.name for p in paths) == ["CPU_x_2026_op_a.png", "CPU_x_2026_op_b.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_no_matplotlib_no_charts(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert charts.write_charts(_rows_for_charts(), tmp_path, "stem") == []
    assert charts.MISSING_MATPLOTLIB in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ the suite runner
def test_rows_are_written_after_every_suite_and_a_broken_suite_costs_only_itself(tmp_path, monkeypatch):
    def good_run(device, quick=False):
        return [Row("good", "base", "s", "float32", "dev", 1.0, 1.0, 1.0, "base", 1.0, 1.0, True)]

    def bad_run(device, quick=False):
        raise RuntimeError("suite broke")

    suites = {"benchmarks.bench_good": types.SimpleNamespace(run=good_run),
              "benchmarks.bench_bad": types.SimpleNamespace(run=bad_run)}
    monkeypatch.setattr(bench_main, "available_suites", lambda: ["bad", "good"])
    monkeypatch.setattr(bench_main.importlib, "import_module", suites.__getitem__)
    status = bench_main.main(["--device", "cpu", "--ops", "good,bad", "--out", str(tmp_path), "--no-charts"])
    assert status == 1
    (written,) = tmp_path.glob("*.json")
    assert [r["op"] for r in json.loads(written.read_text())] == ["good"]


# ------------------------------------------------------------------------------------------ the op benchmarks
def test_half_precision_cases_are_benchmarked():
    gpu, cpu = torch.device("cuda"), CPU
    assert {d for _, d in bench_nms.cases(gpu, quick=False)} == set(bench_nms.DTYPES)
    assert [(n, d) for n, d in bench_nms.cases(cpu, quick=False) if d != torch.float32] == \
        [(1000, torch.float16), (1000, torch.bfloat16)]
    half = {(b, d) for b, d in bench_ppn_decode.cases(gpu, quick=False) if d != torch.float32}
    assert half == {(b, d) for b in (1, 8) for d in (torch.float16, torch.bfloat16)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_scores_are_distinct_where_the_dtype_allows(dtype):
    g = torch.Generator().manual_seed(0)
    scores = bench_nms.distinct_scores(16_000, dtype, g)
    assert scores.dtype == dtype and scores.unique().numel() == 16_000 and bool((scores > 0).all())
    assert bool(torch.isfinite(scores.float()).all())


def test_nms_floor_counts_pairs_within_classes():
    boxes, scores, classes = torch.zeros(6, 4), torch.zeros(6), torch.tensor([0, 0, 0, 1, 1, 2])
    keep = torch.arange(3)
    assert bench_nms.nms_floor(boxes, scores)(keep).flops == 15 * bench_nms.IOU_FLOPS
    batched = bench_nms.nms_floor(boxes, scores, classes)(keep)
    assert batched.flops == (3 + 1) * bench_nms.IOU_FLOPS
    assert batched.bytes_moved == 6 * 16 + 6 * 4 + 6 * 8 + 3 * 8


def test_ppn_decode_benchmark_runs_every_dtype_with_floors():
    rows = bench_ppn_decode.run(CPU, quick=True)
    assert {r.dtype for r in rows} == {"float32", "float16", "bfloat16"}
    timed = [r for r in rows if r.median_ms]
    assert timed and all(r.matches_baseline and r.floor_ms > 0 and r.pct_of_floor > 0 for r in timed)


# ------------------------------------------------------------------------------------------ gpu_check.sh
def _gpu_check(*args, env=None):
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)


def test_gpu_check_plan_fits_nine_minutes():
    done = _gpu_check("--dry-run")
    assert done.returncode == 0, done.stderr
    stages = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("stage ")]
    assert stages == ["env", "build", "static", "gpu_tests", "bench", "memcheck", "racecheck", "initcheck",
                      "synccheck", "full_suite"]
    budget = int(done.stdout.split("budget ")[1].split("s")[0])
    foreground = int(done.stdout.split("foreground limits: ")[1].split("s")[0])
    assert foreground <= budget <= 540  # 9 minutes, with the last stage taking what is left
    for tool in ("memcheck", "racecheck", "initcheck", "synccheck"):
        assert f"--tool {tool}" in done.stdout


def test_gpu_check_stage_machinery(tmp_path):
    done = _gpu_check("--selftest", str(tmp_path / "out"), "--archive", str(tmp_path / "back" / "gpu_check.tar.gz"))
    assert done.returncode == 1  # a stage failed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    status = {row["stage"]: row["status"] for row in summary}
    assert status == {"ok": "ok", "fails": "FAILED(3)", "slow": "TIMEOUT", "background": "ok", "rest": "TIMEOUT",
                      "late": "skipped"}
    assert {row["stage"]: row["detail"] for row in summary}["background"] == "later"
    assert (tmp_path / "out" / "ok.log").read_text() == "fine\n"
    assert (tmp_path / "back" / "summary.txt").read_text() == (tmp_path / "out" / "summary.txt").read_text()
    listing = subprocess.run(["tar", "tzf", str(tmp_path / "back" / "gpu_check.tar.gz")], capture_output=True,
                             text=True, check=True).stdout
    assert "./summary.json" in listing and "./rest.log" in listing


def test_device_wheels_are_pinned_to_this_environment():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build_device_wheels.sh"), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr
    from importlib.metadata import version

    for name in ("segment-anything", "sam2", "hydra-core", "pycocotools"):
        assert f"{name}=={version(name)}" in done.stdout
