"""The minimal Lite-SAM: LiteViT encoder, AutoPPN prompt head, SAM's prompt encoder and mask decoder.

Plain eager PyTorch modules (readable references); the fused kernels replace their blocks.
"""
from litesam_kernels.model.autoppn import AutoPPN
from litesam_kernels.model.config import CONFIGS, LiteSAMConfig, LiteViTConfig, get_config
from litesam_kernels.model.litesam import CheckpointError, LiteSAM, build_litesam, load_state_dict_checked
from litesam_kernels.model.litevit import LiteViT
from litesam_kernels.model.mask_decoder import MaskDecoder, TwoWayTransformer
from litesam_kernels.model.prompt_encoder import PromptEncoder

__all__ = ["AutoPPN", "CONFIGS", "CheckpointError", "LiteSAM", "LiteSAMConfig", "LiteViT", "LiteViTConfig",
           "MaskDecoder", "PromptEncoder", "TwoWayTransformer", "build_litesam", "get_config",
           "load_state_dict_checked"]
