"""SAM's mask decoder (two-way transformer + hypernetwork heads) with SAM's architecture and parameter names,
so ``segment_anything``'s ``MaskDecoder`` weights (SAM, MobileSAM) load unchanged and give the same masks.

Two paths, equal up to float rounding:
- ``forward`` is SAM's: one image embedding (or one per prompt), prompts along the batch dimension; the
  embedding is repeated per prompt (``repeat_interleave``), as SAM does.
- ``forward_batched`` is SegEvery's: B images x K prompts. The image embedding and its positional encoding
  are broadcast, never copied per prompt, and the first transformer block's image-side projections (keys
  and values of token->image attention, queries of image->token attention) are computed once per image,
  because before that block's last residual the image tokens do not depend on the prompt. Token->image
  attention with shared keys folds the K prompts into the query axis (one GEMM per image and head); the
  image->token attention folds them into the key axis and normalises per prompt.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from litesam_kernels.model.litevit import LayerNorm2d


class MLP(nn.Module):
    """Linear layers with ReLU between them (SAM's ``MLP``, parameter names ``layers.<i>``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 sigmoid_output: bool = False) -> None:
        super().__init__()
        self.num_layers = num_layers
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + hidden, hidden + [output_dim]))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class MLPBlock(nn.Module):
    def __init__(self, embedding_dim: int, mlp_dim: int, act=nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class Attention(nn.Module):
    """SAM's attention with optional down-projection of the internal width."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the internal width ({self.internal_dim})")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., N, C) -> (..., heads, N, C/heads)."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(-2, -3)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -3).flatten(-2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        attn = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1)
        return self.out_proj(self._merge(attn @ v))

    def forward_shared_keys(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, K, N, C) per prompt; k, v (B, M, C) shared by the K prompts of an image -> (B, K, N, C).
        Softmax is per query row, so the K*N queries of an image attend to its keys in one product."""
        b, prompts, n, _ = q.shape
        q = self._heads(self.q_proj(q.flatten(1, 2)))
        out = F.scaled_dot_product_attention(q, self._heads(self.k_proj(k)), self._heads(self.v_proj(v)))
        return self.out_proj(self._merge(out)).unflatten(1, (prompts, n))

    def forward_shared_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, M, C) shared by an image's prompts; k, v (B, K, N, C) per prompt -> (B, K, M, C)."""
        b, prompts, n, _ = k.shape
        q = self._heads(self.q_proj(q))                                   # B, h, M, d
        k = self._heads(self.k_proj(k))                                   # B, K, h, N, d
        v = self._heads(self.v_proj(v))                                   # B, K, h, N, d
        keys = k.permute(0, 2, 4, 1, 3).flatten(3)                       # B, h, d, K*N
        logits = (q @ keys).unflatten(-1, (prompts, n)) / math.sqrt(q.shape[-1])  # B, h, M, K, N
        weights = torch.softmax(logits, dim=-1).permute(0, 3, 1, 2, 4)   # B, K, h, M, N
        return self.out_proj(self._merge(weights @ v))                   # B, K, M, C


class TwoWayAttentionBlock(nn.Module):
    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int = 2048, activation=nn.ReLU,
                 attention_downsample_rate: int = 2, skip_first_layer_pe: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def _tokens_first_half(self, queries, query_pe):
        if self.skip_first_layer_pe:
            return self.norm1(self.self_attn(q=queries, k=queries, v=queries))
        q = queries + query_pe
        return self.norm1(queries + self.self_attn(q=q, k=q, v=queries))

    def forward(self, queries, keys, query_pe, key_pe) -> Tuple[torch.Tensor, torch.Tensor]:
        queries = self._tokens_first_half(queries, query_pe)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys

    def forward_shared_image(self, queries, keys, query_pe, key_pe) -> Tuple[torch.Tensor, torch.Tensor]:
        """queries/query_pe (B, K, N, C) per prompt; keys (B, M, C) and key_pe (1, M, C) shared per image.
        Returns queries (B, K, N, C) and the now prompt-dependent keys (B, K, M, C)."""
        queries = self._tokens_first_half(queries, query_pe)
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image.forward_shared_keys(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        attn = self.cross_attn_image_to_token.forward_shared_queries(k, queries + query_pe, queries)
        return queries, self.norm4(keys.unsqueeze(1) + attn)


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int, activation=nn.ReLU,
                 attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, activation, attention_downsample_rate,
                                 skip_first_layer_pe=(i == 0))
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def _finish(self, queries, keys, point_embedding, image_pe):
        attn = self.final_attn_token_to_image(q=queries + point_embedding, k=keys + image_pe, v=keys)
        return self.norm_final_attn(queries + attn), keys

    def forward(self, image_embedding, image_pe, point_embedding) -> Tuple[torch.Tensor, torch.Tensor]:
        """SAM's: image (P, C, h, w), pe (P, C, h, w), tokens (P, N, C) -> tokens, image tokens (P, hw, C)."""
        keys = image_embedding.flatten(2).transpose(1, 2)
        image_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, image_pe)
        return self._finish(queries, keys, point_embedding, image_pe)

    def forward_batched(self, image_embedding, image_pe, point_embedding) -> Tuple[torch.Tensor, torch.Tensor]:
        """image (B, C, h, w) and pe (1, C, h, w) shared by the K prompts of each image; tokens (B, K, N, C)
        -> tokens (B*K, N, C), image tokens (B*K, hw, C)."""
        b, prompts = point_embedding.shape[:2]
        keys = image_embedding.flatten(2).transpose(1, 2)
        image_pe = image_pe.flatten(2).transpose(1, 2)
        queries, keys = self.layers[0].forward_shared_image(point_embedding, keys, point_embedding, image_pe)
        queries, keys, tokens = queries.flatten(0, 1), keys.flatten(0, 1), point_embedding.flatten(0, 1)
        for layer in self.layers[1:]:
            queries, keys = layer(queries, keys, tokens, image_pe)
        return self._finish(queries, keys, tokens, image_pe)


