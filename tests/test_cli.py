"""litesam-segment on a folder of real photos with tiny SAM / SAM 2 / Lite-SAM checkpoints: inputs (folders,
globs, lists, EXIF, conversions, failures), every output format (SA-1B, COCO through pycocotools, amg.py
PNGs, overlays), --skip-existing, and clean errors for bad input."""
import contextlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")
pytest.importorskip("pycocotools")
pytest.importorskip("segment_anything")

# pycocotools' decode on numpy 2, and DataLoader workers forked from a process with torch's thread pool (the
# DataLoader's default on Linux; the workers only decode images): both harmless, both noisy.
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
              pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork")]

from PIL import Image  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from litesam_kernels import cli, segmenters  # noqa: E402
from litesam_kernels.datasets import (ImageItem, InputError, assign_stems, decode, discover_images,  # noqa: E402
                                      image_loader, load_image, shard)
from litesam_kernels.writers import (AMG_METADATA_HEADER, ANNOTATION_ID_STRIDE, OutputLayout,  # noqa: E402
                                     annotation_id, atomic_directory, atomic_write, sa1b_annotations)
from tests._cli_runs import BATCH_SIZE, SAM_OPTIONS, option_flags, sam_reference_run, workspace  # noqa: E402

LITESAM_OPTIONS = {"points_per_image": 8, "pred_iou_thresh": -100.0, "stability_score_thresh": 0.0,
                   "box_nms_thresh": 1.0}


