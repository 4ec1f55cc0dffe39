"""Where training data and teachers come from: image files, and SAM / SAM 2 teachers as their projects ship them.

This is the one module of ``litesam_kernels.train`` that overlaps with the ``litesam-segment`` CLI's helpers
(image discovery and decoding, model building from checkpoints); it is kept small so the two can share one
implementation.

- :func:`find_images`: the images under a folder (recursive, sorted, so every rank of a torchrun job sees the
  same list), as paths relative to it;
- :func:`load_image`: one file -> (H, W, 3) uint8 RGB, upright (EXIF orientation applied);
- :func:`build_sam`: a segment_anything ``Sam`` from ``sam_model_registry[model_type](checkpoint=...)``, or any
  builder ``module:function`` with that signature;
- :func:`build_sam2`: a sam2 ``SAM2Base`` from a sam2 config name and an official-format
  checkpoint (``{"model": state_dict}``), at a given input size.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif")


class SourceError(ValueError):
    """An image folder without images, an unreadable image, or a teacher that cannot be built."""


def find_images(root) -> List[str]:
    """Image files under ``root`` (any depth; hidden names skipped), as sorted POSIX paths relative to it."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"--images must be a folder of images, got {str(root)!r} (not a folder)")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    if not found:
        raise SourceError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {str(root)!r}")
    return sorted(found)


def load_image(path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, EXIF orientation applied (grayscale/palette/alpha converted).

    Raises:
        SourceError: the file cannot be decoded (the message names it).
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            opened.load()
            return np.array(ImageOps.exif_transpose(opened).convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read image {str(path)!r}: {exc}") from exc


def _import_builder(spec: str) -> Callable:
    module_name, _, attribute = spec.partition(":")
    try:
        builder = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise SourceError(f"cannot import the teacher builder {spec!r}: {exc}") from exc
    if not callable(builder):
        raise SourceError(f"teacher builder {spec!r} is not callable")
    return builder


def build_sam(model_type: str, checkpoint: str):
    """segment_anything's ``sam_model_registry[model_type](checkpoint=checkpoint)`` (``vit_h``, ``vit_l``,
    ``vit_b``, ``default``), or ``module:function`` for any builder with that signature; eval mode."""
    if ":" in model_type:
        builder = _import_builder(model_type)
    else:
        from segment_anything import sam_model_registry

        if model_type not in sam_model_registry:
            raise SourceError(f"unknown --teacher-type {model_type!r}: segment_anything's are "
                              f"{', '.join(sam_model_registry)} (or a builder module:function)")
        builder = sam_model_registry[model_type]
    try:
        return builder(checkpoint=checkpoint).eval()
    except Exception as exc:  # noqa: BLE001  (whatever the builder raises, the user needs the file and why)
        raise SourceError(f"cannot load {checkpoint!r} as a SAM {model_type} checkpoint: {exc}") from exc


def build_sam2(config: str, checkpoint: str, image_size: Optional[int] = None):
    """sam2's ``build_sam2(config, checkpoint)`` for a sam2 config name (such as
    ``configs/sam2.1/sam2.1_hiera_l.yaml``), in eval mode, with its input size set to ``image_size`` when
    given (Hiera interpolates its position embeddings, so any multiple of 16 works)."""
    from sam2.build_sam import build_sam2 as sam2_builder

    overrides = [f"++model.image_size={int(image_size)}"] if image_size is not None else []
    try:
        return sam2_builder(config, checkpoint, device="cpu", hydra_overrides_extra=overrides).eval()
    except Exception as exc:  # noqa: BLE001  (hydra's and load_state_dict's errors alike)
        raise SourceError(f"cannot build SAM 2 from --teacher-config {config!r} (a sam2 config name, e.g. "
                          f"configs/sam2.1/sam2.1_hiera_l.yaml) and --teacher-checkpoint {checkpoint!r}: {exc}") from exc
