"""The CLI runs several test modules share (one run each per test session, cached under pytest's basetemp):
the photo folder, the tiny checkpoints, and the reference SAM run over the whole folder."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from tests._checkpoints import tiny_litesam_checkpoint, tiny_sam_checkpoint
from tests._photos import PhotoFolder, photo_folder

ROOT = Path(__file__).resolve().parent.parent
SAM_BUILDER = "tests._checkpoints:build_tiny_sam"
# Tiny random SAM on ~96 px photos: these keep 4-13 masks per image of varied sizes.
SAM_OPTIONS = {"points_per_side": 6, "pred_iou_thresh": -1.0, "stability_score_thresh": 0.01, "box_nms_thresh": 0.9}
BATCH_SIZE = 2


def option_flags(options: Dict[str, object]) -> List[str]:
    return [f"--{name.replace('_', '-')}={value}" for name, value in options.items()]


@dataclass
class Workspace:
    root: Path
    photos: PhotoFolder
    sam_checkpoint: Path
    litesam_checkpoint: Path

    def sam_args(self, out: Path) -> List[str]:
        return [str(self.photos.root), "--recursive", "--out", str(out), "--model", "sam", "--model-type",
                SAM_BUILDER, "--checkpoint", str(self.sam_checkpoint), "--format", "sa1b,coco,png", "--overlay",
                "--batch-size", str(BATCH_SIZE), "--num-workers", "1", "--no-progress", *option_flags(SAM_OPTIONS)]


_CACHE: Dict[str, object] = {}


def workspace(basetemp: Path) -> Workspace:
    key = f"workspace:{basetemp}"
    if key not in _CACHE:
        root = basetemp / "cli_workspace"
        root.mkdir(exist_ok=True)
        _CACHE[key] = Workspace(root, photo_folder(root / "photos"), tiny_sam_checkpoint(root / "tiny_sam.pth"),
                                tiny_litesam_checkpoint(root / "tiny_litesam.pt"))
    return _CACHE[key]


@dataclass
class Run:
    out: Path
    status: int
    stderr: str


def sam_reference_run(basetemp: Path) -> Run:
    """``litesam-segment`` over the whole photo folder with the tiny SAM, every format, in this process."""
    key = f"sam_run:{basetemp}"
    if key not in _CACHE:
        from litesam_kernels import cli

        space = workspace(basetemp)
        out = space.root / "sam_out"
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = cli.main(space.sam_args(out))
        _CACHE[key] = Run(out, status, err.getvalue())
    return _CACHE[key]


def run_cli_subprocess(args: List[str], *, launcher: List[str] = (), timeout: float = 240) -> subprocess.CompletedProcess:
    """``python [launcher...] -m litesam_kernels.cli args`` from the repository root (so that this checkout's
    package and the tests' builder module import), on CPU with the Triton interpreter."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, *launcher, "-m", "litesam_kernels.cli", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
