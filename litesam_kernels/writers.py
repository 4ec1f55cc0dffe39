"""Writing segment-everything results of a dataset run, atomically (temporary file or folder, then rename).

Layout of an output folder ``OUT`` (:class:`OutputLayout`)::

    OUT/sa1b/<stem>.json        --format sa1b (and coco): one SA-1B JSON per image
    OUT/png/<stem>/{0,1,..}.png --format png: SAM's scripts/amg.py layout, one folder per image with a
    OUT/png/<stem>/metadata.csv   0/255 PNG per mask and amg.py's metadata.csv
    OUT/overlays/<stem>.png     --overlay: the masks tinted over the image
    OUT/coco.json               --format coco: one COCO dataset merged from the SA-1B files
    OUT/failures.txt            the images that could not be segmented: path, a tab, the error

Per-image outputs live in per-format folders and dataset files at the top, so no image name can clash
with a dataset file. An image is *done* when every per-image output its run asks for exists; each is
complete when it exists (written under a hidden temporary name in the same folder, then renamed), so a
run killed at any point leaves either the whole output or none, and ``--skip-existing`` can trust it.

Ids: an image's id is its position in the run's input list + 1; annotation ``k`` of image ``i`` has id
``i * ANNOTATION_ID_STRIDE + k`` in the SA-1B files and in the COCO file alike. Both depend only on the
input list, so ids are unique across torchrun shards and Ray actors without any coordination.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from litesam_kernels._extras import require
from litesam_kernels.datasets import ImageItem

FORMATS = ("sa1b", "coco", "png")
SA1B_DIR, PNG_DIR, OVERLAY_DIR = "sa1b", "png", "overlays"
COCO_FILE, FAILURES_FILE = "coco.json", "failures.txt"
ANNOTATION_ID_STRIDE = 1_000_000
# SAM's scripts/amg.py write_masks_to_folder, verbatim.
AMG_METADATA_HEADER = ("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
                       "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h")
COCO_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


# ------------------------------------------------------------------------------------------ atomic writes
def _temporary_name(final: Path, kind: str) -> Path:
    return final.with_name(f".{final.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Create or replace ``path`` with what ``write(file)`` writes: into a hidden temporary file in the
    same folder, flushed to disk, then renamed over ``path`` (``os.replace`` is atomic), so readers never
    see a partial file; on an error the temporary file is removed and ``path`` is left as it was."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_name(final, "tmp")
    try:
        with open(temporary, "xb") as file:  # mode 0666 & ~umask, unlike tempfile's 0600
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    atomic_write(path, lambda file: file.write(data))


def to_json_bytes(value: Any) -> bytes:
    """Compact JSON; NaN/inf are refused (they are not JSON) rather than written (scores: ``_json_score``)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


