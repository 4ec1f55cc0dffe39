"""Image datasets for segment-everything runs: finding the images, naming their outputs, decoding them.

- :func:`discover_images`: files, folders (``recursive``), glob patterns and file lists -> an ordered,
  de-duplicated list of :class:`ImageItem`. The order (inputs as given, each folder sorted) is what gives
  every image its id (``index + 1``) and what torchrun ranks shard by, so it must not depend on the rank.
- :func:`load_image`: one file -> (H, W, 3) uint8 RGB, with its EXIF orientation applied; grayscale,
  palette, CMYK, alpha (dropped, as OpenCV's ``imread`` and ``Image.convert("RGB")`` do) and 16-bit
  images (scaled by 255/65535) converted.
- :class:`ImageDataset` / :func:`image_loader`: decoding (and optional downscaling) in
  ``torch.utils.data.DataLoader`` workers; an unreadable image comes out as a :class:`DecodedImage` with an
  ``error`` instead of stopping the run.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from litesam_kernels._extras import require

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm",
                    ".jp2", ".jfif")
_GLOB_CHARS = frozenset("*?[")


class InputError(ValueError):
    """An input path, pattern or file list that yields no images (the message says which and why)."""


@dataclass(frozen=True)
class ImageItem:
    """One image of a run. ``index`` is its position in the whole run (image id = index + 1), ``name``
    its path relative to the folder / glob root / file list it came from (COCO's ``file_name``), and
    ``stem`` the name its outputs get (``name`` without extension, unique within the run)."""

    index: int
    path: str
    name: str
    stem: str

    @property
    def image_id(self) -> int:
        return self.index + 1


@dataclass
class DecodedImage:
    item: ImageItem
    image: Optional[np.ndarray]  # (H, W, 3) uint8, or None when decoding failed
    error: Optional[str] = None


# ------------------------------------------------------------------------------------------ discovery
def discover_images(inputs: Sequence[str] = (), *, file_lists: Sequence[str] = (), recursive: bool = False,
                    extensions: Sequence[str] = IMAGE_EXTENSIONS, exclude: Sequence[str] = ()) -> List[ImageItem]:
    """The images of ``inputs`` (files, folders, glob patterns) and ``file_lists`` (text files with one
    path per line; blank lines and lines starting with ``#`` ignored; relative paths relative to the
    list's folder), in that order.

    Folders and globs keep only files whose extension (case-insensitive) is in ``extensions`` and skip
    hidden names (leading ``.``: also our own temporary files); an explicitly named file or list entry is
    taken whatever its extension. Paths under ``exclude`` (the output folder) are skipped. An image found
    twice keeps its first place.

    Raises:
        InputError: a path that does not exist, a folder or pattern without images, an unreadable list,
            or no image at all.
    """
    extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    excluded = [os.path.realpath(p) for p in exclude]
    found: List[tuple] = []  # (path, name)
    for source in inputs:
        found += _expand(str(source), recursive, extensions, excluded)
    for file_list in file_lists:
        found += _read_file_list(str(file_list))
    seen, unique = set(), []
    for path, name in found:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append((path, name))
    if not unique:
        raise InputError("no input images: give image files, folders, glob patterns or --file-list")
    unique = _disambiguate_names(unique)
    stems = assign_stems([name for _, name in unique])
    return [ImageItem(i, path, name, stem) for i, ((path, name), stem) in enumerate(zip(unique, stems))]


def _is_image_name(name: str, extensions: Sequence[str]) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions


def _is_excluded(path: str, excluded: Sequence[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == e or real.startswith(e + os.sep) for e in excluded)


def _expand(source: str, recursive: bool, extensions, excluded) -> List[tuple]:
    if os.path.isfile(source):
        return [(source, os.path.basename(source))]
    if os.path.isdir(source):
        found = _walk(source, recursive, extensions, excluded)
        if not found:
            hint = "" if recursive else " (its subfolders are searched with --recursive)"
            raise InputError(f"no images in folder {source!r}{hint}")
        return found
    if _GLOB_CHARS & set(source):
        root = _glob_root(source)
        matches = sorted(glob.glob(source, recursive=True))
        found = [(p, os.path.relpath(p, root)) for p in matches
                 if os.path.isfile(p) and _is_image_name(os.path.basename(p), extensions)
                 and not _is_excluded(p, excluded)]
        if not found:
            raise InputError(f"no images match {source!r}")
        return found
    raise InputError(f"no such file or folder: {source!r}")


def _walk(folder: str, recursive: bool, extensions, excluded) -> List[tuple]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if recursive and not d.startswith(".")
                             and not _is_excluded(os.path.join(dirpath, d), excluded))
        for filename in sorted(filenames):
            path = os.path.join(dirpath, filename)
            if _is_image_name(filename, extensions) and not _is_excluded(path, excluded):
                found.append((path, os.path.relpath(path, folder)))
    return found


def _glob_root(pattern: str) -> str:
    """The folder a glob pattern starts from: its leading parts without wildcards."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return os.path.join(*fixed) if fixed else "."


def _read_file_list(file_list: str) -> List[tuple]:
    try:
        text = Path(file_list).read_text()
    except OSError as exc:
        raise InputError(f"cannot read file list {file_list!r}: {exc.strerror or exc}") from exc
    base = os.path.dirname(file_list)
    found = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if os.path.isabs(entry):
            found.append((entry, os.path.basename(entry)))
        else:
            found.append((os.path.join(base, entry), _inside_name(entry)))
    if not found:
        raise InputError(f"file list {file_list!r} names no images")
    return found


def _inside_name(relative: str) -> str:
    """A relative path as an output name; one that climbs out (``../x.jpg``) is named by its basename,
    so that no output lands outside the output folder."""
    name = os.path.normpath(relative)
    return os.path.basename(name) if name.split(os.sep)[0] == ".." else name


def _disambiguate_names(found: List[tuple]) -> List[tuple]:
    """Different files with the same name (``A/x.jpg`` and ``B/x.jpg`` given as two folders) are named by
    their real paths relative to the deepest folder they share (``A/x.jpg``, ``B/x.jpg``). The names then
    depend on the set of files, not on the input order, so a resumed run with the inputs in another order
    finds each image's own outputs."""
    by_name: dict = {}
    for path, name in found:
        by_name.setdefault(name, []).append(os.path.realpath(path))
    renamed = {}
    for name, paths in by_name.items():
        if len(paths) > 1:
            root = os.path.commonpath([os.path.dirname(p) for p in paths])
            renamed.update({(name, p): os.path.relpath(p, root) for p in paths})
    return [(path, renamed.get((name, os.path.realpath(path)), name)) for path, name in found]


def assign_stems(names: Sequence[str]) -> List[str]:
    """Output stems for image ``names``: the name without its extension; names whose stems clash keep
    their extension, and if that still clashes get ``_<position>``. Depends only on the whole list, so
    every rank computes the same stems."""
    plain = [os.path.splitext(name)[0] for name in names]
    counts: dict = {}
    for stem in plain:
        counts[stem] = counts.get(stem, 0) + 1
    stems, used = [], set()
    for i, (name, stem) in enumerate(zip(names, plain)):
        if counts[stem] > 1:
            stem = name
        if stem in used:
            stem = f"{stem}_{i}"
        used.add(stem)
        stems.append(stem)
    return stems


def shard(items: Sequence[ImageItem], rank: int, world_size: int, block: int = 1) -> List[ImageItem]:
    """The items of one rank: blocks of ``block`` consecutive items, every ``world_size``-th block from
    ``rank`` (deterministic, disjoint, together the whole list). With ``block`` = the batch size every
    model call sees the images one process would batch together, so N ranks give the records of one
    process bit for bit (a SAM encoder batch's float results depend on what else is in it)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    return [item for i, item in enumerate(items) if (i // block) % world_size == rank]


# ------------------------------------------------------------------------------------------ decoding
def load_image(path: str, max_side: Optional[int] = None) -> np.ndarray:
    """Decode ``path`` to a (H, W, 3) uint8 RGB array, upright (EXIF orientation applied), downscaled
    (bilinear) so that its longer side is at most ``max_side`` if given. Raises what PIL raises
    (``OSError``, ``PIL.UnidentifiedImageError``, ...) for unreadable or truncated files."""
    Image = require("PIL.Image", "reading images")
    ImageOps = require("PIL.ImageOps", "reading images")
    with Image.open(path) as opened:
        opened.load()  # decode now: a truncated file fails here, inside the caller's error handling
        upright = ImageOps.exif_transpose(opened)
        rgb = to_rgb(upright)
    if max_side is not None and max(rgb.shape[:2]) > max_side:
        rgb = _downscale(rgb, max_side)
    return rgb


def to_rgb(image) -> np.ndarray:
    """A PIL image of any mode -> (H, W, 3) uint8 RGB (alpha dropped, 16-bit scaled to 8 bits)."""
    mode = image.mode
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I (32-bit int, what PIL makes of 16-bit PNGs)
        values = np.asarray(image).astype(np.float64)
        gray = np.round(np.clip(values, 0, 65535) * (255 / 65535)).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # a palette with transparency converts through RGBA (PIL's advice)
    return np.array(image.convert("RGB"), dtype=np.uint8)


def _downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    from litesam_kernels.segment_everything import resized_shape

    Image = require("PIL.Image", "resizing images")
    h, w = resized_shape(image.shape[0], image.shape[1], max_side)
    return np.array(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)


def decode(item: ImageItem, max_side: Optional[int] = None) -> DecodedImage:
    """:func:`load_image`, with any failure captured as the item's error (type and message)."""
    try:
        return DecodedImage(item, load_image(item.path, max_side))
    except Exception as exc:  # noqa: BLE001  (an unreadable image is data, not a bug: the run goes on)
        return DecodedImage(item, None, f"{type(exc).__name__}: {exc}")


class ImageDataset:
    """A map-style dataset of :class:`DecodedImage` (``torch.utils.data.Dataset`` protocol)."""

    def __init__(self, items: Sequence[ImageItem], max_side: Optional[int] = None) -> None:
        self.items = list(items)
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> DecodedImage:
        return decode(self.items[i], self.max_side)


def _as_list(batch):
    return list(batch)


def image_loader(items: Sequence[ImageItem], *, batch_size: int, num_workers: int, prefetch_factor: int = 2,
                 max_side: Optional[int] = None):
    """Batches (lists) of :class:`DecodedImage`, in ``items`` order, decoded by ``num_workers`` DataLoader
    worker processes (0: in this process) that keep ``prefetch_factor`` batches each ready ahead."""
    from torch.utils.data import DataLoader

    options = dict(batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_as_list)
    if num_workers > 0:
        options["prefetch_factor"] = prefetch_factor
    return DataLoader(ImageDataset(items, max_side), **options)
