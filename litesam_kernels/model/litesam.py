"""LiteSAM: LiteViT + AutoPPN + SAM's prompt encoder and mask decoder, with checkpoints that keep the config."""
from __future__ import annotations

import os
from typing import Any, BinaryIO, Dict, Optional, Tuple, Union

import torch
from torch import nn

from litesam_kernels.model.autoppn import AutoPPN
from litesam_kernels.model.config import LiteSAMConfig, get_config
from litesam_kernels.model.litevit import LiteViT
from litesam_kernels.model.mask_decoder import MaskDecoder, TwoWayTransformer
from litesam_kernels.model.prompt_encoder import PromptEncoder

CHECKPOINT_FORMAT = "litesam_kernels.LiteSAM"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint does not fit the model (wrong format, missing/unexpected or wrong-shaped tensors)."""


class LiteSAM(nn.Module):
    mask_threshold: float = 0.0

    def __init__(self, config: LiteSAMConfig) -> None:
        super().__init__()
        self.config = config
        embed = config.embedding_size
        self.image_encoder = LiteViT(config.encoder)
        if config.encoder.out_channels != config.prompt_embed_dim:
            raise ValueError(f"the encoder's out_channels ({config.encoder.out_channels}) must equal "
                             f"prompt_embed_dim ({config.prompt_embed_dim})")
        self.ppn = AutoPPN(config.prompt_embed_dim, config.ppn_channels)
        self.prompt_encoder = PromptEncoder(config.prompt_embed_dim, (embed, embed),
                                            (config.image_size, config.image_size), config.mask_in_chans)
        self.mask_decoder = MaskDecoder(
            transformer_dim=config.prompt_embed_dim,
            transformer=TwoWayTransformer(config.decoder_depth, config.prompt_embed_dim, config.decoder_heads,
                                          config.decoder_mlp_dim),
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.decoder_iou_head_depth,
            iou_head_hidden_dim=config.decoder_iou_head_hidden_dim,
        )
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (``model.to(torch.bfloat16)`` makes it bfloat16)."""
        return self.ppn.heatmap.weight.dtype

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised, padded images (B, 3, S, S) -> image embeddings (B, C, S/16, S/16), AutoPPN heatmap
        logits (B, 1, S/16, S/16) and box distances (B, 4, S/16, S/16).

        Outside autocast the images are cast to the model's dtype first (so float32 pixels feed a bfloat16
        model); under ``torch.autocast`` they go in as they are and autocast picks each op's dtype."""
        if not torch.is_autocast_enabled(images.device.type) and images.is_floating_point():
            images = images.to(self.dtype)
        embeddings = self.image_encoder(images)
        heatmap_logits, box_regression = self.ppn(embeddings)
        return embeddings, heatmap_logits, box_regression

    def parameter_counts(self) -> Dict[str, int]:
        """Parameters per part (image_encoder, ppn, prompt_encoder, mask_decoder) and the total."""
        counts = {name: sum(p.numel() for p in part.parameters()) for name, part in self.named_children()}
        counts["total"] = sum(counts.values())
        return counts

    # ------------------------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """What :meth:`save` writes: format, version, the config (a plain dict) and the weights (on the CPU),
        plus ``extra``'s entries (e.g. ``litesam-train``'s ``training`` state), which :meth:`load` ignores.

        Raises:
            ValueError: ``extra`` is not a dict, or would replace one of the checkpoint's own entries.
        """
        payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": self.config.to_dict(),
                   "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}
        if extra is not None:
            if not isinstance(extra, dict):
                raise ValueError(f"extra must be a dict of additional checkpoint entries, got {type(extra).__name__}")
            clashes = sorted(set(extra) & set(payload))
            if clashes:
                raise ValueError(f"extra must not replace the checkpoint's own entries, got {', '.join(clashes)}")
            payload.update(extra)
        return payload

    def save(self, f: Union[str, os.PathLike, BinaryIO], extra: Optional[Dict[str, Any]] = None) -> None:
        """Write :meth:`checkpoint_payload` (``extra`` included) to ``f``, a path or a binary file object, as
        ``torch.save`` does; :meth:`load` reads it back."""
        torch.save(self.checkpoint_payload(extra), f)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu") -> "LiteSAM":
        """Rebuild the model from the config stored in ``path`` and load its weights.

        Raises:
            CheckpointError: not a LiteSAM checkpoint, or a tensor is missing, unexpected or of the wrong
                shape (the message names each such tensor and both shapes).
        """
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{os.fspath(path)!r} is not a LiteSAM checkpoint (written by LiteSAM.save)")
        model = cls(LiteSAMConfig.from_dict(checkpoint["config"]))
        load_state_dict_checked(model, checkpoint["state_dict"], source=os.fspath(path))
        return model.to(map_location)


def load_state_dict_checked(module: nn.Module, state_dict: Dict[str, torch.Tensor], source: str = "state_dict",
                            strict: bool = True) -> None:
    """``module.load_state_dict`` that explains every mismatch: each wrong-shaped tensor with both shapes,
    and (if ``strict``) each missing or unexpected key."""
    expected = module.state_dict()
    problems = []
    for key, tensor in state_dict.items():
        if key in expected and tuple(expected[key].shape) != tuple(tensor.shape):
            problems.append(f"tensor {key!r} has shape {tuple(tensor.shape)} in {source} but the model expects "
                            f"{tuple(expected[key].shape)} (the checkpoint was made for a different config)")
    if strict:
        problems += [f"tensor {key!r} is missing from {source}" for key in expected if key not in state_dict]
        problems += [f"tensor {key!r} in {source} is not a parameter of the model" for key in state_dict
                     if key not in expected]
    if problems:
        raise CheckpointError(f"cannot load {source}: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=strict)


def build_litesam(config: Union[str, LiteSAMConfig, dict] = "litesam", checkpoint: Optional[str] = None,
                  **overrides) -> LiteSAM:
    """A LiteSAM from a named config (``litesam``, ``litesam_slim``, ``tiny``), a config or its dict, with
    random weights, or loaded from ``checkpoint`` (whose stored config must equal the requested one)."""
    config = get_config(config, **overrides)
    if checkpoint is None:
        return LiteSAM(config)
    model = LiteSAM.load(checkpoint)
    if model.config != config:
        raise CheckpointError(f"{checkpoint!r} holds a model of another config; use LiteSAM.load({checkpoint!r}) "
                              f"to take the checkpoint's config")
    return model