@contextlib.contextmanager
def atomic_directory(path) -> Iterator[Path]:
    """Yield a hidden temporary folder next to ``path``; when the block succeeds it becomes ``path``
    (an existing ``path`` is moved aside first and deleted after), when it fails it is deleted."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_name(final, "tmp")
    temporary.mkdir()
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if final.exists():
        old = _temporary_name(final, "old")
        os.rename(final, old)
        os.rename(temporary, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(temporary, final)


# ------------------------------------------------------------------------------------------ records
def annotation_id(image_id: int, k: int) -> int:
    if not 0 <= k < ANNOTATION_ID_STRIDE:
        raise ValueError(f"an image has more than {ANNOTATION_ID_STRIDE} masks: annotation ids would clash")
    return image_id * ANNOTATION_ID_STRIDE + k


def _json_score(value: float) -> Optional[float]:
    """A score as JSON can hold it: NaN (SAM's stability score of an empty mask, which SAM keeps when the
    stability threshold is 0) becomes null."""
    return value if math.isfinite(value) else None


def sa1b_annotations(records: Sequence[Dict[str, Any]], image_id: int) -> List[Dict[str, Any]]:
    """SAM-AMG records (``coco_rle`` output mode) -> SA-1B annotations (ids added, fields in SA-1B's order)."""
    return [{"id": annotation_id(image_id, k), "segmentation": r["segmentation"], "area": r["area"],
             "bbox": r["bbox"], "predicted_iou": _json_score(r["predicted_iou"]),
             "stability_score": _json_score(r["stability_score"]), "point_coords": r["point_coords"],
             "crop_box": r["crop_box"]} for k, r in enumerate(records)]


SOURCE_KEY = "source_path"  # beyond SA-1B's image fields: which file the annotations came from (for resuming)


def _sa1b_source(path) -> Optional[str]:
    try:
        return json.loads(Path(path).read_bytes())["image"].get(SOURCE_KEY)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def sa1b_document(item: ImageItem, height: int, width: int, records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """One image's SA-1B JSON: ``image`` {image_id, file_name, width, height} and ``annotations``."""
    return {"image": {"image_id": item.image_id, "file_name": item.name, "width": width, "height": height,
                      SOURCE_KEY: os.path.realpath(item.path)},
            "annotations": sa1b_annotations(records, item.image_id)}


def amg_metadata_csv(records: Sequence[Dict[str, Any]]) -> str:
    """SAM's scripts/amg.py ``metadata.csv`` for these records (same columns, same ``str`` formatting)."""
    rows = [AMG_METADATA_HEADER]
    for i, r in enumerate(records):
        fields = [i, r["area"], *r["bbox"], *r["point_coords"][0], r["predicted_iou"], r["stability_score"],
                  *r["crop_box"]]
        rows.append(",".join(str(f) for f in fields))
    return "\n".join(rows)


def record_masks(records: Sequence[Dict[str, Any]]) -> Iterator[np.ndarray]:
    """Each record's mask as an (H, W) bool array, whatever its output mode."""
    from litesam_kernels.segment_everything import segmentation_to_mask

    for record in records:
        yield segmentation_to_mask(record["segmentation"])


def overlay(image: np.ndarray, records: Sequence[Dict[str, Any]], alpha: float = 0.5, seed: int = 0) -> np.ndarray:
    """The image with each mask tinted a random colour, largest first so small masks stay visible."""
    canvas = image.astype(np.float32)
    colours = np.random.default_rng(seed).integers(40, 256, size=(len(records), 3))
    order = sorted(range(len(records)), key=lambda i: -records[i]["area"])
    masks = list(record_masks([records[i] for i in order]))
    for i, mask in zip(order, masks):
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colours[i]
    return canvas.clip(0, 255).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    Image = require("PIL.Image", "writing PNG files")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class OutputLayout:
    """Where a run's outputs go (see the module docstring) and how one image's results are written."""

    root: Path
    formats: Tuple[str, ...] = ("sa1b",)
    overlay: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise ValueError(f"formats must be some of {', '.join(FORMATS)}, got {', '.join(self.formats) or 'none'}")

    @property
    def writes_sa1b(self) -> bool:
        return "sa1b" in self.formats or "coco" in self.formats  # the COCO file is merged from them

    @property
    def output_mode(self) -> str:
        """The generators' output mode: COCO RLEs when any JSON is written, else binary masks (PNGs)."""
        return "coco_rle" if self.writes_sa1b else "binary_mask"

    def sa1b_path(self, item: ImageItem) -> Path:
        return self.root / SA1B_DIR / f"{item.stem}.json"

    def png_dir(self, item: ImageItem) -> Path:
        return self.root / PNG_DIR / item.stem

    def overlay_path(self, item: ImageItem) -> Path:
        return self.root / OVERLAY_DIR / f"{item.stem}.png"

    @property
    def coco_path(self) -> Path:
        return self.root / COCO_FILE

    @property
    def failures_path(self) -> Path:
        return self.root / FAILURES_FILE

    def per_image_outputs(self, item: ImageItem) -> List[Path]:
        paths = [self.sa1b_path(item)] if self.writes_sa1b else []
        paths += [self.png_dir(item)] if "png" in self.formats else []
        return paths + ([self.overlay_path(item)] if self.overlay else [])

    def is_done(self, item: ImageItem) -> bool:
        """Every output exists, and the SA-1B file (when written) was made from this very image file: an
        output folder reused for other inputs with the same names is redone, not taken as finished."""
        if not all(path.exists() for path in self.per_image_outputs(item)):
            return False
        return not self.writes_sa1b or _sa1b_source(self.sa1b_path(item)) == os.path.realpath(item.path)

    def write(self, item: ImageItem, image: np.ndarray, records: Sequence[Dict[str, Any]]) -> None:
        """Write one image's outputs; each appears complete or not at all."""
        height, width = image.shape[:2]
        if self.overlay:
            atomic_write_bytes(self.overlay_path(item), png_bytes(overlay(image, records)))
        if "png" in self.formats:
            with atomic_directory(self.png_dir(item)) as folder:
                for i, mask in enumerate(record_masks(records)):
                    (folder / f"{i}.png").write_bytes(png_bytes(mask.astype(np.uint8) * 255))
                (folder / "metadata.csv").write_text(amg_metadata_csv(records))
        if self.writes_sa1b:
            atomic_write_bytes(self.sa1b_path(item), to_json_bytes(sa1b_document(item, height, width, records)))

    # -------------------------------------------------------------------------------- dataset files
    def write_failures(self, failures: Sequence[Tuple[ImageItem, str]]) -> Optional[Path]:
        """``failures.txt`` (sorted by input order), or remove a stale one when nothing failed."""
        if not failures:
            with contextlib.suppress(FileNotFoundError):
                self.failures_path.unlink()
            return None
        lines = [f"{item.path}\t{' '.join(error.split())}" for item, error in sorted(failures, key=lambda f: f[0].index)]
        atomic_write_bytes(self.failures_path, ("\n".join(lines) + "\n").encode())
        return self.failures_path

    def merge_coco(self, items: Sequence[ImageItem], description: str = "litesam-segment") -> Tuple[int, int]:
        """Write ``coco.json`` from the SA-1B files of ``items`` (the whole run, in order; images without
        one, i.e. failed, are left out). Ids are recomputed from the current input list, so files left by
        an earlier run over a different list cannot clash. Streams annotations: memory holds one image's
        file at a time. Returns (images, annotations) written."""
        counts = [0, 0]

        def write(file) -> None:
            file.write(b'{"info":' + to_json_bytes({"description": description}) + b',"licenses":[],"categories":['
                       + to_json_bytes(COCO_CATEGORY) + b'],"annotations":[')
            images = []
            for item in items:
                path = self.sa1b_path(item)
                if not path.exists():
                    continue
                document = json.loads(path.read_bytes())
                info = document["image"]
                images.append({"id": item.image_id, "file_name": item.name, "width": info["width"],
                               "height": info["height"]})
                for k, annotation in enumerate(document["annotations"]):
                    coco = {"id": annotation_id(item.image_id, k), "image_id": item.image_id, "category_id": 1,
                            "iscrowd": 0, **{key: v for key, v in annotation.items() if key != "id"}}
                    file.write((b"," if counts[1] else b"") + to_json_bytes(coco))
                    counts[1] += 1
            counts[0] = len(images)
            file.write(b'],"images":' + to_json_bytes(images) + b"}")

        atomic_write(self.coco_path, write)
        return counts[0], counts[1]
