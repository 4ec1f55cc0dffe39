import pytest
import torch

from litesam_kernels.ops.bitmask import pack_masks, packed_width, unpack_masks


class TestBitmask:
    @pytest.mark.parametrize("shape", [(3, 5, 1), (2, 7, 31), (4, 9, 32), (2, 3, 33), (1, 17, 100), (0, 4, 40), (2, 0, 5)])
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

    def test_bad_input(self):
        with pytest.raises(TypeError, match="masks"):
            pack_masks(torch.zeros(2, 3, 4))
        with pytest.raises(ValueError, match="packed"):
            unpack_masks(torch.zeros(2, 3, 2, dtype=torch.int32), 70)
