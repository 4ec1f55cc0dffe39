"""mask_to_rle / rle_to_mask / area_from_rle / coco_encode_rle: every backend vs SAM's functions."""
import numpy as np
import pytest
import torch

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.ops.bitmask import pack_masks
from tests.helpers import runnable_backends
from tests.test_mask_postprocess import blob_logits, edge_case_masks

amg = pytest.importorskip("segment_anything.utils.amg")

RLE = _backend.implementations("mask_to_rle")
SIZES = [(37, 45), (64, 31), (1, 70), (33, 1), (32, 64), (1, 1)]


def blob_masks(n, height, width, seed=0):
    return torch.cat([blob_logits(n, height, width, seed=seed) > 1.0, edge_case_masks(height, width)])


class TestMaskToRle:
    @pytest.mark.parametrize("backend", runnable_backends(RLE))
    @pytest.mark.parametrize("height,width", SIZES)
    def test_matches_sam(self, backend, height, width):
        masks = blob_masks(5, height, width)
        expected = amg.mask_to_rle_pytorch(masks)
        with lk.use_backend(backend):
            got = lk.ops.mask_to_rle(masks)
            got_packed = lk.ops.mask_to_rle(pack_masks(masks), width=width)
        assert got == expected
        assert got_packed == expected
        assert all(type(c) is int for rle in got for c in rle["counts"])

    @pytest.mark.parametrize("backend", runnable_backends(RLE))
    def test_many_masks_non_contiguous(self, backend):
        masks = blob_masks(40, 48, 40, seed=3).transpose(-1, -2)
        with lk.use_backend(backend):
            assert lk.ops.mask_to_rle(masks) == amg.mask_to_rle_pytorch(masks)

    @pytest.mark.parametrize("backend", runnable_backends(RLE))
    def test_no_masks_and_no_pixels(self, backend):
        with lk.use_backend(backend):
            assert lk.ops.mask_to_rle(torch.zeros(0, 5, 6, dtype=torch.bool)) == []
            assert lk.ops.mask_to_rle(torch.zeros(2, 0, 6, dtype=torch.bool)) == [{"size": [0, 6], "counts": [0]}] * 2

    @pytest.mark.parametrize("backend", runnable_backends(RLE))
    def test_roundtrip_area_and_pycocotools(self, backend):
        mask_utils = pytest.importorskip("pycocotools.mask")
        masks = blob_masks(4, 37, 45)
        with lk.use_backend(backend):
            rles = lk.ops.mask_to_rle(masks)
        for mask, rle in zip(masks.numpy(), rles):
            assert np.array_equal(lk.ops.rle_to_mask(rle), mask)
            assert np.array_equal(lk.ops.rle_to_mask(rle), amg.rle_to_mask(rle))
            assert lk.ops.area_from_rle(rle) == amg.area_from_rle(rle) == int(mask.sum())
            coco = lk.ops.coco_encode_rle(rle)
            assert coco == amg.coco_encode_rle(rle)
            assert np.array_equal(mask_utils.decode(coco).astype(bool), mask)

    def test_rle_to_mask_rejects_inconsistent_counts(self):
        with pytest.raises(ValueError, match="sum"):
            lk.ops.rle_to_mask({"size": [2, 3], "counts": [1, 2]})

    def test_bad_input(self):
        with pytest.raises(TypeError, match="masks"):
            lk.ops.mask_to_rle(torch.zeros(2, 3, 3))
        with pytest.raises(ValueError, match="3-D"):
            lk.ops.mask_to_rle(torch.zeros(3, 3, dtype=torch.bool))
        with pytest.raises(ValueError, match="width"):
            lk.ops.mask_to_rle(torch.zeros(2, 3, 1, dtype=torch.int32))

    def test_opcheck(self):
        masks = blob_masks(3, 9, 40)
        torch.library.opcheck(torch.ops.litesam.mask_to_rle_counts, (masks, None),
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
        torch.library.opcheck(torch.ops.litesam.mask_to_rle_counts, (pack_masks(masks), 40),
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))

    @pytest.mark.skipif(_backend.why_not("cpu", RLE, torch.device("cpu")) is not None, reason="no compiled CPU kernel")
    def test_opcheck_compiled_kernel(self):
        masks = blob_masks(3, 9, 40)
        for args in ((masks, 40), (pack_masks(masks), 40)):
            torch.library.opcheck(torch.ops.litesam._mask_to_rle_kernel, args,
                                  test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))

    @pytest.mark.skipif(_backend.why_not("cpu", RLE, torch.device("cpu")) is not None, reason="no compiled CPU kernel")
    def test_compiled_kernel_bad_input(self):
        with pytest.raises(ValueError, match="width"):
            torch.ops.litesam._mask_to_rle_kernel(torch.zeros(2, 3, 4, dtype=torch.bool), 5)
        with pytest.raises(TypeError, match="masks"):
            torch.ops.litesam._mask_to_rle_kernel(torch.zeros(2, 3, 4), 4)