@pytest.fixture(scope="session")
def space(tmp_path_factory):
    return workspace(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def sam_run(tmp_path_factory):
    return sam_reference_run(tmp_path_factory.getbasetemp())


def run(argv, capsys):
    status = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def good_items(space):
    """The run's items (input order) whose images decode, with their expected upright RGB arrays."""
    items = discover_images([str(space.photos.root)], recursive=True)
    return [(item, space.photos.upright[item.name]) for item in items if item.name in space.photos.upright]


def cli_batches(items_with_images):
    """The images grouped as the CLI's model calls see them: blocks of BATCH_SIZE inputs, bad ones left out."""
    groups = {}
    for item, image in items_with_images:
        groups.setdefault(item.index // BATCH_SIZE, []).append((item, image))
    return list(groups.values())


def same_json(a, b, tolerance=1e-6):
    """Equal JSON values, floats within ``tolerance`` (1.4e-7 measured between SAM encoder batch sizes)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=tolerance)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            same_json(a[key], b[key], tolerance)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same_json(x, y, tolerance)
    else:
        assert a == b


def mask_of(segmentation):
    return mask_utils.decode(segmentation).astype(bool)


def check_rle_geometry(annotation):
    mask = mask_of(annotation["segmentation"])
    assert int(mask.sum()) == annotation["area"]
    if annotation["area"]:
        rows, cols = np.nonzero(mask)
        x0, y0, x1, y1 = cols.min(), rows.min(), cols.max(), rows.max()
        assert annotation["bbox"] == [int(x0), int(y0), int(x1 - x0), int(y1 - y0)]


# ------------------------------------------------------------------------------------------ inputs
class TestDiscovery:
    def test_folders_recursive_hidden_and_other_files(self, space):
        top = [i.name for i in discover_images([str(space.photos.root)])]
        assert top == sorted(space.photos.top_level + [space.photos.corrupt])  # notes.txt skipped by extension
        deep = discover_images([str(space.photos.root)], recursive=True)
        assert [i.name for i in deep] == top + ["more/chelsea.png"]
        assert [i.index for i in deep] == list(range(len(deep))) and deep[-1].stem == "more/chelsea"
        assert deep[0].image_id == 1

    def test_globs_file_lists_dedupe(self, space, tmp_path):
        root = space.photos.root
        by_glob = discover_images([str(root / "*.png")])
        assert [i.name for i in by_glob] == sorted(n for n in space.photos.top_level if n.endswith(".png"))
        assert [i.name for i in discover_images([str(root / "**" / "*.png")])][-1] == "more/chelsea.png"
        listing = tmp_path / "lists" / "images.txt"
        listing.parent.mkdir()
        shutil.copy(root / "coffee.jpg", tmp_path / "outside.jpg")
        listing.write_text(f"# a comment\n\n{root / 'camera.png'}\n../outside.jpg\n{root / 'notes.txt'}\n")
        items = discover_images([str(root / "camera.png")], file_lists=[str(listing)])
        # camera.png twice: kept once; ../outside.jpg named by its basename (no output outside OUT);
        # a listed file is taken whatever its extension (it will fail to decode, as it should).
        assert [(i.name, Path(i.path).resolve()) for i in items] == [
            ("camera.png", (root / "camera.png").resolve()), ("outside.jpg", (tmp_path / "outside.jpg").resolve()),
            ("notes.txt", (root / "notes.txt").resolve())]

    def test_stems_unique_and_output_folder_excluded(self, space, tmp_path):
        assert assign_stems(["a.jpg", "a.png", "b.jpg", "x/c.png", "c.png", "b.jpg"]) == [
            "a.jpg", "a.png", "b.jpg", "x/c", "c", "b.jpg_5"]
        root = tmp_path / "data"
        shutil.copytree(space.photos.root / "more", root)
        (root / "out" / "overlays").mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "out" / "overlays" / "chelsea.png")
        (root / ".chelsea.png.tmp-1-abc").write_bytes(b"partial")
        found = discover_images([str(root)], recursive=True, exclude=[str(root / "out")])
        assert [i.name for i in found] == ["chelsea.png"]

    def test_same_names_in_two_folders_do_not_depend_on_the_order(self, tmp_path):
        for folder in ("A", "B"):
            (tmp_path / folder).mkdir()
            Image.fromarray(np.full((4, 4, 3), ord(folder), np.uint8)).save(tmp_path / folder / "x.png")
        ab = discover_images([str(tmp_path / "A"), str(tmp_path / "B")])
        ba = discover_images([str(tmp_path / "B"), str(tmp_path / "A")])
        assert [(i.name, i.stem) for i in ab] == [("A/x.png", "A/x"), ("B/x.png", "B/x")]
        assert {os.path.realpath(i.path): i.stem for i in ab} == {os.path.realpath(i.path): i.stem for i in ba}

    @pytest.mark.parametrize("make, message", [
        (lambda p: [str(p / "missing.jpg")], "no such file or folder"),
        (lambda p: [str(p / "empty")], "no images in folder"),
        (lambda p: [str(p / "*.webp")], "no images match"),
    ])
    def test_errors(self, tmp_path, make, message):
        (tmp_path / "empty" / "sub").mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "empty" / "sub" / "deep.png")
        with pytest.raises(InputError, match=message):
            discover_images(make(tmp_path))
        with pytest.raises(InputError, match="cannot read file list"):
            discover_images(file_lists=[str(tmp_path / "nope.txt")])
        (tmp_path / "blank.txt").write_text("# nothing\n\n")
        with pytest.raises(InputError, match="names no images"):
            discover_images(file_lists=[str(tmp_path / "blank.txt")])
        with pytest.raises(InputError, match="no input images"):
            discover_images([])

    def test_shard_blocks(self):
        items = [ImageItem(i, f"{i}.png", f"{i}.png", str(i)) for i in range(11)]
        for world, block in [(1, 1), (2, 1), (3, 2), (4, 3), (16, 2)]:
            shards = [shard(items, rank, world, block) for rank in range(world)]
            assert sorted(i.index for s in shards for i in s) == list(range(11))
            for rank, part in enumerate(shards):
                assert all((i.index // block) % world == rank for i in part)
        assert [i.index for i in shard(items, 1, 2, block=2)] == [2, 3, 6, 7, 10]
        for bad in [dict(rank=2, world_size=2), dict(rank=-1, world_size=2), dict(rank=0, world_size=0)]:
            with pytest.raises(ValueError, match="rank"):
                shard(items, **bad)
        with pytest.raises(ValueError, match="block"):
            shard(items, 0, 1, block=0)


class TestDecoding:
    def test_photo_folder_upright_rgb(self, space):
        for name, expected in space.photos.upright.items():
            image = load_image(str(space.photos.root / name))
            assert image.dtype == np.uint8 and image.flags.writeable and image.flags.c_contiguous
            np.testing.assert_array_equal(image, expected, err_msg=name)

    @pytest.mark.parametrize("orientation", range(1, 9))
    def test_every_exif_orientation(self, tmp_path, orientation):
        upright = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
        # PIL's exif_transpose applies these to view the stored pixels; the inverse makes the stored file.
        view = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
                7: "TRANSVERSE", 8: "ROTATE_90"}
        inverse = {"ROTATE_270": "ROTATE_90", "ROTATE_90": "ROTATE_270"}
        stored = Image.fromarray(upright)
        if orientation in view:
            op = view[orientation]
            stored = stored.transpose(getattr(Image.Transpose, inverse.get(op, op)))
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored.save(tmp_path / "photo.png", exif=exif.tobytes())
        np.testing.assert_array_equal(load_image(str(tmp_path / "photo.png")), upright)

    def test_mode_conversions(self, tmp_path):
        rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
        cases = {
            "la.png": (Image.fromarray(rgb[..., 0]).convert("LA"), np.repeat(rgb[..., :1], 3, 2)),
            "bits.png": (Image.fromarray(rgb[..., 0] > 127).convert("1"), np.repeat((rgb[..., :1] > 127) * 255, 3, 2)),
            "int32.tif": (Image.fromarray(rgb[..., 0].astype(np.int32) * 257), np.repeat(rgb[..., :1], 3, 2)),
            "cmyk.jpg": (Image.fromarray(rgb).convert("CMYK"), None),
            "palette.png": (Image.fromarray(rgb).convert("P"), None),
        }
        palette = Image.fromarray(rgb).convert("P")
        palette.info["transparency"] = 0
        cases["palette_alpha.png"] = (palette, None)
        for name, (image, expected) in cases.items():
            image.save(tmp_path / name)
            decoded = load_image(str(tmp_path / name))
            assert decoded.shape == (6, 5, 3) and decoded.dtype == np.uint8, name
            if expected is not None:
                np.testing.assert_array_equal(decoded, expected.astype(np.uint8), err_msg=name)

    def test_max_side_downscales_only(self, space):
        path = str(space.photos.root / "coffee.jpg")  # 64 x 96
        assert load_image(path, max_side=48).shape == (32, 48, 3)
        assert load_image(path, max_side=500).shape == (64, 96, 3)

    def test_unreadable_images_become_errors(self, space, tmp_path):
        data = (space.photos.root / "coffee.jpg").read_bytes()
        (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
        for path in [space.photos.root / space.photos.corrupt, tmp_path / "truncated.jpg", tmp_path / "gone.png"]:
            decoded = decode(ImageItem(0, str(path), path.name, path.stem))
            assert decoded.image is None and decoded.error.split(":")[0] in {"OSError", "UnidentifiedImageError",
                                                                             "FileNotFoundError"}

    def test_loader_workers_same_as_main_process(self, space):
        items = discover_images([str(space.photos.root)])
        inline = [d for batch in image_loader(items, batch_size=3, num_workers=0) for d in batch]
        batches = list(image_loader(items, batch_size=3, num_workers=2, prefetch_factor=1))
        assert [len(b) for b in batches] == [3, 3, 1]
        workers = [d for batch in batches for d in batch]
        assert [d.item for d in workers] == items == [d.item for d in inline]
        for a, b in zip(inline, workers):
            assert a.error == b.error and (a.image is None) == (b.image is None)
            if a.image is not None:
                np.testing.assert_array_equal(a.image, b.image)


# ------------------------------------------------------------------------------------------ writers
class TestWriters:
    def test_atomic_write_leaves_old_file_or_nothing(self, tmp_path):
        target = tmp_path / "sub" / "out.json"

        def failing(file):
            file.write(b"half of it")
            raise RuntimeError("disk full")

        with pytest.raises(RuntimeError):
            atomic_write(target, failing)
        assert not target.exists() and os.listdir(target.parent) == []
        atomic_write(target, lambda f: f.write(b"complete"))
        with pytest.raises(RuntimeError):
            atomic_write(target, failing)
        assert target.read_bytes() == b"complete" and os.listdir(target.parent) == ["out.json"]

    def test_atomic_directory(self, tmp_path):
        target = tmp_path / "masks"
        with atomic_directory(target) as folder:
            (folder / "0.png").write_bytes(b"old")
        with pytest.raises(KeyboardInterrupt):
            with atomic_directory(target) as folder:
                (folder / "0.png").write_bytes(b"partial")
                raise KeyboardInterrupt
        assert os.listdir(tmp_path) == ["masks"] and (target / "0.png").read_bytes() == b"old"
        with atomic_directory(target) as folder:
            (folder / "1.png").write_bytes(b"new")
        assert os.listdir(tmp_path) == ["masks"] and os.listdir(target) == ["1.png"]

    def test_ids_and_json_scores(self):
        assert annotation_id(3, 17) == 3 * ANNOTATION_ID_STRIDE + 17
        with pytest.raises(ValueError, match="more than"):
            annotation_id(1, ANNOTATION_ID_STRIDE)
        record = {"segmentation": {"size": [1, 1], "counts": "01"}, "area": 0, "bbox": [0, 0, 0, 0],
                  "predicted_iou": 0.5, "stability_score": float("nan"), "point_coords": [[0.5, 0.5]],
                  "crop_box": [0, 0, 1, 1]}
        annotation = sa1b_annotations([record], image_id=2)[0]
        assert annotation["id"] == 2 * ANNOTATION_ID_STRIDE and annotation["stability_score"] is None
        assert list(annotation) == ["id", "segmentation", "area", "bbox", "predicted_iou", "stability_score",
                                    "point_coords", "crop_box"]

    def test_done_only_for_the_image_it_was_made_from(self, tmp_path):
        """An output folder reused for another image of the same name: that image is redone, not skipped."""
        layout = OutputLayout(tmp_path / "out", ("sa1b",))
        image = np.zeros((4, 6, 3), np.uint8)
        for folder in ("A", "B"):
            (tmp_path / folder).mkdir()
            Image.fromarray(image).save(tmp_path / folder / "x.png")
        (item_a,) = discover_images([str(tmp_path / "A")])
        (item_b,) = discover_images([str(tmp_path / "B")])
        assert item_a.stem == item_b.stem and not layout.is_done(item_a)
        layout.write(item_a, image, [])
        assert layout.is_done(item_a) and not layout.is_done(item_b)

    def test_layout(self, tmp_path):
        with pytest.raises(ValueError, match="formats"):
            OutputLayout(tmp_path, ("sa1b", "yaml"))
        assert OutputLayout(tmp_path, ("png",)).output_mode == "binary_mask"
        assert OutputLayout(tmp_path, ("coco",)).writes_sa1b


# ------------------------------------------------------------------------------------------ SAM run
class TestSamFolderRun:
    def test_status_summary_failures(self, sam_run, space):
        assert sam_run.status == 0, sam_run.stderr
        assert "8 images: 7 segmented, 0 already done, 1 failed" in sam_run.stderr
        assert "images/s" in sam_run.stderr and "COCO:" in sam_run.stderr
        lines = (sam_run.out / "failures.txt").read_text().splitlines()
        assert len(lines) == 1
        path, error = lines[0].split("\t")
        assert path == str(space.photos.root / space.photos.corrupt) and "Error" in error

    def test_sa1b_records_are_the_drop_ins(self, sam_run, space):
        """Each SA-1B file holds FastSamAutomaticMaskGenerator's records for the upright RGB image, batched
        as the CLI batches (so the encoder sees the same batches), with SA-1B's fields and ids."""
        from litesam_kernels.amg import FastSamAutomaticMaskGenerator
        from tests._checkpoints import build_tiny_sam

        generator = FastSamAutomaticMaskGenerator(build_tiny_sam(space.sam_checkpoint), output_mode="coco_rle",
                                                  images_per_encoder_call=BATCH_SIZE, **SAM_OPTIONS)
        total = 0
        for group in cli_batches(good_items(space)):
            expected = generator.generate_batch([image for _, image in group])
            for (item, image), records in zip(group, expected):
                document = json.loads((sam_run.out / "sa1b" / f"{item.stem}.json").read_text())
                assert document["image"] == {"image_id": item.index + 1, "file_name": item.name,
                                             "width": image.shape[1], "height": image.shape[0],
                                             "source_path": os.path.realpath(item.path)}
                annotations = document["annotations"]
                assert len(annotations) == len(records) > 0
                for k, (annotation, record) in enumerate(zip(annotations, records)):
                    assert annotation == {"id": (item.index + 1) * ANNOTATION_ID_STRIDE + k, **record}
                    check_rle_geometry(annotation)
                total += len(records)
        assert f"{total} masks" in sam_run.stderr
        # the EXIF-rotated photo is segmented upright (stored sideways: its file is 64 wide, 96 high)
        rocket = json.loads((sam_run.out / "sa1b" / "rocket_exif.json").read_text())["image"]
        assert (rocket["height"], rocket["width"]) == space.photos.upright["rocket_exif.jpg"].shape[:2]

    def test_coco_loads_with_pycocotools(self, sam_run, space):
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(sam_run.out / "coco.json"))
        items = [item for item, _ in good_items(space)]
        assert sorted(coco.getImgIds()) == [item.image_id for item in items]
        assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "object", "supercategory": "object"}]
        annotation_ids = coco.getAnnIds()
        assert len(annotation_ids) == len(set(annotation_ids)) > len(items)
        for item in items:
            info = coco.loadImgs(item.image_id)[0]
            document = json.loads((sam_run.out / "sa1b" / f"{item.stem}.json").read_text())
            assert info == {"id": item.image_id, "file_name": item.name, "width": document["image"]["width"],
                            "height": document["image"]["height"]}
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=item.image_id))
            assert [a["id"] for a in annotations] == [a["id"] for a in document["annotations"]]
            for annotation, original in zip(annotations, document["annotations"]):
                mask = coco.annToMask(annotation)
                assert mask.shape == (info["height"], info["width"]) and int(mask.sum()) == annotation["area"]
                assert annotation["bbox"] == original["bbox"] and annotation["iscrowd"] == 0
                assert annotation["category_id"] == 1 and annotation["image_id"] == item.image_id

    def test_png_folders_are_amg_layout(self, sam_run, space):
        for item, image in good_items(space):
            folder = sam_run.out / "png" / item.stem
            annotations = json.loads((sam_run.out / "sa1b" / f"{item.stem}.json").read_text())["annotations"]
            rows = (folder / "metadata.csv").read_text().split("\n")
            assert rows[0] == AMG_METADATA_HEADER and len(rows) == len(annotations) + 1
            assert sorted(os.listdir(folder)) == sorted(["metadata.csv"] + [f"{i}.png" for i in range(len(annotations))])
            for i, annotation in enumerate(annotations):
                png = np.asarray(Image.open(folder / f"{i}.png"))
                assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
                np.testing.assert_array_equal(png == 255, mask_of(annotation["segmentation"]))
                fields = rows[i + 1].split(",")
                assert fields[:6] == [str(i), str(annotation["area"]), *map(str, annotation["bbox"])]
                assert float(fields[8]) == annotation["predicted_iou"]
            overlay = np.asarray(Image.open(sam_run.out / "overlays" / f"{item.stem}.png"))
            assert overlay.shape == image.shape and not np.array_equal(overlay, image)

    def test_skip_existing_redoes_nothing_and_resumes(self, sam_run, space, tmp_path, capsys, monkeypatch):
        out = tmp_path / "out"
        shutil.copytree(sam_run.out, out)
        segmented = []
        real_segment = segmenters.Segmenter.segment
        monkeypatch.setattr(segmenters.Segmenter, "segment",
                            lambda self, images: segmented.extend(images) or real_segment(self, images))
        files = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in ("coco.json", "failures.txt"))
        stamps = {p: p.stat().st_mtime_ns for p in files}
        args = space.sam_args(out) + ["--skip-existing"]
        status, err = run(args, capsys)
        assert status == 0 and segmented == []
        assert "8 images: 0 segmented, 7 already done, 1 failed" in err  # the corrupt file is retried
        assert {p: p.stat().st_mtime_ns for p in files} == stamps
        assert (out / "coco.json").read_bytes() == (sam_run.out / "coco.json").read_bytes()
        # An interrupted run: one image lost its SA-1B file, another its overlay; only those two are redone.
        (out / "sa1b" / "camera.json").unlink()
        (out / "overlays" / "more" / "chelsea.png").unlink()
        status, err = run(args, capsys)
        assert status == 0 and len(segmented) == 2 and "2 segmented, 5 already done" in err
        for p in files:
            original = sam_run.out / p.relative_to(out)
            if p.suffix == ".json":  # redone in another encoder batch: scores can differ in the last bits
                same_json(json.loads(p.read_text()), json.loads(original.read_text()))
            elif p.name != "metadata.csv":
                assert p.read_bytes() == original.read_bytes(), p
    def test_a_failing_image_does_not_take_its_batch(self, space, tmp_path, capsys, monkeypatch):
        real_segment = segmenters.Segmenter.segment

        def segment(self, images):
            if any(np.array_equal(image, space.photos.upright["coffee.jpg"]) for image in images):
                if len(images) == 1:
                    raise RuntimeError("model exploded on this one")
                raise RuntimeError("batch failed")
            return real_segment(self, images)

        monkeypatch.setattr(segmenters.Segmenter, "segment", segment)
        out = tmp_path / "out"
        status, err = run([space.photos.root / "camera.png", space.photos.root / "coffee.jpg", "--out", out,
                           "--model", "sam", "--model-type", "tests._checkpoints:build_tiny_sam", "--checkpoint",
                           space.sam_checkpoint, "--batch-size", "2", "--num-workers", "0", "--no-progress",
                           *option_flags(SAM_OPTIONS)], capsys)
        assert status == 0 and "1 segmented" in err and "1 failed" in err
        assert (out / "sa1b" / "camera.json").exists() and not (out / "sa1b" / "coffee.json").exists()
        assert "RuntimeError: model exploded on this one" in (out / "failures.txt").read_text()

    def test_all_failed_exit_status_1(self, space, tmp_path, capsys):
        folder = tmp_path / "bad"
        folder.mkdir()
        shutil.copy(space.photos.root / space.photos.corrupt, folder / "a.jpg")
        (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        status, err = run([folder, "--out", tmp_path / "out", "--config", "tiny", "--no-progress"], capsys)
        assert status == 1 and "0 segmented, 0 already done, 2 failed" in err
        assert len((tmp_path / "out" / "failures.txt").read_text().splitlines()) == 2


# ------------------------------------------------------------------------------------------ Lite-SAM
class TestLiteSAM:
    def test_file_list_run_equals_segment_everything(self, space, tmp_path, capsys):
        from pycocotools.coco import COCO

        from litesam_kernels.model import LiteSAM
        from litesam_kernels.segment_everything import SegmentEverything

        names = ["astronaut.png", space.photos.corrupt, "camera.png", "logo.png"]
        listing = space.photos.root / "subset.txt"
        listing.write_text("\n".join(names) + "\n")
        out = tmp_path / "out"
        status, err = run(["--file-list", listing, "--out", out, "--model", "litesam", "--checkpoint",
                           space.litesam_checkpoint, "--format", "coco", "--batch-size", BATCH_SIZE,
                           "--num-workers", "1", "--prompt", "point", "--ppn-score-thresh", "0.05",
                           *option_flags(LITESAM_OPTIONS)], capsys)
        assert status == 0 and "RANDOM" not in err and "4 images: 3 segmented" in err
        options = dict(LITESAM_OPTIONS, prompt="point", ppn_score_threshold=0.05)
        generator = SegmentEverything(LiteSAM.load(space.litesam_checkpoint).eval(), output_mode="coco_rle",
                                      batch_size=BATCH_SIZE, **options)
        items = [(item, space.photos.upright[item.name]) for item in discover_images(file_lists=[str(listing)])
                 if item.name != space.photos.corrupt]
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(out / "coco.json"))
        assert sorted(coco.getImgIds()) == [1, 3, 4]
        for group in cli_batches(items):
            for (item, _), records in zip(group, generator.generate([image for _, image in group])):
                annotations = coco.loadAnns(coco.getAnnIds(imgIds=item.image_id))
                assert len(annotations) == len(records) > 0
                for annotation, record in zip(annotations, records):
                    assert {k: annotation[k] for k in record} == record
                    check_rle_geometry(annotation)

    def test_random_weights_warn(self, space, tmp_path, capsys):
        status, err = run([space.photos.root / "camera.png", "--out", tmp_path, "--config", "tiny",
                           "--points-per-image", "4", "--format", "png", "-q"], capsys)
        assert status == 0 and "RANDOM weights" in err
        assert (tmp_path / "png" / "camera" / "metadata.csv").exists()

    def test_progress_bar_max_side_and_plain_fallback(self, space, tmp_path, capsys, monkeypatch):
        def args(out):
            return [space.photos.root / "camera.png", space.photos.root / "coffee.jpg", "--out", out, "--checkpoint",
                    space.litesam_checkpoint, "--points-per-image", "4", "--max-side", "48", "--num-workers", "0"]

        status, err = run(args(tmp_path / "a"), capsys)
        assert status == 0 and "2/2" in err and "img/s" in err and "<00:00" in err  # tqdm: rate and ETA
        image = json.loads((tmp_path / "a" / "sa1b" / "coffee.json").read_text())["image"]
        assert (image["height"], image["width"]) == (32, 48)  # 64 x 96 downscaled in the decoding worker
        monkeypatch.setitem(sys.modules, "tqdm", None)
        status, err = run(args(tmp_path / "b"), capsys)
        assert status == 0 and "2/2 images" in err and "images/s, ETA 0:00:00" in err
        status, err = run(args(tmp_path / "c") + ["--quiet"], capsys)
        assert status == 0 and "2/2" not in err and "loading" not in err and "2 images: 2 segmented" in err

