"""litesam-segment past one process: torchrun (2 ranks, gloo on CPU) writes exactly what one process writes;
the Ray Data path (local mode) writes the same masks; the torchrun context reads its environment."""
import filecmp
import json
import socket

import pytest

pytest.importorskip("PIL")
pytest.importorskip("pycocotools")
pytest.importorskip("segment_anything")

# pycocotools' decode on numpy 2, and DataLoader workers forked from a process with torch's thread pool (the
# DataLoader's default on Linux; the workers only decode images): both harmless, both noisy.
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
              pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork")]

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


def test_actor_plan_one_actor_per_gpu():
    from litesam_kernels.distributed import actor_plan

    assert actor_plan(8) == (8, 1) and actor_plan(0) == (1, 0) and actor_plan(8, gpus_per_actor=0.5) == (16, 0.5)
    assert actor_plan(8, actors=2) == (2, 1) and actor_plan(0, actors=3) == (3, 0) and actor_plan(1.0) == (1, 1)
    with pytest.raises(ValueError, match="gpus_per_actor"):
        actor_plan(4, gpus_per_actor=-1)


def test_item_rows_round_trip():
    from litesam_kernels.datasets import ImageItem
    from litesam_kernels.distributed import _items

    items = [ImageItem(0, "/a/x.png", "x.png", "x"), ImageItem(5, "/a/sub/y.jpg", "sub/y.jpg", "sub/y")]
    rows = item_rows(items)
    import numpy as np

    batch = {key: np.array([row[key] for row in rows], dtype=object) for key in rows[0]}
    assert _items(batch) == items


def test_a_rank_without_images_and_merged_counts(tmp_path):
    from litesam_kernels.batch_runner import RunStats, run_images
    from litesam_kernels.datasets import ImageItem
    from litesam_kernels.writers import OutputLayout

    empty = run_images(None, OutputLayout(tmp_path), [], batch_size=2, num_workers=2)  # never calls the model
    assert (empty.images, empty.segmented, empty.failed, empty.exit_status) == (0, 0, 0, 0)
    item = ImageItem(0, "a.png", "a.png", "a")
    failed = RunStats(images=1, failures=[(item, "OSError: broken")], seconds=2.0)
    assert failed.exit_status == 1 and empty.merge(failed).exit_status == 1
    done = RunStats(images=3, segmented=1, skipped=2, masks=7, seconds=5.0)
    total = failed.merge(done)
    assert (total.images, total.segmented, total.skipped, total.masks, total.failed, total.seconds) == (4, 1, 2, 7, 1, 5.0)
    assert total.exit_status == 0 and RunStats(images=2, skipped=2).exit_status == 0


def test_ray_bad_checkpoint_fails_before_the_cluster_starts(tmp_path_factory, capsys):
    ray = pytest.importorskip("ray")
    from litesam_kernels import cli

    space = workspace(tmp_path_factory.getbasetemp())
    status = cli.main([str(space.photos.root), "--out", str(tmp_path_factory.mktemp("ray_bad")), "--checkpoint",
                       str(space.sam_checkpoint), "--ray", "local"])
    err = capsys.readouterr().err
    assert status == 2 and "as a Lite-SAM checkpoint" in err and "Traceback" not in err
    assert not ray.is_initialized()
