"""litesam-segment past one process: torchrun (2 ranks, gloo on CPU) writes exactly what one process writes;
the Ray Data path (local mode) writes the same masks; the torchrun context reads its environment."""
import filecmp
import json
import socket

import pytest

pytest.importorskip("PIL")
pytest.importorskip("pycocotools")
pytest.importorskip("segment_anything")

from litesam_kernels.distributed import DistributedContext, item_rows  # noqa: E402
from tests._cli_runs import run_cli_subprocess, sam_reference_run, workspace  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_differences(a, b):
    """Paths (relative) whose presence or bytes differ between two folders."""
    comparison = filecmp.dircmp(a, b)
    different = comparison.left_only + comparison.right_only + comparison.diff_files + comparison.funny_files
    for name, sub in comparison.subdirs.items():
        different += [f"{name}/{d}" for d in tree_differences(a / name, b / name)]
    return different


def test_torchrun_two_ranks_write_what_one_process_writes(tmp_path_factory):
    basetemp = tmp_path_factory.getbasetemp()
    reference = sam_reference_run(basetemp)
    space = workspace(basetemp)
    out = tmp_path_factory.mktemp("torchrun") / "out"
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(free_port())]
    result = run_cli_subprocess(space.sam_args(out), launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[rank 1/2]" in result.stderr and "8 images: 7 segmented, 0 already done, 1 failed" in result.stderr
    # Every file byte for byte: SA-1B files, PNG masks and metadata, overlays, coco.json (merged by rank 0
    # from both ranks' files) and failures.txt (gathered from the rank that met the corrupt file).
    assert tree_differences(reference.out, out) == []
    assert json.loads((out / "coco.json").read_text())["images"]


def test_context_from_environment():
    assert DistributedContext.from_environment({}) == DistributedContext(0, 1, 0)
    context = DistributedContext.from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert context.active and not context.is_main and context.device("cuda") == "cuda:1"
    assert context.device("cuda:0") == "cuda:0" and context.device("cpu") == "cpu"
    assert DistributedContext(0, 1, 0).device("cuda") == "cuda" and DistributedContext().all_gather(5) == [5]
    with pytest.raises(ValueError, match="RANK, WORLD_SIZE and LOCAL_RANK must be integers"):
        DistributedContext.from_environment({"RANK": "x"})


@pytest.mark.slow  # ~20-40 s on a 2-core machine (a local Ray cluster starts); runs in CI
def test_ray_local_mode_same_masks_as_one_process(tmp_path_factory, capsys):
    pytest.importorskip("ray.data")
    import ray

    from litesam_kernels import cli

    space = workspace(tmp_path_factory.getbasetemp())
    root = tmp_path_factory.mktemp("ray")
    args = [space.photos.root, "--model", "litesam", "--checkpoint", space.litesam_checkpoint, "--format",
            "sa1b,coco", "--batch-size", "2", "--points-per-image", "6", "--pred-iou-thresh=-100",
            "--stability-score-thresh", "0", "--box-nms-thresh", "1", "--no-progress"]
    assert cli.main([str(a) for a in args + ["--out", root / "local", "--num-workers", "0"]]) == 0
    try:
        status = cli.main([str(a) for a in args + ["--out", root / "ray", "--ray", "local", "--ray-actors", "1"]])
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    assert status == 0, err
    assert "7 images: 6 segmented, 0 already done, 1 failed" in err
    assert (root / "ray" / "failures.txt").read_text() == (root / "local" / "failures.txt").read_text()
    local = json.loads((root / "local" / "coco.json").read_text())
    remote = json.loads((root / "ray" / "coco.json").read_text())
    assert remote["images"] == local["images"] and len(remote["annotations"]) == len(local["annotations"]) > 0
    for a, b in zip(local["annotations"], remote["annotations"]):
        # Ray batches rows its own way; Lite-SAM's scores move in the last bits with the batch (3e-8 measured).
        for key in ("id", "image_id", "segmentation", "area", "bbox", "point_coords", "crop_box"):
            assert a[key] == b[key], key
        for key in ("predicted_iou", "stability_score"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key


def test_item_rows_round_trip():
    from litesam_kernels.datasets import ImageItem
    from litesam_kernels.distributed import _items

    items = [ImageItem(0, "/a/x.png", "x.png", "x"), ImageItem(5, "/a/sub/y.jpg", "sub/y.jpg", "sub/y")]
    rows = item_rows(items)
    import numpy as np

    batch = {key: np.array([row[key] for row in rows], dtype=object) for key in rows[0]}
    assert _items(batch) == items
