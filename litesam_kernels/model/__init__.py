"""The minimal Lite-SAM: LiteViT encoder, AutoPPN prompt head, SAM's prompt encoder and mask decoder.

Plain eager PyTorch modules (readable references); the fused kernels replace their blocks.
"""
from litesam_kernels.model.config import CONFIGS, LiteSAMConfig, LiteViTConfig, get_config
from litesam_kernels.model.litevit import LiteViT

__all__ = ["CONFIGS", "LiteSAMConfig", "LiteViT", "LiteViTConfig", "get_config"]
