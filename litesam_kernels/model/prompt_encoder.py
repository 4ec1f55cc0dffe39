"""SAM's prompt encoder: same architecture, parameter and buffer names as ``segment_anything``'s
``PromptEncoder``, so its weights (SAM, MobileSAM) load unchanged and give the same embeddings.

Coordinates are pixels of the padded model input (``input_image_size``); like SAM, 0.5 is added to move a
pixel index to the pixel's centre. Beyond SAM: ``embed_prompts`` takes any leading batch shape (e.g.
images x prompts) so the SegEvery pipeline encodes all prompts of all images in one call.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from litesam_kernels.ops._autocast import autocast_off
from litesam_kernels.model.litevit import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of (x, y) in [0, 1]^2 (SAM's, buffer ``positional_encoding_gaussian_matrix``).

    Always float32 (float64 in a float64 model), with autocast off: ``sin(2 pi (2c - 1) G)`` reaches tens of
    radians, where a 16-bit argument (or a 16-bit ``G``: 0.2% off, i.e. ~0.04 rad) would shift the features by
    ten times their own 16-bit rounding. ``model.half()`` / ``.to(torch.bfloat16)`` therefore keep the matrix
    in float32 (on the new device); the prompt encoder casts the features to the model's dtype.
    """

    def __init__(self, num_pos_feats: int = 64, scale: Optional[float] = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _apply(self, fn, recurse=True):
        matrix = self.positional_encoding_gaussian_matrix
        super()._apply(fn, recurse)
        converted = self.positional_encoding_gaussian_matrix
        if converted.dtype in _HALF and matrix.dtype not in _HALF:
            self.positional_encoding_gaussian_matrix = matrix.to(converted.device)
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.promote_types(self.positional_encoding_gaussian_matrix.dtype, torch.float32)

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (..., 2) in ``compute_dtype`` -> (..., C) in ``compute_dtype``."""
        with autocast_off(coords.device.type):
            coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix.to(coords.dtype)
            coords = 2 * math.pi * coords
            return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: Tuple[int, int]) -> torch.Tensor:
        """The (C, h, w) encoding of the centres of an h x w grid."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=self.compute_dtype)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        return self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1)).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
        """Encode (..., 2) pixel coordinates (x, y) of an image of ``image_size`` = (H, W)."""
        dtype = self.compute_dtype
        size = torch.tensor([float(image_size[1]), float(image_size[0])], device=coords.device, dtype=dtype)
        return self._pe_encoding(coords.to(dtype) / size)


_HALF = (torch.float16, torch.bfloat16)


class PromptEncoder(nn.Module):
    def __init__(self, embed_dim: int, image_embedding_size: Tuple[int, int], input_image_size: Tuple[int, int],
                 mask_in_chans: int, activation=nn.GELU) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.num_point_embeddings = 4  # negative point, positive point, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList([nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)])
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @property
    def dtype(self) -> torch.dtype:
        """The model's dtype (of its embeddings), in which every output is returned."""
        return self.no_mask_embed.weight.dtype

    def get_dense_pe(self) -> torch.Tensor:
        """(1, C, h, w) positional encoding of the image embedding's grid."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0).to(self.dtype)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        # pixel index -> pixel centre, in the encoding's dtype (in bf16, 1000.5 would round to 1000)
        points = points.to(self.pe_layer.compute_dtype) + 0.5
        if pad:  # SAM appends a "not a point" token when there is no box
            points = torch.cat([points, points.new_zeros(*points.shape[:-2], 1, 2)], dim=-2)
            labels = torch.cat([labels, -labels.new_ones(*labels.shape[:-1], 1)], dim=-1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size).to(self.dtype)
        labels = labels[..., None]
        embedding = torch.where(labels == -1, self.not_a_point_embed.weight, embedding)
        embedding = embedding + torch.where(labels == 0, self.point_embeddings[0].weight, 0.0)
        return embedding + torch.where(labels == 1, self.point_embeddings[1].weight, 0.0)

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes.to(self.pe_layer.compute_dtype) + 0.5).reshape(*boxes.shape[:-1], 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size).to(self.dtype)
        corner_embeddings = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        return embedding + corner_embeddings

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        return self.mask_downscaling(masks.to(self.dtype))

    def embed_prompts(self, points: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                      boxes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Sparse embeddings for any leading shape ``L``: points ``(L..., P, 2)`` with labels ``(L..., P)``
        (1 positive, 0 negative, -1 padding) and/or boxes ``(L..., 4)`` XYXY -> ``(L..., T, C)``."""
        parts = []
        if points is not None:
            parts.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            parts.append(self._embed_boxes(boxes))
        if not parts:
            raise ValueError("embed_prompts needs points and/or boxes")
        return torch.cat(parts, dim=-2)

    def forward(self, points: Optional[Tuple[torch.Tensor, torch.Tensor]], boxes: Optional[torch.Tensor],
                masks: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """SAM's interface: sparse (B, T, C) and dense (B, C, h, w) embeddings for B prompts."""
        if points is not None:
            batch = points[0].shape[0]
        elif boxes is not None:
            batch = boxes.shape[0]
        elif masks is not None:
            batch = masks.shape[0]
        else:
            batch = 1
        weight = self.point_embeddings[0].weight
        if points is None and boxes is None:
            sparse = weight.new_empty((batch, 0, self.embed_dim))
        else:
            sparse = self.embed_prompts(points, boxes)
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return sparse, dense