class TestMaskToRleTritonLaunchConfigs:
    """Every GPU launch configuration of the Triton RLE kernels, and row blocks (a program per block of rows,
    counts offset per (column, row block)), under the interpreter on small masks."""

    @pytest.fixture(autouse=True)
    def _needs_triton(self):
        reason = _backend.why_not("triton", RLE, torch.device("cpu"))
        if reason:
            pytest.skip(reason)

    @pytest.mark.parametrize("family", ["rle.counts", "rle.boundaries"])
    def test_every_configuration(self, family):
        from litesam_kernels.triton import _configs, rle as triton_rle  # noqa: F401  (declares the families)

        masks = blob_masks(2, 19, 300, seed=7)  # 300 columns: several column blocks for the small configs
        expected = amg.mask_to_rle_pytorch(masks)
        for index in range(len(_configs.families()[family])):
            with _configs.force_config(family, index), lk.use_backend("triton"):
                assert lk.ops.mask_to_rle(masks) == expected
                assert lk.ops.mask_to_rle(pack_masks(masks), width=300) == expected

    @pytest.mark.parametrize("row_block", [1, 4])
    def test_row_blocks(self, row_block, monkeypatch):
        from litesam_kernels.triton import rle as triton_rle

        monkeypatch.setattr(triton_rle, "MIN_ROW_BLOCK", row_block)
        monkeypatch.setattr(triton_rle, "TARGET_PROGRAMS", 10**6)  # as many row blocks as MIN_ROW_BLOCK allows
        for height, width in ((9, 45), (1, 33), (8, 40)):
            masks = blob_masks(3, height, width, seed=height)
            assert triton_rle.rows_per_program(masks.shape[0], height, width) == row_block
            expected = amg.mask_to_rle_pytorch(masks)
            with lk.use_backend("triton"):
                assert lk.ops.mask_to_rle(masks) == expected
                assert lk.ops.mask_to_rle(pack_masks(masks), width=width) == expected


@pytest.mark.gpu
class TestMaskToRleGpu:
    @pytest.mark.parametrize("backend", runnable_backends(RLE, "cuda"))
    def test_matches_sam_on_cuda(self, backend):
        masks = torch.cat([blob_masks(60, 257, 301, seed=5), blob_masks(3, 257, 301)]).cuda()
        expected = amg.mask_to_rle_pytorch(masks)
        with lk.use_backend(backend):
            assert lk.ops.mask_to_rle(masks) == expected
            assert lk.ops.mask_to_rle(pack_masks(masks), width=301) == expected


def test_rle_dicts_are_validated():
    """Regression (issue 14): a bad RLE dict raised KeyError / numpy errors naming nothing, and counts that do
    not cover h * w were encoded silently into a wrong COCO RLE."""
    with pytest.raises(TypeError, match="rle must be an uncompressed rle dict"):
        lk.ops.rle_to_mask([1, 2, 3])
    with pytest.raises(ValueError, match="no 'counts'"):
        lk.ops.area_from_rle({"size": [2, 3]})
    with pytest.raises(ValueError, match=r"rle\['size'\] must be \[h, w\]"):
        lk.ops.rle_to_mask({"size": [2, 3, 1], "counts": [6]})
    with pytest.raises(ValueError, match=r"uncompressed_rle\['counts'\] must be non-negative and sum to h \* w = 6"):
        lk.ops.coco_encode_rle({"size": [2, 3], "counts": [1, 2]})
    with pytest.raises(TypeError, match="compressed COCO string"):
        lk.ops.rle_to_mask({"size": [2, 3], "counts": "06"})
    assert lk.ops.area_from_rle({"size": [2, 3], "counts": [1, 2, 3]}) == 2
    assert lk.ops.rle_to_mask({"size": [0, 3], "counts": [0]}).shape == (0, 3)
