"""Students and a handful of real photos for the training tests; the teachers are the CLI tests' tiny checkpoints.

- Teachers: :mod:`tests._checkpoints` (a tiny segment_anything ``Sam`` as a state_dict file, built back by
  ``--teacher-type tests._checkpoints:build_tiny_sam``; sam2.1 hiera-tiny in the official ``{"model": ...}``
  format, run at 128 px with ``--teacher-config configs/sam2.1/sam2.1_hiera_t.yaml``).
- Students: :data:`TINY_SAM_STUDENT` is the ``tiny`` Lite-SAM config with the tiny SAM's decoder widths, so
  the teacher's decoder weights load into the student; :data:`SAM2_STUDENT` has SAM 2's 256 channels.
  :func:`config_file` writes one as ``--config`` reads it.
- Photos: scikit-image's, downscaled to at most ``PHOTO_SIDE`` pixels, as PNG and JPEG files, all decodable
  (``tests/_photos.py`` is the CLI's folder of awkward files: a corrupt one would stop a training run).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from litesam_kernels.model import get_config
from tests._photos import downscaled

PHOTO_SIDE = 112
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry")
TINY_SAM_STUDENT = replace(get_config("tiny"), decoder_depth=2, decoder_iou_head_depth=2, mask_in_chans=8)
SAM2_STUDENT = replace(get_config("tiny"), encoder=replace(get_config("tiny").encoder, out_channels=256),
                       prompt_embed_dim=256)


def config_file(path: Path, config) -> Path:
    path.write_text(json.dumps(config.to_dict()))
    return path


def photo_folder(root: Path, names=PHOTOS, side: int = PHOTO_SIDE) -> Path:
    """scikit-image photos under ``root`` (alternately PNG and JPEG, one in a subfolder)."""
    import skimage.data
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        rgb = np.asarray(Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB"))
        folder = root / "more" if i == len(names) - 1 else root
        folder.mkdir(exist_ok=True)
        Image.fromarray(downscaled(rgb, side)).save(folder / (f"{name}.png" if i % 2 == 0 else f"{name}.jpg"),
                                                    quality=95)
    return root
