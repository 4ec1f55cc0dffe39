"""LiteViT: the Lite-SAM image encoder, as readable eager PyTorch (the reference the fused kernels replace).

Lite-SAM's paper describes LiteViT as a CNN-Transformer hybrid with "efficient self-attention and
multi-scale pooling" and 1.16M parameters; its layer table is not public, so this is our reconstruction
(``shared/design/LITESAM_MODEL.md``). Default config (``LiteViTConfig()``), input B x 3 x 1024 x 1024:

| stage | stride | channels  | block                                                                  | depth | params    |
|-------|--------|-----------|------------------------------------------------------------------------|-------|-----------|
| stem  | 4      | 3->16->32 | 2x ConvBNAct (3x3 conv s2 + BN + GELU)                                 | -     | 5,136     |
| 1     | 4      | 32        | PoolMixerBlock: x + MSPool(BN(x)); x + ConvMLP(BN(x)), ratio 4         | 2     | 16,960    |
| down  | 8      | 64        | ConvBNAct (3x3 conv s2 + BN, no activation)                            | -     | 18,560    |
| 2     | 8      | 64        | PoolMixerBlock, ratio 4                                                | 2     | 66,688    |
| down  | 16     | 128       | ConvBNAct (3x3 conv s2 + BN)                                           | -     | 73,984    |
| 3     | 16     | 128       | AttentionBlock: x + DWConvBNAct(x); x + PooledKVAttention(LN2d(x));   | 4     | 930,304   |
|       |        |           | x + ConvMLP(LN2d(x)), ratio 5; 4 heads of 32, K/V avg-pooled 2x2, 4x4  |       |           |
| neck  | 16     | 128->256  | 1x1 conv (no bias) + LayerNorm2d; 3x3 depthwise conv + LayerNorm2d     | -     | 36,096    |
| total |        |           | output B x 256 x 64 x 64 (SAM's image embedding)                       |       | 1,147,728 |

(The numbers are checked by ``tests/test_litesam_model.py``; regenerate with ``LiteViT.parameter_table()``.)

- MSPool(x) = mean(avg_pool_3(x), avg_pool_5(x), avg_pool_7(x)) - x, stride 1, "same" padding, padded
  cells not counted (PoolFormer's pooling generalised to three scales).
- PooledKVAttention: queries are all H*W tokens; keys/values are the normalised tokens average-pooled 2x2
  and 4x4 (1024 + 256 tokens at 64x64), so attention costs O(HW * HW/4) instead of O(HW^2).
- BatchNorm is folded into the preceding conv at inference by the fused path; here it stays a module.

Every block is its own ``nn.Module`` (``ConvBNAct``, ``MultiScalePool``, ``ConvMLP``, ``PoolMixerBlock``,
``DWConvBNAct``, ``PooledKVAttention``, ``LayerNorm2d``, ``AttentionBlock``): they are the fusion targets.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from litesam_kernels.model.config import LiteViTConfig


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW tensor (SAM's ``LayerNorm2d``, same parameter names)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in float32 for 16-bit input (float64 stays float64), the result in x's dtype
        acc = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(acc)
        mean = xf.mean(1, keepdim=True)
        var = (xf - mean).pow(2).mean(1, keepdim=True)
        xf = (xf - mean) / torch.sqrt(var + self.eps)
        return (self.weight.to(acc)[:, None, None] * xf + self.bias.to(acc)[:, None, None]).to(x.dtype)


class ConvBNAct(nn.Module):
    """k x k convolution (no bias) + BatchNorm + optional GELU: the stem and the downsamplings."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConvBNAct(ConvBNAct):
    """Depthwise 3x3 conv + BN + GELU, used as a residual positional encoding before attention."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__(channels, channels, kernel_size, groups=channels, act=True)


class MultiScalePool(nn.Module):
    """Token mixer: mean of stride-1 average pools at several sizes, minus the input (no parameters)."""

    def __init__(self, pool_sizes: Sequence[int] = (3, 5, 7)) -> None:
        super().__init__()
        self.pool_sizes = tuple(pool_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False) for k in self.pool_sizes]
        return torch.stack(pooled).mean(0) - x


class ConvMLP(nn.Module):
    """1x1 expand -> GELU -> 1x1 project (two GEMMs over channels)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PoolMixerBlock(nn.Module):
    """x + MSPool(BN(x)); x + ConvMLP(BN(x))."""

    def __init__(self, channels: int, pool_sizes: Sequence[int], mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels)
        self.mixer = MultiScalePool(pool_sizes)
        self.norm2 = nn.BatchNorm2d(channels)
        self.mlp = ConvMLP(channels, int(channels * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PooledKVAttention(nn.Module):
    """Multi-head self-attention whose keys/values are the input average-pooled at several sizes.

    Input and output NCHW. q = Wq x over all H*W tokens; k, v = Wkv [pool_s(x) for s in kv_pool_sizes]
    (concatenated token sets); softmax(q k^T / sqrt(d)) v; output projection.
    """

    def __init__(self, channels: int, num_heads: int, kv_pool_sizes: Sequence[int] = (2, 4)) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.kv_pool_sizes = tuple(kv_pool_sizes)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)
        self.proj = nn.Linear(channels, channels)

    def pooled_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, sum_s ceil(H/s)*ceil(W/s), C): the key/value sources."""
        pools = [F.avg_pool2d(x, s, s, ceil_mode=True) for s in self.kv_pool_sizes]
        return torch.cat([p.flatten(2) for p in pools], dim=2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        q = self.q(tokens).view(b, h * w, self.num_heads, self.head_dim).transpose(1, 2)
        sources = self.pooled_tokens(x)  # explicit length: view(b, -1, ...) is ambiguous for an empty batch
        kv = self.kv(sources).view(b, sources.shape[1], 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
        return out.transpose(1, 2).reshape(b, c, h, w)


class AttentionBlock(nn.Module):
    """x + DWConvBNAct(x); x + PooledKVAttention(LN2d(x)); x + ConvMLP(LN2d(x))."""

    def __init__(self, channels: int, num_heads: int, kv_pool_sizes: Sequence[int], mlp_ratio: float) -> None:
        super().__init__()
        self.pos = DWConvBNAct(channels)
        self.norm1 = LayerNorm2d(channels)
        self.attn = PooledKVAttention(channels, num_heads, kv_pool_sizes)
        self.norm2 = LayerNorm2d(channels)
        self.mlp = ConvMLP(channels, int(channels * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LiteViT(nn.Module):
    """The encoder: (B, 3, S, S) normalised image -> (B, out_channels, S/16, S/16). See the module table.

    ``fused=True`` runs the forward on the fused channels-last ops (``litevit_fused.py``: same parameters,
    any floating dtype, autocast, training). Its inference forwards are *prepared* (``litevit_prepared.py``):
    BatchNorm folds, weight casts and kernel layouts are computed once per (dtype, device) and reused until
    a parameter or buffer changes; ``prepared = False`` folds on every call instead. ``compile_fused(mode)``
    compiles the prepared path (``mode="reduce-overhead"``: CUDA graphs at batch 1 on a GPU).
    """

    stride = 16

    def __init__(self, config: LiteViTConfig = LiteViTConfig(), fused: bool = False) -> None:
        super().__init__()
        self.config = config
        self.fused = fused  # forward on the fused channels-last ops (litevit_fused.py), same parameters
        self.prepared = True  # fused inference on cached folds (litevit_prepared.py)
        c1, c2, c3 = config.stage_channels
        d1, d2, d3 = config.stage_depths
        s1, s2 = config.stem_channels
        self.stem = nn.Sequential(ConvBNAct(3, s1, 3, 2), ConvBNAct(s1, c1, 3, 2))
        self.stage1 = nn.Sequential(*[PoolMixerBlock(c1, config.pool_sizes, config.conv_mlp_ratio) for _ in range(d1)])
        self.down1 = ConvBNAct(c1, c2, 3, 2, act=False)
        self.stage2 = nn.Sequential(*[PoolMixerBlock(c2, config.pool_sizes, config.conv_mlp_ratio) for _ in range(d2)])
        self.down2 = ConvBNAct(c2, c3, 3, 2, act=False)
        self.stage3 = nn.Sequential(*[
            AttentionBlock(c3, config.attention_heads, config.kv_pool_sizes, config.attention_mlp_ratio)
            for _ in range(d3)
        ])
        self.neck = nn.Sequential(
            nn.Conv2d(c3, config.out_channels, 1, bias=False),
            LayerNorm2d(config.out_channels),
            nn.Conv2d(config.out_channels, config.out_channels, 3, padding=1, groups=config.out_channels, bias=False),
            LayerNorm2d(config.out_channels),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.fused:
            from litesam_kernels.model import litevit_fused

            if litevit_fused.fused_path_enabled():
                return litevit_fused.fused_forward(self, images)
        x = self.stem(images)
        x = self.stage1(x)
        x = self.stage2(self.down1(x))
        x = self.stage3(self.down2(x))
        return self.neck(x)

    def invalidate_prepared(self) -> None:
        """Drop the prepared weights of the fused inference path (recomputed by the next forward). Needed only
        after changes torch's version counters cannot see: writes through ``param.data``, or a change of a
        non-tensor attribute such as a BatchNorm's ``eps``."""
        from litesam_kernels.model import litevit_prepared

        litevit_prepared.cache_of(self).clear()

    def compile_fused(self, mode: Optional[str] = "reduce-overhead", **options) -> "LiteViT":
        """Run the fused inference path through ``torch.compile(..., mode=mode, fullgraph=True, **options)``
        on the prepared weights (``mode=None`` and no options: back to eager). Returns ``self``. On a GPU,
        ``"reduce-overhead"`` replays the encoder as one CUDA graph; on CPU it is a plain compile."""
        from litesam_kernels.model import litevit_prepared

        litevit_prepared.cache_of(self).set_compile(mode, options)
        return self

    def parameter_table(self) -> List[Tuple[str, int]]:
        """(part, parameter count) in forward order, then ("total", n): the docstring's table."""
        rows = [(name, sum(p.numel() for p in child.parameters())) for name, child in self.named_children()]
        return rows + [("total", sum(n for _, n in rows))]