class TestHalfPrecision:
    @pytest.mark.parametrize("model", ["litesam", "sam"])
    def test_bf16(self, space, tmp_path, capsys, model):
        checkpoint = {"litesam": ["--checkpoint", space.litesam_checkpoint, *option_flags(LITESAM_OPTIONS)],
                      "sam": ["--model", "sam", "--model-type", "tests._checkpoints:build_tiny_sam", "--checkpoint",
                              space.sam_checkpoint, *option_flags(SAM_OPTIONS)]}[model]
        out = tmp_path / "out"
        status, err = run([space.photos.root / "camera.png", "--out", out, "--dtype", "bf16", *checkpoint], capsys)
        assert status == 0 and ", bf16) on cpu" in err, err
        annotations = json.loads((out / "sa1b" / "camera.json").read_text())["annotations"]
        assert annotations
        for annotation in annotations:
            check_rle_geometry(annotation)
            assert isinstance(annotation["predicted_iou"], float)

    def test_dtype_and_device_reach_the_model(self, space):
        spec = segmenters.SegmenterSpec(model="litesam", checkpoint=str(space.litesam_checkpoint), dtype="fp16",
                                        device="cpu")
        model = segmenters.load_model(spec)
        assert {p.dtype for p in model.parameters()} == {torch.float16}
        assert {p.device.type for p in model.parameters()} == {"cpu"}


