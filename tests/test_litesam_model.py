"""The minimal Lite-SAM model: shapes, parameter counts, SAM weight compatibility, batched decoder, checkpoints."""
import pytest
import torch

from litesam_kernels.model import CONFIGS, LiteViT
from litesam_kernels.model import litevit as lv


class TestLiteViT:
    def test_default_parameter_table(self):
        table = dict(LiteViT(CONFIGS["litesam"].encoder).parameter_table())
        assert table["total"] == 1_147_728  # the docstring's table; near the paper's 1.16M
        assert table == {"stem": 5_136, "stage1": 16_960, "down1": 18_560, "stage2": 66_688, "down2": 73_984,
                         "stage3": 930_304, "neck": 36_096, "total": 1_147_728}

    def test_default_output_shape_from_1024(self):
        model = LiteViT(CONFIGS["litesam"].encoder).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, 1024, 1024))
        assert out.shape == (1, 256, 64, 64) and torch.isfinite(out).all()

    @pytest.mark.parametrize("size", [128, 96])
    def test_tiny_shapes_batch(self, size):
        model = LiteViT(CONFIGS["tiny"].encoder).eval()
        with torch.no_grad():
            out = model(torch.randn(3, 3, size, size))
        assert out.shape == (3, 32, size // 16, size // 16)

    def test_blocks_are_separate_modules(self):
        model = LiteViT(CONFIGS["tiny"].encoder)
        kinds = {type(m) for m in model.modules()}
        for block in (lv.MultiScalePool, lv.ConvMLP, lv.DWConvBNAct, lv.PooledKVAttention, lv.LayerNorm2d,
                      lv.PoolMixerBlock, lv.AttentionBlock, lv.ConvBNAct):
            assert block in kinds

    def test_multiscale_pool_matches_definition(self):
        x = torch.randn(2, 4, 9, 11)
        got = lv.MultiScalePool((3, 5, 7))(x)
        # average over the in-image part of each window, by explicit counting
        ones = torch.ones(1, 1, 9, 11)
        expected = []
        for k in (3, 5, 7):
            total = torch.nn.functional.conv2d(x.reshape(8, 1, 9, 11), torch.ones(1, 1, k, k), padding=k // 2)
            count = torch.nn.functional.conv2d(ones, torch.ones(1, 1, k, k), padding=k // 2)
            expected.append((total / count).reshape(2, 4, 9, 11))
        torch.testing.assert_close(got, torch.stack(expected).mean(0) - x)

    def test_pooled_kv_attention_matches_explicit_softmax(self):
        attn = lv.PooledKVAttention(8, 2, (2, 4)).eval()
        x = torch.randn(2, 8, 8, 6)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        pooled = torch.cat([torch.nn.functional.avg_pool2d(x, s, s, ceil_mode=True).flatten(2) for s in (2, 4)], 2)
        assert pooled.shape[2] == 4 * 3 + 2 * 2
        q = attn.q(tokens).view(b, h * w, 2, 4).transpose(1, 2)
        k, v = attn.kv(pooled.transpose(1, 2)).view(b, -1, 2, 2, 4).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
        out = attn.proj((weights @ v).transpose(1, 2).reshape(b, h * w, c)).transpose(1, 2).reshape(b, c, h, w)
        torch.testing.assert_close(attn(x), out)


# --------------------------------------------------------------------------------------------- SAM parts
def _sam_parts(embed_dim, embed_size, image_size, depth=2, heads=8, mlp_dim=2048, iou_hidden=256, mask_in=16):
    from segment_anything.modeling import MaskDecoder as SamMaskDecoder
    from segment_anything.modeling import PromptEncoder as SamPromptEncoder
    from segment_anything.modeling import TwoWayTransformer as SamTransformer

    prompt_encoder = SamPromptEncoder(embed_dim=embed_dim, image_embedding_size=(embed_size, embed_size),
                                      input_image_size=(image_size, image_size), mask_in_chans=mask_in)
    decoder = SamMaskDecoder(transformer_dim=embed_dim,
                             transformer=SamTransformer(depth=depth, embedding_dim=embed_dim, num_heads=heads,
                                                        mlp_dim=mlp_dim),
                             iou_head_hidden_dim=iou_hidden)
    # SAM initialises several parts to constants; randomise every tensor so a wrong key order shows
    with torch.no_grad():
        for module in (prompt_encoder, decoder):
            for tensor in module.state_dict().values():
                tensor.copy_(torch.randn_like(tensor) * 0.2)
    return prompt_encoder.eval(), decoder.eval()


def _our_model_with(sam_prompt_encoder, sam_decoder, config):
    from litesam_kernels.model import build_litesam, load_state_dict_checked

    model = build_litesam(config).eval()
    load_state_dict_checked(model.prompt_encoder, sam_prompt_encoder.state_dict(), source="SAM PromptEncoder")
    load_state_dict_checked(model.mask_decoder, sam_decoder.state_dict(), source="SAM MaskDecoder")
    return model


SAM_COMPAT_CASES = {
    "tiny": dict(config="tiny", sam=dict(embed_dim=32, embed_size=8, image_size=128, depth=1, heads=2, mlp_dim=64,
                                          iou_hidden=32, mask_in=4)),
    "sam-size": dict(config="litesam", sam=dict(embed_dim=256, embed_size=64, image_size=1024)),
}


class TestSamCompatibility:
    @pytest.mark.parametrize("case,prompt,multimask", [
        (case, prompt, multimask) for case in ["tiny"] for prompt in ["points", "boxes", "points+boxes"]
        for multimask in [False, True]
    ] + [("sam-size", "points", True), ("sam-size", "boxes", False)])  # full size: SAM's shapes, 2 cases for time
    def test_same_outputs_as_segment_anything(self, case, prompt, multimask):
        spec = SAM_COMPAT_CASES[case]
        sam_pe, sam_dec = _sam_parts(**spec["sam"])
        model = _our_model_with(sam_pe, sam_dec, spec["config"])
        size, embed = spec["sam"]["image_size"], spec["sam"]["embed_dim"]
        n = 3
        points = (torch.rand(n, 2, 2) * size, torch.tensor([[1, 0], [1, 1], [0, -1]]))
        corners = torch.rand(n, 2, 2) * size
        boxes = torch.cat([corners.min(1).values, corners.max(1).values], 1)
        kwargs = dict(points=points if "points" in prompt else None, boxes=boxes if "boxes" in prompt else None,
                      masks=None)
        image = torch.randn(1, embed, spec["sam"]["embed_size"], spec["sam"]["embed_size"])
        with torch.no_grad():
            expected_sparse, expected_dense = sam_pe(**kwargs)
            sparse, dense = model.prompt_encoder(**kwargs)
            torch.testing.assert_close(sparse, expected_sparse)
            torch.testing.assert_close(dense, expected_dense)
            torch.testing.assert_close(model.prompt_encoder.get_dense_pe(), sam_pe.get_dense_pe())
            expected = sam_dec(image, sam_pe.get_dense_pe(), expected_sparse, expected_dense, multimask)
            got = model.mask_decoder(image, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask)
        assert got[0].shape == expected[0].shape == (n, 3 if multimask else 1, 4 * image.shape[-2], 4 * image.shape[-1])
        torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got[1], expected[1], rtol=1e-4, atol=1e-4)

    def test_mask_prompt_same_as_segment_anything(self):
        spec = SAM_COMPAT_CASES["tiny"]
        sam_pe, _ = _sam_parts(**spec["sam"])
        model = _our_model_with(sam_pe, _sam_parts(**spec["sam"])[1], "tiny")
        masks = torch.randn(2, 1, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(model.prompt_encoder(None, None, masks)[1], sam_pe(None, None, masks)[1])


class TestBatchedDecoder:
    @pytest.mark.parametrize("config,depth,multimask", [("tiny", 1, False), ("tiny", 1, True), ("tiny", 3, False),
                                                        ("tiny", 3, True), ("litesam", 2, False)])
    def test_batched_equals_per_prompt(self, config, depth, multimask):
        from litesam_kernels.model import build_litesam

        model = build_litesam(config, decoder_depth=depth).eval()
        with torch.no_grad():
            for p in model.mask_decoder.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        b, k, size = (3, 5, model.config.image_size) if config == "tiny" else (2, 3, model.config.image_size)
        grid = model.config.embedding_size
        embeddings = torch.randn(b, model.config.prompt_embed_dim, grid, grid)
        corners = torch.rand(b, k, 2, 2) * size
        boxes = torch.cat([corners.min(2).values, corners.max(2).values], -1)
        points = (torch.rand(b, k, 1, 2) * size, torch.ones(b, k, 1, dtype=torch.long))
        pe = model.prompt_encoder.get_dense_pe()
        with torch.no_grad():
            sparse = model.prompt_encoder.embed_prompts(points, boxes)
            masks, iou = model.mask_decoder.forward_batched(embeddings, pe, sparse,
                                                            model.prompt_encoder.no_mask_embed.weight, multimask)
            for i in range(b):
                s, d = model.prompt_encoder((points[0][i], points[1][i]), boxes[i], None)
                expected_masks, expected_iou = model.mask_decoder(embeddings[i:i + 1], pe, s, d, multimask)
                torch.testing.assert_close(masks[i], expected_masks, rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(iou[i], expected_iou, rtol=1e-4, atol=1e-4)

    def test_no_per_prompt_copy_of_the_embedding(self, monkeypatch):
        from litesam_kernels.model import build_litesam

        model = build_litesam("tiny").eval()

        def forbidden(*args, **kwargs):
            raise AssertionError("the batched path must not repeat the image embedding per prompt")

        monkeypatch.setattr(torch, "repeat_interleave", forbidden)
        sparse = torch.randn(2, 4, 2, 32)
        with torch.no_grad():
            masks, iou = model.mask_decoder.forward_batched(torch.randn(2, 32, 8, 8), model.prompt_encoder.get_dense_pe(),
                                                            sparse, model.prompt_encoder.no_mask_embed.weight, False)
        assert masks.shape == (2, 4, 1, 32, 32) and iou.shape == (2, 4, 1)


class TestLiteSAM:
    def test_parameter_counts(self):
        from litesam_kernels.model import build_litesam

        counts = build_litesam("litesam").parameter_counts()
        assert counts["image_encoder"] == 1_147_728
        assert counts["mask_decoder"] == 4_058_340  # SAM's decoder, unchanged
        assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
        slim = build_litesam("litesam_slim").parameter_counts()
        assert 4.1e6 < slim["total"] < 4.3e6  # the paper's ~4.2M

    def test_forward_shapes(self):
        from litesam_kernels.model import build_litesam

        model = build_litesam("tiny").eval()
        with torch.no_grad():
            embeddings, heatmap, boxes = model(torch.randn(2, 3, 128, 128))
        assert embeddings.shape == (2, 32, 8, 8) and heatmap.shape == (2, 1, 8, 8) and boxes.shape == (2, 4, 8, 8)
        assert (boxes > 0).all()

    def test_checkpoint_roundtrip_keeps_config(self, tmp_path):
        from litesam_kernels.model import LiteSAM, build_litesam

        model = build_litesam("tiny", decoder_depth=2).eval()
        path = tmp_path / "model.pt"
        model.save(path)
        loaded = LiteSAM.load(path).eval()
        assert loaded.config == model.config
        for key, value in model.state_dict().items():
            assert torch.equal(value, loaded.state_dict()[key]), key
        assert build_litesam("tiny", checkpoint=str(path), decoder_depth=2).config == model.config

    def test_checkpoint_with_extra_entries(self, tmp_path):
        """``save(f, extra=...)``: what litesam-train adds (its ``training`` state) rides along, to a path or a
        file object; ``load`` ignores it; the checkpoint's own entries cannot be replaced."""
        from litesam_kernels.model import LiteSAM, build_litesam

        model = build_litesam("tiny")
        path = tmp_path / "model.pt"
        with open(path, "wb") as file:
            model.save(file, extra={"training": {"step": 3, "rng": b"state"}})
        stored = torch.load(path, weights_only=True)
        assert stored["training"] == {"step": 3, "rng": b"state"}
        assert stored.keys() == {"format", "version", "config", "state_dict", "training"}
        assert stored.keys() - {"training"} == model.checkpoint_payload().keys()
        assert LiteSAM.load(path).config == model.config
        with pytest.raises(ValueError, match="must not replace the checkpoint's own entries, got config, format"):
            model.save(path, extra={"format": "mine", "config": {}})
        with pytest.raises(ValueError, match="extra must be a dict"):
            model.checkpoint_payload(extra=[("training", 1)])

    def test_wrong_shape_checkpoint_names_the_tensor(self, tmp_path):
        from litesam_kernels.model import CheckpointError, LiteSAM, build_litesam

        model = build_litesam("tiny")
        path = tmp_path / "model.pt"
        model.save(path)
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["state_dict"]["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
        torch.save(checkpoint, path)
        with pytest.raises(CheckpointError, match=r"mask_decoder\.iou_token\.weight.*\(1, 7\).*\(1, 32\)"):
            LiteSAM.load(path)
        del checkpoint["state_dict"]["ppn.box.bias"]
        torch.save(checkpoint, path)
        with pytest.raises(CheckpointError, match=r"ppn\.box\.bias.*missing"):
            LiteSAM.load(path)
        torch.save({"something": 1}, path)
        with pytest.raises(CheckpointError, match="not a LiteSAM checkpoint"):
            LiteSAM.load(path)

    def test_unknown_config(self):
        from litesam_kernels.model import build_litesam

        with pytest.raises(ValueError, match="unknown config"):
            build_litesam("huge")


# --------------------------------------------------------------------------------------------- half precision
# Relative L2 error ||got - want|| / ||want|| against the float32 model with the same weights (tiny config, 128^2,
# 2 images x 5 point+box prompts, decoder weights perturbed). Measured over 3 seeds, eager and fused encoder,
# ``model.to(dtype)`` and autocast alike: bf16 embeddings <= 8.4e-3, heatmap <= 3.7e-3, boxes <= 1.9e-3,
# mask logits <= 1.2e-2, IoU <= 1.3e-2; fp16 <= 1.2e-3 / 2.7e-4 / 2.4e-4 / 1.4e-3 / 1.5e-3. Asserted: 3e-2 (bf16),
# 4e-3 (fp16) for every output.
HALF_REL = {torch.bfloat16: 3e-2, torch.float16: 4e-3}


def _rel(got, want):
    return float((got.double() - want.double()).norm() / want.double().norm())


def _half_case(seed=0):
    from litesam_kernels.model import build_litesam

    torch.manual_seed(seed)
    model = build_litesam("tiny").eval()
    with torch.no_grad():
        for p in model.mask_decoder.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    corners = torch.rand(2, 5, 2, 2) * 128
    prompts = dict(points=(torch.rand(2, 5, 1, 2) * 128, torch.ones(2, 5, 1, dtype=torch.long)),
                   boxes=torch.cat([corners.min(2).values, corners.max(2).values], -1))
    return model, torch.randn(2, 3, 128, 128), prompts


def _run_all(model, images, prompts):
    """Every model output SegEvery and SAM's interface use."""
    with torch.no_grad():
        embeddings, heatmap, boxes = model(images)
        pe = model.prompt_encoder.get_dense_pe()
        sparse = model.prompt_encoder.embed_prompts(prompts["points"], prompts["boxes"])
        masks, iou = model.mask_decoder.forward_batched(embeddings, pe, sparse,
                                                        model.prompt_encoder.no_mask_embed.weight, True)
        points = (prompts["points"][0][0], prompts["points"][1][0])
        s, d = model.prompt_encoder(points, prompts["boxes"][0], None)
        masks1, iou1 = model.mask_decoder(embeddings[:1], pe, s, d, True)
    return dict(embeddings=embeddings, heatmap=heatmap, boxes=boxes, masks=masks, iou=iou, masks1=masks1, iou1=iou1)


class TestHalfPrecision:
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
    @pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
    @pytest.mark.parametrize("mode", ["model.to", "autocast"])
    def test_outputs_close_to_float32(self, dtype, fused, mode):
        import copy

        model, images, prompts = _half_case()
        model.image_encoder.fused = fused
        want = _run_all(model, images, prompts)
        if mode == "model.to":  # float32 images: LiteSAM casts them to its dtype
            half = copy.deepcopy(model).to(dtype)
            assert half.dtype == dtype
            got = _run_all(half, images, prompts)
        else:
            with torch.autocast("cpu", dtype=dtype):
                got = _run_all(model, images, prompts)
        for key, value in got.items():
            assert value.dtype == dtype, key
            assert torch.isfinite(value).all(), key
            assert _rel(value, want[key]) < HALF_REL[dtype], key

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
    def test_fourier_features_stay_float32(self, dtype):
        """The Gaussian matrix survives ``.to(half)`` in float32; the features are computed in float32 and
        rounded once to the model's dtype; point coordinates are upcast before SAM's +0.5 (in bf16, 1000.5
        would round to 1000)."""
        import copy

        model, _, _ = _half_case()
        half = copy.deepcopy(model).to(dtype)
        layer = half.prompt_encoder.pe_layer
        assert layer.positional_encoding_gaussian_matrix.dtype == torch.float32
        torch.testing.assert_close(layer.positional_encoding_gaussian_matrix,
                                   model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix, atol=0, rtol=0)
        with torch.no_grad():
            torch.testing.assert_close(half.prompt_encoder.get_dense_pe(),
                                       model.prompt_encoder.get_dense_pe().to(dtype), atol=0, rtol=0)
            points = torch.tensor([[[1000.0, 3.0]]])
            labels = torch.ones(1, 1, dtype=torch.long)
            want = model.prompt_encoder.embed_prompts((points, labels))
            got = half.prompt_encoder.embed_prompts((points.to(dtype), labels))
            manual = half.prompt_encoder.pe_layer.forward_with_coords(points + 0.5, (128, 128))
        assert got.dtype == dtype
        positive = half.prompt_encoder.point_embeddings[1].weight[0]
        torch.testing.assert_close(got[0, 0], manual[0, 0].to(dtype) + positive)
        assert _rel(got, want) < HALF_REL[dtype]
        assert half.prompt_encoder(None, None, None)[0].dtype == dtype  # the empty sparse embedding too
        back = half.float()
        assert back.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype == torch.float32
        assert half.double().prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype == torch.float64

    def test_mask_prompt_in_half(self):
        import copy

        model, _, _ = _half_case()
        half = copy.deepcopy(model).to(torch.bfloat16)
        masks = torch.randn(2, 1, 32, 32)
        with torch.no_grad():
            want = model.prompt_encoder(None, None, masks)[1]
            got = half.prompt_encoder(None, None, masks)[1]  # float32 mask input, cast to the model's dtype
        assert got.dtype == torch.bfloat16 and _rel(got, want) < HALF_REL[torch.bfloat16]
