"""Tiny random-weight teachers and a handful of real photos for the training tests.

- SAM: :func:`tests.tiny_sam.tiny_sam` (segment_anything's modules at 128 px, 32-dim embeddings, decoder
  rescaled so masks are blobs that depend on the prompt), saved as a state_dict file and built back by
  :func:`build_tiny_sam`, a segment_anything registry-style builder (``--teacher-type
  tests._teachers:build_tiny_sam``). :data:`TINY_SAM_STUDENT` is the ``tiny`` Lite-SAM config with that
  teacher's decoder widths, so the teacher's decoder weights load into the student.
- SAM 2: sam2.1 hiera-tiny (random weights, decoder scaled as research/env.md says), official format
  ``{"model": state_dict}``; run at 128 px (``--teacher-config configs/sam2.1/sam2.1_hiera_t.yaml``) with a
  256-channel student (:data:`SAM2_STUDENT`).
- Photos: scikit-image's, downscaled to at most ``PHOTO_SIDE`` pixels, as PNG and JPEG files.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from litesam_kernels.model import get_config

SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
PHOTO_SIDE = 112
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry")
TINY_SAM_STUDENT = replace(get_config("tiny"), decoder_depth=2, decoder_iou_head_depth=2, mask_in_chans=8)
SAM2_STUDENT = replace(get_config("tiny"), encoder=replace(get_config("tiny").encoder, out_channels=256),
                       prompt_embed_dim=256)


def build_tiny_sam(checkpoint=None):
    """segment_anything registry-style builder of the tiny Sam, with ``checkpoint``'s weights if given."""
    from tests.tiny_sam import tiny_sam

    sam = tiny_sam()
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam.eval()


def tiny_sam_checkpoint(path: Path, seed: int = 0) -> Path:
    from tests.tiny_sam import tiny_sam

    torch.save(tiny_sam(seed=seed).state_dict(), path)
    return path


def tiny_sam2_checkpoint(path: Path, seed: int = 0) -> Path:
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    model = build_sam2(SAM2_CONFIG, ckpt_path=None, device="cpu")
    with torch.no_grad():
        for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(300)
        for embedding in model.sam_prompt_encoder.point_embeddings:
            embedding.weight.mul_(30)
    torch.save({"model": model.state_dict()}, path)
    return path


def config_file(path: Path, config) -> Path:
    path.write_text(json.dumps(config.to_dict()))
    return path


def photo_folder(root: Path, names=PHOTOS, side: int = PHOTO_SIDE) -> Path:
    """scikit-image photos under ``root`` (alternately PNG and JPEG, one in a subfolder)."""
    import skimage.data
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        image = Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")
        image.thumbnail((side, side), Image.Resampling.BILINEAR)
        folder = root / "more" if i == len(names) - 1 else root
        folder.mkdir(exist_ok=True)
        image.save(folder / (f"{name}.png" if i % 2 == 0 else f"{name}.jpg"), quality=95)
    return root
