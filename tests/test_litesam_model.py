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
