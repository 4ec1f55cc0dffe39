"""Tiny SAM, SAM 2 and Lite-SAM checkpoints for the CLI and training tests (the teachers), written the way each
family ships its own.

- SAM: a state_dict file of :func:`tests.tiny_sam.tiny_sam` (segment_anything's modules, 128 px input);
  the CLI loads it with ``--model-type tests._checkpoints:build_tiny_sam`` (a builder with the signature
  of segment_anything's ``sam_model_registry`` entries), since no registry architecture is small enough
  to run on a CPU in a test.
- SAM 2: ``{"model": state_dict}`` of sam2.1 hiera-tiny (random weights; its decoder scaled as
  research/env.md says so that masks depend on the prompt), with sam2's own config name. (The SAM 2
  drop-in tests' ``tests._sam2_oracle.tiny_sam2`` is another model on purpose: its decoder is set so that
  masks follow the photo and every filter decides something, including empty masks with NaN stability
  scores, which the CLI's JSON writes as null.)
- Lite-SAM: ``LiteSAM.save`` of ``build_litesam("tiny")``.
"""
from __future__ import annotations

from pathlib import Path

import torch

SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def build_tiny_sam(checkpoint=None):
    """segment_anything registry-style builder: the tiny Sam, with ``checkpoint``'s weights if given."""
    from tests.tiny_sam import tiny_sam

    sam = tiny_sam()
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam.eval()


def tiny_sam_checkpoint(path: Path, seed: int = 0) -> Path:
    from tests.tiny_sam import tiny_sam

    torch.save(tiny_sam(seed=seed).state_dict(), path)
    return path


def tiny_litesam_checkpoint(path: Path, seed: int = 0) -> Path:
    from litesam_kernels.model import build_litesam

    torch.manual_seed(seed)
    build_litesam("tiny").save(path)
    return path


def tiny_sam2(seed: int = 0):
    """sam2.1 hiera-tiny with random weights whose decoder gives prompt-dependent masks."""
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    model = build_sam2(SAM2_CONFIG, ckpt_path=None, device="cpu")
    with torch.no_grad():
        for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(300)
        for embedding in model.sam_prompt_encoder.point_embeddings:
            embedding.weight.mul_(30)
    return model.eval()


def tiny_sam2_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.save({"model": tiny_sam2(seed).state_dict()}, path)
    return path