class MaskDecoder(nn.Module):
    def __init__(self, *, transformer_dim: int, transformer: nn.Module, num_multimask_outputs: int = 3,
                 activation=nn.GELU, iou_head_depth: int = 3, iou_head_hidden_dim: int = 256) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def _output_tokens(self, sparse: torch.Tensor) -> torch.Tensor:
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.expand(*sparse.shape[:-2], -1, -1)
        return torch.cat((output_tokens, sparse), dim=-2)

    def _heads(self, tokens_out: torch.Tensor, image_tokens: torch.Tensor, size: Tuple[int, int]):
        """Transformer outputs for P prompts -> (P, num_mask_tokens, 4h, 4w) logits and (P, num_mask_tokens) IoU."""
        h, w = size
        src = image_tokens.transpose(1, 2).reshape(-1, self.transformer_dim, h, w)
        upscaled = self.output_upscaling(src)
        hyper_in: List[torch.Tensor] = [mlp(tokens_out[:, 1 + i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)]
        hyper = torch.stack(hyper_in, dim=1)
        p, c, uh, uw = upscaled.shape
        masks = (hyper @ upscaled.view(p, c, uh * uw)).view(p, -1, uh, uw)
        return masks, self.iou_prediction_head(tokens_out[:, 0, :])

    @staticmethod
    def _select(masks, iou_pred, multimask_output: bool):
        picked = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, picked], iou_pred[:, picked]

    def predict_masks(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings):
        tokens = self._output_tokens(sparse_prompt_embeddings)
        src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0) + dense_prompt_embeddings
        pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
        hs, image_tokens = self.transformer(src, pos_src, tokens)
        return self._heads(hs, image_tokens, src.shape[-2:])

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                multimask_output: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """SAM's interface: P prompts of one image -> masks (P, M, 4h, 4w), IoU (P, M); M = 3 or 1."""
        masks, iou_pred = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings,
                                             dense_prompt_embeddings)
        return self._select(masks, iou_pred, multimask_output)

    def forward_batched(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                        no_mask_embedding: torch.Tensor, multimask_output: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """B images x K prompts, without mask prompts.

        Args:
            image_embeddings: (B, C, h, w); image_pe: (1, C, h, w);
            sparse_prompt_embeddings: (B, K, T, C); no_mask_embedding: (1, C) (``PromptEncoder.no_mask_embed.weight``).
        Returns:
            masks (B, K, M, 4h, 4w) logits and IoU predictions (B, K, M), M = 3 if ``multimask_output`` else 1.
        """
        b, prompts = sparse_prompt_embeddings.shape[:2]
        tokens = self._output_tokens(sparse_prompt_embeddings)
        src = image_embeddings + no_mask_embedding.reshape(1, -1, 1, 1)
        hs, image_tokens = self.transformer.forward_batched(src, image_pe, tokens)
        masks, iou_pred = self._select(*self._heads(hs, image_tokens, src.shape[-2:]), multimask_output)
        return masks.unflatten(0, (b, prompts)), iou_pred.unflatten(0, (b, prompts))
