"""connected_components / remove_small_regions: every backend vs the reference and vs segment_anything (cv2)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from litesam_kernels import _backend, ops, use_backend
from litesam_kernels.ops.small_regions import _connected_components_reference, _remove_small_regions_reference
from tests.helpers import runnable_backends

cv2 = pytest.importorskip("cv2")
sam_amg = pytest.importorskip("segment_anything.utils.amg")

CC = _backend.implementations("connected_components")
RSR = _backend.implementations("remove_small_regions")


def blob_masks(n, h, w, *, density=0.55, generator=None, noise=0.3):
    """Blob-like masks: low-res noise upsampled, plus pixel noise so there are small islands and holes."""
    low = torch.rand(n, 1, max(2, h // 6), max(2, w // 6), generator=generator)
    field = F.interpolate(low, (h, w), mode="bilinear", align_corners=False)[:, 0]
    return field + noise * torch.rand(n, h, w, generator=generator) > density


def cv2_labels_in_our_order(mask: np.ndarray) -> np.ndarray:
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return labels


class TestConnectedComponents:
    @pytest.mark.parametrize("backend", runnable_backends(CC))
    @pytest.mark.parametrize("shape", [(3, 1, 1), (2, 1, 37), (2, 29, 1), (4, 33, 47), (2, 64, 65)])
    def test_matches_opencv_labels(self, backend, shape):
        g = torch.Generator().manual_seed(sum(shape))
        masks = blob_masks(*shape, generator=g)
        with use_backend(backend):
            ids = ops.connected_components(masks)
        assert ids.dtype == torch.int32 and ids.shape == masks.shape
        for mask, mask_ids in zip(masks.numpy(), ids.numpy()):
            expected = cv2_labels_in_our_order(mask)
            # ids increase in OpenCV's label order: ranking them must give OpenCV's labels exactly.
            ranked = np.searchsorted(np.unique(np.append(mask_ids, 0)), mask_ids)
            np.testing.assert_array_equal(ranked, expected)

    @pytest.mark.parametrize("backend", runnable_backends(CC))
    def test_edge_cases_and_layout(self, backend):
        masks = torch.zeros(2, 3, 9, 10, dtype=torch.bool)
        masks[0, 0] = True
        masks[1, 2, ::2, ::2] = True  # diagonal neighbours only through 8-connectivity? no: isolated pixels
        masks[1, 1, 3, 3] = masks[1, 1, 4, 4] = True  # 8-connected diagonal pair
        with use_backend(backend):
            ids = ops.connected_components(masks)
            strided = ops.connected_components(masks.transpose(-1, -2))
        assert torch.equal(ids, _connected_components_reference(masks))
        assert torch.equal(strided, _connected_components_reference(masks.transpose(-1, -2).contiguous()))
        assert (ids[0, 1] == 0).all() and len(torch.unique(ids[0, 0])) == 1
        assert ids[1, 1, 3, 3] == ids[1, 1, 4, 4] != 0
        assert len(torch.unique(ids[1, 2])) == 1 + 5 * 5

    def test_empty_and_bad_input(self):
        assert ops.connected_components(torch.zeros(0, 4, 5, dtype=torch.bool)).shape == (0, 4, 5)
        with pytest.raises(TypeError, match="masks"):
            ops.connected_components(torch.zeros(2, 4, 5))
        with pytest.raises(ValueError, match="masks"):
            ops.connected_components(torch.zeros(5, dtype=torch.bool))
        with pytest.raises(TypeError, match="masks"):
            ops.connected_components(np.zeros((4, 5), bool))

    def test_opcheck(self):
        masks = blob_masks(2, 13, 17, generator=torch.Generator().manual_seed(0))
        torch.library.opcheck(torch.ops.litesam.connected_components, (masks,))


class TestRemoveSmallRegions:
    @pytest.mark.parametrize("backend", runnable_backends(RSR))
    @pytest.mark.parametrize("mode", ["holes", "islands"])
    def test_matches_segment_anything(self, backend, mode):
        g = torch.Generator().manual_seed(7 if mode == "holes" else 8)
        checked = changed_seen = 0
        for trial in range(40):
            h, w = torch.randint(1, 72, (2,), generator=g).tolist()
            masks = blob_masks(3, h, w, density=float(torch.empty(1).uniform_(0.35, 0.8, generator=g)), generator=g)
            area = float(torch.randint(0, 60, (1,), generator=g)) + (0.5 if trial % 5 == 0 else 0.0)
            with use_backend(backend):
                out, changed = ops.remove_small_regions(masks, area, mode)
            for i, mask in enumerate(masks.numpy()):
                expected, expected_changed = sam_amg.remove_small_regions(mask, area, mode)
                np.testing.assert_array_equal(out[i].numpy(), expected)
                assert bool(changed[i]) == expected_changed
                checked += 1
                changed_seen += expected_changed
        assert checked == 120 and 10 < changed_seen < checked  # both outcomes exercised

    @pytest.mark.parametrize("backend", runnable_backends(RSR))
    def test_islands_all_small_keeps_first_labelled_largest(self, backend):
        # Equal-size islands everywhere: the survivor is OpenCV's first label (2x2 block raster order),
        # which differs from pixel raster order for an island starting on an odd row.
        mask = np.zeros((6, 12), bool)
        mask[1, 6] = mask[1, 7] = True  # row 1, block column 3: OpenCV's label 1
        mask[0, 10] = mask[0, 11] = True  # row 0 (first in pixel raster order), block column 5
        mask[5, 1] = mask[5, 2] = True
        expected, _ = sam_amg.remove_small_regions(mask, 5, "islands")
        with use_backend(backend):
            out, changed = ops.remove_small_regions(torch.from_numpy(mask), 5, "islands")
        np.testing.assert_array_equal(out.numpy(), expected)
        assert bool(changed) and out.sum() == 2 and out[1, 6] and out[1, 7]

    @pytest.mark.parametrize("backend", runnable_backends(RSR))
    def test_edge_cases(self, backend):
        masks = torch.zeros(5, 7, 9, dtype=torch.bool)
        masks[1] = True  # full: holes -> background empty, nothing small
        masks[2, 0, 0] = True  # a single pixel
        masks[3, 1:6, 1:8] = True
        masks[3, 3, 4] = False  # a one-pixel hole
        masks[4, :, 4] = True  # splits the background; both halves touch the border
        with use_backend(backend):
            for mode in ("holes", "islands"):
                for area in (0, 1, 2, 30, 1e9):
                    out, changed = ops.remove_small_regions(masks, area, mode)
                    for i, mask in enumerate(masks.numpy()):
                        expected, expected_changed = sam_amg.remove_small_regions(mask, area, mode)
                        np.testing.assert_array_equal(out[i].numpy(), expected, err_msg=f"{mode} {area} {i}")
                        assert bool(changed[i]) == expected_changed

    @pytest.mark.parametrize("backend", runnable_backends(RSR))
    def test_leading_dims_non_contiguous_and_reference(self, backend):
        g = torch.Generator().manual_seed(3)
        masks = blob_masks(6, 31, 45, generator=g).view(2, 3, 31, 45).transpose(-1, -2)
        with use_backend(backend):
            out, changed = ops.remove_small_regions(masks, 12, "islands")
        ref_out, ref_changed = _remove_small_regions_reference(masks.contiguous(), 12.0, False)
        assert out.shape == masks.shape and changed.shape == (2, 3)
        assert torch.equal(out, ref_out) and torch.equal(changed, ref_changed)

    @pytest.mark.parametrize("backend", runnable_backends(RSR))
    def test_many_masks(self, backend):
        masks = blob_masks(300, 23, 29, generator=torch.Generator().manual_seed(5))
        with use_backend(backend):
            out, changed = ops.remove_small_regions(masks, 9, "holes")
        ref_out, ref_changed = _remove_small_regions_reference(masks, 9.0, True)
        assert torch.equal(out, ref_out) and torch.equal(changed, ref_changed)
        assert 0 < int(changed.sum()) < 300

    def test_empty_and_bad_input(self):
        out, changed = ops.remove_small_regions(torch.zeros(0, 4, 5, dtype=torch.bool), 3, "holes")
        assert out.shape == (0, 4, 5) and changed.shape == (0,)
        masks = torch.zeros(2, 4, 5, dtype=torch.bool)
        with pytest.raises(ValueError, match="mode"):
            ops.remove_small_regions(masks, 3, "hole")
        with pytest.raises(TypeError, match="mode"):
            ops.remove_small_regions(masks, 3, None)
        with pytest.raises(ValueError, match="area_thresh"):
            ops.remove_small_regions(masks, -1, "holes")
        with pytest.raises(TypeError, match="area_thresh"):
            ops.remove_small_regions(masks, "3", "holes")
        with pytest.raises(TypeError, match="masks"):
            ops.remove_small_regions(masks.float(), 3, "holes")

    def test_opcheck(self):
        masks = blob_masks(2, 13, 17, generator=torch.Generator().manual_seed(0))
        torch.library.opcheck(torch.ops.litesam.remove_small_regions, (masks, 5.0, True))

    @pytest.mark.gpu
    @pytest.mark.parametrize("mode", ["holes", "islands"])
    def test_cuda_matches_reference_large(self, mode):
        g = torch.Generator().manual_seed(11)
        masks = blob_masks(24, 517, 771, generator=g)
        out, changed = ops.remove_small_regions(masks.cuda(), 100, mode)
        ref_out, ref_changed = _remove_small_regions_reference(masks, 100.0, mode == "holes")
        assert torch.equal(out.cpu(), ref_out) and torch.equal(changed.cpu(), ref_changed)
        ids = ops.connected_components(masks.cuda())
        assert torch.equal(ids.cpu(), _connected_components_reference(masks))


class TestComponentAreasAndSam2Filling:
    """connected_component_areas (sam2's get_connected_components interface) and fill_small_regions (SAM 2's
    hole/sprinkle filling on logits), vs OpenCV and vs sam2's own SAM2Transforms.postprocess_masks."""

    @pytest.mark.parametrize("backend", runnable_backends(CC))
    @pytest.mark.parametrize("shape", [(3, 1, 1), (2, 29, 1), (4, 33, 47), (2, 64, 65)])
    def test_areas_match_opencv(self, backend, shape):
        from litesam_kernels.ops.small_regions import connected_component_areas

        masks = blob_masks(*shape, generator=torch.Generator().manual_seed(sum(shape)))
        with use_backend(backend):
            labels, areas = connected_component_areas(masks)
        assert labels.dtype == areas.dtype == torch.int32 and labels.shape == areas.shape == masks.shape
        for mask, mask_labels, mask_areas in zip(masks.numpy(), labels.numpy(), areas.numpy()):
            _, cv_labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
            np.testing.assert_array_equal(mask_areas, np.where(cv_labels > 0, stats[cv_labels, cv2.CC_STAT_AREA], 0))
            np.testing.assert_array_equal(mask_labels > 0, mask)

    def test_areas_edge_cases_and_opcheck(self):
        from litesam_kernels.ops.small_regions import connected_component_areas

        labels, areas = connected_component_areas(torch.zeros(0, 4, 5, dtype=torch.bool))
        assert labels.shape == areas.shape == (0, 4, 5)
        full = torch.ones(2, 1, 6, 7, dtype=torch.bool)
        assert (connected_component_areas(full)[1] == 42).all()
        with pytest.raises(TypeError, match="masks"):
            connected_component_areas(torch.zeros(2, 4, 5))
        torch.library.opcheck(torch.ops.litesam.connected_component_areas,
                              (blob_masks(2, 13, 17, generator=torch.Generator().manual_seed(0)),))

    @pytest.mark.parametrize("area", [1, 7, 40, 200])
    def test_fill_small_regions_is_sam2s(self, area):
        pytest.importorskip("sam2")
        from sam2.utils.transforms import SAM2Transforms

        from litesam_kernels.ops.small_regions import fill_small_regions
        from tests._sam2_oracle import sam2_cpu_connected_components

        g = torch.Generator().manual_seed(area)
        low = torch.rand(3, 2, 6, 7, generator=g)
        logits = (torch.nn.functional.interpolate(low, (40, 48), mode="bilinear") - 0.5) * 20 + \
            4 * torch.randn(3, 2, 40, 48, generator=g)
        transforms = SAM2Transforms(resolution=1024, mask_threshold=0.0, max_hole_area=area, max_sprinkle_area=area)
        with sam2_cpu_connected_components():
            # At the logits' own size sam2's final resize is the identity: its output is the filled logits.
            expected = transforms.postprocess_masks(logits, (40, 48))
        got = fill_small_regions(logits, area, area, 0.0)
        assert torch.equal(got, expected)
        assert not torch.equal(got, logits)  # holes and sprinkles were filled
        holes_only = fill_small_regions(logits, area, 0, 0.0)
        assert ((holes_only != logits) <= (logits <= 0)).all() and (holes_only[holes_only != logits] == 10).all()

    def test_fill_small_regions_bad_input(self):
        from litesam_kernels.ops.small_regions import fill_small_regions

        logits = torch.randn(2, 8, 8)
        assert torch.equal(fill_small_regions(logits, 0, 0), logits)
        with pytest.raises(TypeError, match="logits"):
            fill_small_regions(logits > 0, 3, 3)
        with pytest.raises(ValueError, match="max_hole_area"):
            fill_small_regions(logits, -1, 3)
        with pytest.raises(ValueError, match="logits"):
            fill_small_regions(torch.randn(5), 3, 3)
