"""AutoPPN: the prompt head that replaces SegEvery's grid of points with regressed points and boxes.

Our reconstruction (the paper's head is not public; ``shared/design/LITESAM_MODEL.md``): on the stride-16
image embedding, 2x (depthwise 3x3 + 1x1 + GELU), then two 1x1 heads:
- point confidence: 1 logit per cell (sigmoid = probability that an object's centre is in the cell);
- box regression: 4 distances (left, top, right, bottom) from the cell centre to the object's box, in
  stride units, made positive by ``exp`` (FCOS style; clamped so random weights cannot overflow).
``litesam_kernels.ops.ppn_decode`` turns both into K point + box prompts per image.
Training: ``litesam-train ppn`` (:mod:`litesam_kernels.train`) learns it from a SAM / SAM 2 teacher's
automatic masks: focal loss on the heatmap with Gaussian targets at mask centres, L1 + GIoU on the ltrb
boxes at the positive cells.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn

_PRIOR_PROBABILITY = 0.1  # heatmap bias so an untrained head starts at the default score threshold
_MAX_LOG_DISTANCE = 8.0   # exp(8) ~ 3000 stride units: beyond any image


class AutoPPN(nn.Module):
    def __init__(self, in_channels: int, channels: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels),
            nn.Conv2d(in_channels, channels, 1),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
            nn.Conv2d(channels, channels, 1),
            nn.GELU(),
        )
        self.heatmap = nn.Conv2d(channels, 1, 1)
        self.box = nn.Conv2d(channels, 4, 1)
        nn.init.constant_(self.heatmap.bias, -math.log((1 - _PRIOR_PROBABILITY) / _PRIOR_PROBABILITY))

    def forward(self, image_embeddings: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) -> heatmap logits (B, 1, h, w), box distances (B, 4, h, w) in stride units (>= 0)."""
        features = self.body(image_embeddings)
        distances = torch.exp(self.box(features).clamp(max=_MAX_LOG_DISTANCE))
        return self.heatmap(features), distances
