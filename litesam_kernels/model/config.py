"""Named configurations of the minimal Lite-SAM (``build_litesam(name_or_config)``).

A config is a plain frozen dataclass, so it round-trips through ``dataclasses.asdict`` into a checkpoint
and back (``LiteSAM.save`` / ``LiteSAM.load``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Dict, Tuple, Union


@dataclass(frozen=True)
class LiteViTConfig:
    """LiteViT encoder. See :class:`litesam_kernels.model.litevit.LiteViT` for the layer table."""

    stem_channels: Tuple[int, int] = (16, 32)
    stage_channels: Tuple[int, int, int] = (32, 64, 128)
    stage_depths: Tuple[int, int, int] = (2, 2, 4)
    pool_sizes: Tuple[int, ...] = (3, 5, 7)
    conv_mlp_ratio: float = 4.0
    attention_heads: int = 4
    kv_pool_sizes: Tuple[int, ...] = (2, 4)
    attention_mlp_ratio: float = 5.0
    out_channels: int = 256


@dataclass(frozen=True)
class LiteSAMConfig:
    """The whole model. ``image_size`` is the padded square input (SAM: 1024); the encoder's stride is 16,
    so the image embedding is ``image_size // 16`` on a side and the low-res masks 4x that."""

    image_size: int = 1024
    encoder: LiteViTConfig = field(default_factory=LiteViTConfig)
    ppn_channels: int = 64
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    decoder_iou_head_depth: int = 3
    decoder_iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    pixel_mean: Tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: Tuple[float, float, float] = (58.395, 57.12, 57.375)

    ENCODER_STRIDE = 16  # not a field: fixed by the architecture (stem 4, two downsamplings)

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.ENCODER_STRIDE

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "LiteSAMConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown LiteSAMConfig field(s) {unknown}; known: {sorted(known)}")
        values = dict(values)
        encoder = values.pop("encoder", {})
        encoder = LiteViTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in encoder.items()})
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(encoder=encoder, **values)


CONFIGS: Dict[str, LiteSAMConfig] = {
    # SAM's prompt encoder and mask decoder unchanged: SAM / MobileSAM decoder weights load into it.
    "litesam": LiteSAMConfig(),
    # A slimmer decoder MLP (1024 instead of 2048): the ~4.2M total the paper reports.
    "litesam_slim": LiteSAMConfig(decoder_mlp_dim=1024),
    # For CPU tests: 128^2 input, 8x8 embedding of 32 channels, one decoder layer.
    "tiny": LiteSAMConfig(
        image_size=128,
        encoder=LiteViTConfig(stem_channels=(8, 8), stage_channels=(8, 16, 32), stage_depths=(1, 1, 1),
                              attention_heads=2, out_channels=32, conv_mlp_ratio=2.0, attention_mlp_ratio=2.0),
        ppn_channels=16, prompt_embed_dim=32, mask_in_chans=4, decoder_depth=1, decoder_heads=2,
        decoder_mlp_dim=64, decoder_iou_head_hidden_dim=32,
    ),
}


def get_config(config: Union[str, LiteSAMConfig, dict], **overrides) -> LiteSAMConfig:
    """A config by name (one of ``CONFIGS``), a config, or its dict; ``overrides`` replace fields."""
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ValueError(f"unknown config {config!r}; named configs: {', '.join(CONFIGS)}")
        config = CONFIGS[config]
    elif isinstance(config, dict):
        config = LiteSAMConfig.from_dict(config)
    elif not isinstance(config, LiteSAMConfig):
        raise TypeError(f"config must be a name, a LiteSAMConfig or a dict, got {type(config).__name__}")
    return replace(config, **overrides) if overrides else config
