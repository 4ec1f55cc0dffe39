import pytest
import torch

from litesam_kernels.ops.bitmask import pack_masks, packed_width, unpack_masks


class TestBitmask:
    @pytest.mark.parametrize("shape", [(3, 5, 1), (2, 7, 31), (4, 9, 32), (2, 3, 33), (1, 17, 100), (0, 4, 40), (2, 0, 5),
                                       (3, 6, 0)])
    def test_roundtrip(self, shape):
        masks = torch.rand(shape) > 0.5
        packed = pack_masks(masks)
        assert packed.dtype == torch.int32 and packed.shape == (*shape[:-1], packed_width(shape[-1]))
        assert torch.equal(unpack_masks(packed, shape[-1]), masks)

    def test_layout_lsb_first_and_zero_padding(self):
        masks = torch.zeros(1, 2, 40, dtype=torch.bool)
        masks[0, 0, 0] = True  # word 0 bit 0
        masks[0, 0, 31] = True  # word 0 bit 31 (sign bit)
        masks[0, 1, 33] = True  # word 1 bit 1
        packed = pack_masks(masks)
        assert packed[0, 0, 0].item() == 1 - 2**31
        assert packed[0, 0, 1].item() == 0
        assert packed[0, 1, 1].item() == 2
        full = pack_masks(torch.ones(1, 1, 40, dtype=torch.bool))
        assert full[0, 0, 1].item() == 0xFF  # 8 valid bits, padding zero

    def test_every_bit_position_against_per_bit_weights(self):
        """The shift-or packing against the obvious sum of pixel << bit, on every width 1..70 (all word
        tails), and the inverse."""
        for width in range(1, 71):
            masks = torch.rand(3, 5, width) > 0.5
            padded = torch.nn.functional.pad(masks.to(torch.int64), (0, packed_width(width) * 32 - width))
            weights = 2 ** torch.arange(32, dtype=torch.int64)
            unsigned = (padded.unflatten(-1, (packed_width(width), 32)) * weights).sum(-1)
            expected = torch.where(unsigned >= 2**31, unsigned - 2**32, unsigned).to(torch.int32)
            assert torch.equal(pack_masks(masks), expected)
            assert torch.equal(unpack_masks(expected, width), masks)

    def test_non_contiguous_and_unaligned_storage(self):
        masks = torch.rand(4, 9, 64) > 0.3
        expected = pack_masks(masks)
        assert torch.equal(pack_masks(masks.transpose(1, 2).contiguous().transpose(1, 2)), expected)
        unaligned = torch.zeros(3 + masks.numel(), dtype=torch.bool)
        unaligned[3:] = masks.flatten()
        view = unaligned[3:].view(4, 9, 64)  # contiguous, storage offset 3: not an int64 boundary
        assert view.is_contiguous() and view.storage_offset() == 3
        assert torch.equal(pack_masks(view), expected)
        assert torch.equal(pack_masks(masks[:, :, 1:40]), pack_masks(masks[:, :, 1:40].contiguous()))
        assert torch.equal(unpack_masks(expected[:, ::2], 64), masks[:, ::2])

    def test_bad_input(self):
        with pytest.raises(TypeError, match="masks"):
            pack_masks(torch.zeros(2, 3, 4))
        with pytest.raises(ValueError, match="packed"):
            unpack_masks(torch.zeros(2, 3, 2, dtype=torch.int32), 70)


def test_unpack_width_must_be_an_int():
    """Regression (issue 14): width went through a real-number check, so 40.5 was silently truncated to 40."""
    packed = pack_masks(torch.ones(1, 2, 40, dtype=torch.bool))
    for width in (40.5, 40.0, True):
        with pytest.raises(TypeError, match="width must be an int"):
            unpack_masks(packed, width)
    assert unpack_masks(packed, 40).all()