# ------------------------------------------------------------------------------------------ SAM 2
SAM2_OPTIONS = {"points_per_side": 2, "points_per_batch": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                "box_nms_thresh": 1.0, "mask_threshold": 0.5}


@pytest.fixture(scope="module")
def sam2_files(tmp_path_factory):
    """(checkpoint, YAML config): hiera-tiny's weights, and its config at 256 px (a user's fine-tuned config;
    the encoder is 10x faster on a CPU than at 1024)."""
    sam2 = pytest.importorskip("sam2")
    from omegaconf import OmegaConf

    from tests._checkpoints import SAM2_CONFIG, tiny_sam2_checkpoint

    root = tmp_path_factory.mktemp("sam2")
    config = OmegaConf.load(Path(sam2.__file__).parent / SAM2_CONFIG)
    config.model.image_size = 256
    OmegaConf.save(config, root / "sam2.1_hiera_t_256.yaml")
    return tiny_sam2_checkpoint(root / "tiny_sam2.pt"), root / "sam2.1_hiera_t_256.yaml"


def sam2_reference_generator():
    """sam2's own SAM2AutomaticMaskGenerator (its signature), able to run any image_size and batches."""
    import functools

    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    class Sam2Reference(SAM2AutomaticMaskGenerator):
        @functools.wraps(SAM2AutomaticMaskGenerator.__init__)  # keeps sam2's signature: the CLI checks it
        def __init__(self, model, *args, **kwargs):
            super().__init__(model, *args, **kwargs)
            size = model.image_size  # sam2's predictor hard-codes the 1024 px feature sizes
            self.predictor._bb_feat_sizes = [(size // 4,) * 2, (size // 8,) * 2, (size // 16,) * 2]

        def generate_batch(self, images):
            return [self.generate(image) for image in images]

    return Sam2Reference


class TestSAM2:
    def test_checkpoint_loads_as_build_sam2_builds(self, sam2_files, tmp_path):
        """Our loader (sam2 config name, or the same config as a YAML file) gives build_sam2's model."""
        import sam2
        from sam2.build_sam import build_sam2

        from tests._checkpoints import SAM2_CONFIG

        checkpoint, _ = sam2_files
        expected = build_sam2(SAM2_CONFIG, ckpt_path=str(checkpoint), device="cpu")
        yaml = tmp_path / "my_sam2.yaml"
        shutil.copy(Path(sam2.__file__).parent / SAM2_CONFIG, yaml)
        for config in (SAM2_CONFIG, str(yaml)):
            model = segmenters.load_model(segmenters.SegmenterSpec(model="sam2", config=config,
                                                                   checkpoint=str(checkpoint), device="cpu"))
            assert type(model) is type(expected)
            for (name, a), (_, b) in zip(model.state_dict().items(), expected.state_dict().items()):
                assert torch.equal(a, b), name
            for attribute in ("dynamic_multimask_via_stability", "dynamic_multimask_stability_delta",
                              "dynamic_multimask_stability_thresh"):
                assert getattr(model.sam_mask_decoder, attribute) == getattr(expected.sam_mask_decoder, attribute)
        assert segmenters.sam2_config_for("/x/sam2.1_hiera_large.pt") == "configs/sam2.1/sam2.1_hiera_l.yaml"

    def test_cli_wiring_with_sam2s_own_generator(self, sam2_files, space, tmp_path, capsys, monkeypatch):
        """A YAML config, the checkpoint, dtype and every option reach SAM 2's generator: sam2's own
        SAM2AutomaticMaskGenerator standing in for the drop-in, the CLI builds it as a user would and writes
        what it generates."""
        checkpoint, yaml = sam2_files
        used = []

        class Sam2Generator(sam2_reference_generator()):
            def generate_batch(self, images):
                used.append(self)
                return super().generate_batch(images)

        real = segmenters._generator_class
        monkeypatch.setattr(segmenters, "_generator_class", lambda family: Sam2Generator if family == "sam2"
                            else real(family))
        out = tmp_path / "out"
        status, err = run([space.photos.root / "astronaut.png", "--out", out, "--model", "sam2", "--config", yaml,
                           "--checkpoint", checkpoint, "--use-m2m", "--no-multimask-output", "--device", "cpu",
                           *option_flags(SAM2_OPTIONS)], capsys)
        assert status == 0, err
        generator, = used
        expected = dict(SAM2_OPTIONS, use_m2m=True, multimask_output=False, output_mode="coco_rle")
        del expected["points_per_side"]
        assert {name: getattr(generator, name) for name in expected} == expected
        assert len(generator.point_grids) == 1 and generator.point_grids[0].shape == (4, 2)  # 2 points per side
        model = generator.predictor.model
        assert model.image_size == 256 and model.sam_mask_decoder.dynamic_multimask_via_stability
        saved = torch.load(checkpoint, weights_only=True)["model"]
        assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
        assert not model.training and next(model.parameters()).dtype == torch.float32
        annotations = json.loads((out / "sa1b" / "astronaut.json").read_text())["annotations"]
        assert annotations
        for annotation in annotations:
            check_rle_geometry(annotation)

    def test_cli_equals_sam2s_generator_through_the_drop_in(self, sam2_files, space, tmp_path, capsys):
        checkpoint, yaml = sam2_files
        out = tmp_path / "out"
        names = ["rocket_exif.jpg", "camera.png"]
        status, err = run([*(space.photos.root / n for n in names), space.photos.root / space.photos.corrupt,
                           "--out", out, "--model", "sam2", "--checkpoint", checkpoint, "--config", yaml,
                           "--format", "sa1b,coco", "--batch-size", "1", "--num-workers", "1",
                           *option_flags(SAM2_OPTIONS)], capsys)
        assert status == 0 and "1 failed" in err, err
        model = segmenters.load_model(segmenters.SegmenterSpec(model="sam2", config=str(yaml),
                                                               checkpoint=str(checkpoint), device="cpu"))
        reference = sam2_reference_generator()(model, output_mode="coco_rle", **SAM2_OPTIONS)
        for name in names:
            expected = reference.generate(space.photos.upright[name])
            annotations = json.loads((out / "sa1b" / f"{Path(name).stem}.json").read_text())["annotations"]
            assert len(annotations) == len(expected) > 0
            for annotation, record in zip(annotations, expected):
                for key in ("segmentation", "area", "bbox", "point_coords", "crop_box"):
                    assert annotation[key] == record[key], key
                for key in ("predicted_iou", "stability_score"):
                    assert annotation[key] == pytest.approx(record[key], abs=1e-5), key


# ------------------------------------------------------------------------------------------ errors
class TestErrors:
    @pytest.mark.parametrize("extra, message", [
        (["--points-per-side", "0"], "--points-per-side: invalid value '0'"),
        (["--pred-iou-thresh", "abc"], "--pred-iou-thresh: invalid value 'abc'"),
        (["--box-nms-thresh", "2"], "must be in [0, 1]"),
        (["--stability-score-thresh", "nan"], "finite"),
        (["--format", "sa1b,yaml"], "invalid format"),
        (["--dtype", "fp8"], "--dtype: invalid choice"),
        (["--model", "sam3"], "--model: invalid choice"),
        (["--batch-size", "-1"], "--batch-size: invalid batch size"),
        (["--nms", "soft"], "--nms: invalid choice"),
    ])
    def test_bad_option_values(self, space, tmp_path, capsys, extra, message):
        status, err = run([space.photos.root, "--out", tmp_path, *extra], capsys)
        assert status == 2 and message in err and "usage:" in err

    def test_missing_out_and_help(self, capsys):
        assert run(["x.jpg"], capsys)[0] == 2
        status = cli.main(["--help"])
        out = capsys.readouterr().out
        assert status == 0 and "--points-per-side" in out and "--crop-n-points-downscale-factor" in out

    @pytest.mark.parametrize("make_args, message", [
        (lambda s, t: [t / "missing.jpg"], "no such file or folder"),
        (lambda s, t: ["--model", "sam", "--model-type", "vit_b", "--checkpoint", s.litesam_checkpoint],
         "It looks like a Lite-SAM checkpoint: use --model litesam"),
        (lambda s, t: ["--model", "sam", "--model-type", "vit_b", "--checkpoint", s.sam_checkpoint],
         "not one of SAM's registry models: use --model sam --model-type module:function"),
        (lambda s, t: ["--checkpoint", s.sam_checkpoint], "cannot load"),
        (lambda s, t: ["--model", "sam"], "--model sam needs --checkpoint"),
        (lambda s, t: ["--model", "sam", "--model-type", "vit_x", "--checkpoint", s.sam_checkpoint],
         "unknown --model-type 'vit_x'"),
        (lambda s, t: ["--model", "sam", "--model-type", "no_such_module:build", "--checkpoint", s.sam_checkpoint],
         "cannot import the --model-type builder"),
        (lambda s, t: ["--model-type", "vit_b"], "--model-type is for --model sam"),
        (lambda s, t: ["--model", "sam", "--config", "x.yaml", "--checkpoint", s.sam_checkpoint],
         "--config is for --model sam2 and litesam"),
        (lambda s, t: ["--checkpoint", t / "nope.pt"], "no such checkpoint file"),
        (lambda s, t: ["--checkpoint", s.photos.root / "notes.txt"], "torch.load cannot read it"),
        (lambda s, t: ["--points-per-side", "8"], "--points-per-side is not an option of --model litesam"),
        (lambda s, t: ["--model", "sam", "--checkpoint", s.sam_checkpoint, "--points-per-image", "8",
                       "--prompt", "box"], "--points-per-image, --prompt are not options of --model sam"),
        (lambda s, t: ["--config", "huge"], "is not a Lite-SAM config"),
        (lambda s, t: ["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"],
         "--device"),
    ])
    def test_clear_errors(self, space, tmp_path, capsys, make_args, message):
        args = make_args(space, tmp_path)
        inputs = [] if args and isinstance(args[0], Path) and args[0].name == "missing.jpg" else [space.photos.root]
        status, err = run([*inputs, *args, "--out", tmp_path / "out", "--no-progress"], capsys)
        assert status == 2 and message in err, err
        assert err.strip().splitlines()[-1].startswith("litesam-segment: error:")

    def test_wrong_checkpoints_for_sam2(self, space, tmp_path):
        pytest.importorskip("sam2")
        from tests._checkpoints import SAM2_CONFIG

        def load(**kwargs):
            with pytest.raises(segmenters.ModelLoadError) as error:
                segmenters.load_model(segmenters.SegmenterSpec(model="sam2", device="cpu", **kwargs))
            return str(error.value)

        for checkpoint, hint in [(space.litesam_checkpoint, "Lite-SAM checkpoint: use --model litesam"),
                                 (space.sam_checkpoint, "SAM checkpoint with a ViT of width 48")]:
            message = load(config=SAM2_CONFIG, checkpoint=str(checkpoint))
            assert "as a SAM 2 checkpoint for --config" in message and hint in message, message
        assert "--model sam2 needs --config" in load(checkpoint=str(space.sam_checkpoint))
        assert "--model sam2 needs --checkpoint" in load(config=SAM2_CONFIG)
        assert "is neither a YAML file nor a sam2 config" in load(config="configs/nope.yaml",
                                                                  checkpoint=str(space.sam_checkpoint))

    @pytest.mark.parametrize("module, args, extra", [
        ("PIL", [], "[cli]"),
        ("pycocotools", [], "[cli]"),
        ("segment_anything", ["--model", "sam", "--checkpoint", "CKPT"], "[sam]"),
        ("sam2", ["--model", "sam2", "--config", "c.yaml", "--checkpoint", "CKPT"], "[sam2]"),
        ("ray", ["--ray", "local"], "[ray]"),
    ])
    def test_missing_extras_name_the_extra(self, space, tmp_path, capsys, monkeypatch, module, args, extra):
        for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, module, None)  # "import module" now raises ImportError
        args = [str(space.litesam_checkpoint) if a == "CKPT" else a for a in args] or ["--config", "tiny"]
        status, err = run([space.photos.root, "--out", tmp_path, *args], capsys)
        assert status == 2 and f"pip install 'litesam_kernels{extra}'" in err, err


# ------------------------------------------------------------------------------------------ packaging
class TestPackaging:
    def test_extras_install_what_the_errors_name(self):
        """setup.py's extras hold every distribution litesam_kernels._extras names, [all] holds them all,
        and litesam-segment is the console script."""
        import ast

        from litesam_kernels._extras import OPTIONAL_MODULES

        source = (Path(__file__).resolve().parent.parent / "setup.py").read_text()
        tree = ast.parse(source)
        extras_node = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "EXTRAS")
        extras = ast.literal_eval(extras_node)
        for module, (distribution, extra) in OPTIONAL_MODULES.items():
            assert distribution in extras[extra], (module, extra)
        assert "EXTRAS[\"all\"] = sorted({r for name in (\"triton\", \"cli\", \"sam\", \"sam2\", \"ray\")" in source
        assert '"litesam-segment=litesam_kernels.cli:main"' in source

    def test_python_dash_m(self):
        from tests._cli_runs import run_cli_subprocess

        result = run_cli_subprocess(["--help"])
        assert result.returncode == 0 and "--skip-existing" in result.stdout and "torchrun" in result.stdout
