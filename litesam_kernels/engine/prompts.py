"""Prompt sources: where a crop's prompts come from.

- :class:`PointGridPrompts`: SAM's point grid of the crop's layer, scaled to the crop (float64), handed to
  the model adapter for its coordinate transform (SAM 1 / SAM 2 / Lite-SAM each their own);
- :class:`AutoPPNPrompts`: Lite-SAM's AutoPPN head, decoded on the device by ``ops.ppn_decode`` (up to K
  point and box prompts per crop, fixed size, padding flagged invalid); the records report the peak
  (its cell centre) in crop pixels.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch

from litesam_kernels.engine.adapters import Encoded, Prompts
from litesam_kernels.ops.ppn_decode import ppn_decode

PROMPT_MODES = ("box", "point", "point+box")


class PointGridPrompts:
    """SAM's grids: ``point_grids[layer]`` (normalised (x, y) in [0, 1]) times the crop's (w, h)."""

    def __init__(self, point_grids: Sequence[np.ndarray]) -> None:
        self.point_grids = list(point_grids)

    def for_crops(self, adapter, layers: Sequence[int], encoded: Sequence[Encoded]) -> List[Prompts]:
        return [adapter.grid_prompts(self.point_grids[layer] * np.array(item.crop_size)[None, ::-1], item)
                for layer, item in zip(layers, encoded)]


class AutoPPNPrompts:
    """Lite-SAM's AutoPPN prompts: ``k`` per crop from the heatmap peaks (``ops.ppn_decode``).

    Args:
        k: prompts per crop; score_threshold: the peak score threshold;
        prompt: "box" (the regressed box), "point" (the peak) or "point+box".
    """

    def __init__(self, k: int, score_threshold: float, prompt: str = "box") -> None:
        if prompt not in PROMPT_MODES:
            raise ValueError(f"prompt must be one of {PROMPT_MODES}, got {prompt!r}")
        self.k = k
        self.score_threshold = score_threshold
        self.prompt = prompt

    def for_crops(self, adapter, layers: Sequence[int], encoded: Sequence[Encoded]) -> List[Prompts]:
        heatmap_logits = torch.cat([item.heads[0] for item in encoded])
        box_regression = torch.cat([item.heads[1] for item in encoded])
        device = heatmap_logits.device
        input_sizes = torch.tensor([item.input_size for item in encoded], dtype=torch.int64, device=device)
        stride = adapter.image_size / heatmap_logits.shape[-1]
        decoded = ppn_decode(heatmap_logits, box_regression, k=self.k, score_threshold=self.score_threshold,
                             stride=stride, image_sizes=input_sizes)
        valid = torch.arange(self.k, device=device) < decoded.num_valid[:, None]
        prompts = []
        for i, item in enumerate(encoded):
            (crop_h, crop_w), (input_h, input_w) = item.crop_size, item.input_size
            scale = torch.tensor([crop_w / input_w, crop_h / input_h], device=device)
            prompts.append(Prompts(
                decoded.points[i] * scale,
                points=decoded.points[i] if "point" in self.prompt else None,
                boxes=decoded.boxes[i] if "box" in self.prompt else None,
                valid=valid[i],
            ))
        return prompts


__all__ = ["AutoPPNPrompts", "PROMPT_MODES", "PointGridPrompts"]
