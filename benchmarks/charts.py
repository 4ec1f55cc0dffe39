"""One PNG per benchmarked op, beside the CSV: speed-up over the baseline and % of the floor, by case.

``write_charts(rows, out_dir, stem)`` draws, for each op in ``rows``, two panels over its cases (shape and
dtype, in the order they ran): each implementation's speed-up over the baseline measured in the same run
(log scale; 1 = the baseline) and its median as a percentage of the case's floor (log scale; 100% = the
floor). matplotlib is an optional dependency: without it no chart is drawn and a message says so.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Sequence

from benchmarks.harness import Row

MISSING_MATPLOTLIB = "matplotlib is not installed: no charts (pip install matplotlib)"


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def case_label(row: Row) -> str:
    return f"{row.shape}\n{row.dtype}"


def series(rows: Sequence[Row]) -> Dict[str, Dict[str, List]]:
    """{op: {"cases": [...], "<impl>": {"speedup": [...], "pct_of_floor": [...]}}} with None where a row has
    no value (skipped, not run, mismatch) or the implementation did not run that case."""
    out: Dict[str, Dict] = {}
    for row in rows:
        op = out.setdefault(row.op, {"cases": [], "impls": {}})
        label = case_label(row)
        if label not in op["cases"]:
            op["cases"].append(label)
    for row in rows:
        op = out[row.op]
        impl = op["impls"].setdefault(row.impl, {"speedup": [None] * len(op["cases"]),
                                                 "pct_of_floor": [None] * len(op["cases"])})
        index = op["cases"].index(case_label(row))
        impl["speedup"][index] = row.speedup if row.median_ms else None
        impl["pct_of_floor"][index] = row.pct_of_floor
    return out


def write_charts(rows: Sequence[Row], out_dir: Path, stem: str) -> List[Path]:
    """PNG files ``<stem>_<op>.png`` in ``out_dir`` (none, with a message, without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(MISSING_MATPLOTLIB)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    device = rows[0].device if rows else ""
    for op, data in series(rows).items():
        cases = data["cases"]
        fig, (speed_ax, floor_ax) = plt.subplots(1, 2, figsize=(max(9.0, 1.6 * len(cases) + 5), 4.8))
        x = list(range(len(cases)))
        palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        colors = {name: palette[i % len(palette)] for i, name in enumerate(data["impls"])}  # same in both panels
        panels = ((speed_ax, "speedup", 1.0, "speed-up vs baseline (same run)"),
                  (floor_ax, "pct_of_floor", 100.0, "% of floor (100% = floor)"))
        for ax, key, reference, title in panels:
            plotted = False
            for name, values in data["impls"].items():
                points = [(i, v) for i, v in zip(x, values[key]) if v]
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name, color=colors[name])
                    plotted = True
            ax.axhline(reference, color="grey", linewidth=0.8, linestyle="--")
            if plotted:
                ax.set_yscale("log")
            else:
                ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", color="grey")
            ax.set_title(title, fontsize=10)
            ax.set_xticks(x)
            ax.set_xticklabels(cases, fontsize=7, rotation=20, ha="right")
            ax.grid(True, which="both", alpha=0.3)
        handles, labels = speed_ax.get_legend_handles_labels()
        for handle, label in zip(*floor_ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(4, len(handles)), fontsize=7)
        fig.suptitle(f"{op} - {device}", fontsize=11)
        fig.tight_layout(rect=(0, 0.12 if handles else 0, 1, 0.95))
        path = out_dir / f"{_file_stem(stem)}_{_file_stem(op)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
