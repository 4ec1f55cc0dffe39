"""A tiny random segment_anything ``Sam`` and synthetic photo-like scenes, for the AMG tests and the CPU
rows of benchmarks/bench_amg.py.

The model is built from segment_anything's own modules (ViT encoder of 2 blocks on 128 px inputs, a
32-dim two-way transformer decoder). Its random weights are rescaled so that masks are a few blobs (not
half the image) and their stability varies: many masks then survive the thresholds and NMS, and every
filter (IoU, stability incl. NaN, crop edge, both NMS, holes/islands) decides something."""
from functools import partial

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

H, W = 96, 128


def tiny_sam(seed=0, img_size=128, dim=32, global_attn_indexes=(1,)):
    torch.manual_seed(seed)
    emb = img_size // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size, patch_size=16, embed_dim=48, depth=2, num_heads=2, mlp_ratio=2.0, out_chans=dim,
            qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            global_attn_indexes=global_attn_indexes, window_size=4,
        ),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(emb, emb),
                                     input_image_size=(img_size, img_size), mask_in_chans=8),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
                                 transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32),
    )
    with torch.no_grad():
        # Higher-frequency point encodings and large hypernetwork weights: masks depend on the point
        # and logits are O(1..10), so stability scores spread over [0, 1].
        sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(3)
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(300)
            mlp.layers[-1].bias.zero_()
        # One constant upscaled channel times a negative weight: a logit offset, so masks are blobs.
        upscaling = sam.mask_decoder.output_upscaling
        upscaling[3].weight[:, 0] = 0
        upscaling[3].bias[0] = 1.0
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight[0] = 0
            mlp.layers[-1].bias[0] = -16.0
    return sam.eval()


def scene(h=H, w=W, seed=0):
    """A synthetic photo-like scene: gradient background, filled discs and rectangles, sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float64) + (xx / w * 80 + yy / h * 40)[..., None]
    for _ in range(6):
        colour = rng.uniform(40, 255, 3)
        if rng.random() < 0.5:
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(6, 24)
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        else:
            y0, x0 = rng.integers(0, h - 10), rng.integers(0, w - 10)
            inside = (yy >= y0) & (yy < y0 + rng.integers(8, 40)) & (xx >= x0) & (xx < x0 + rng.integers(8, 50))
        img[inside] = colour
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
