"""What a run reports: ``RUN_DIR/log.csv`` (one row per logged step), TensorBoard scalars when the
``tensorboard`` package is installed, and a progress bar (tqdm when installed) with images/s. Rank 0 only.

On resume the CSV keeps the rows up to the checkpoint's step and drops the later ones (they are computed
again), so the file reads as one uninterrupted run.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence


class RunLog:
    def __init__(self, out: Path, columns: Sequence[str], resume_step: Optional[int], enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(out) / "log.csv"
        self.columns = list(columns)
        self._tensorboard = None
        if not enabled:
            return
        kept = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as fh:
                kept = [row for row in csv.DictReader(fh) if int(row["step"]) <= resume_step]
        with open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._tensorboard = SummaryWriter(str(Path(out) / "tensorboard"), purge_step=resume_step)

    def write(self, row: Dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        if self._tensorboard is not None:
            for name, value in row.items():
                if name != "step":
                    self._tensorboard.add_scalar(f"train/{name}", value, int(row["step"]))

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


class Progress:
    """A tqdm bar over optimizer steps (plain lines every logged step without tqdm)."""

    def __init__(self, total: int, initial: int, enabled: bool, description: str) -> None:
        self._bar = None
        self._plain = False
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self._plain = True
            return
        self._bar = tqdm(total=total, initial=initial, desc=description, unit="step", file=sys.stderr,
                         dynamic_ncols=True)

    def update(self, status: Optional[Dict[str, str]], step: int) -> None:
        """One more step done; ``status`` (at logged steps) goes into the bar's postfix."""
        if self._bar is not None:
            self._bar.update(1)
            if status:
                self._bar.set_postfix(status, refresh=False)
        elif self._plain and status:
            print(f"step {step}: " + ", ".join(f"{k} {v}" for k, v in status.items()), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
