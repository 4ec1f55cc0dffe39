"""The engine itself: it imports neither segment_anything nor sam2, its geometry is theirs exactly, SAM 1's static
postprocess_small_regions is theirs, binary masks are Fortran-ordered, bad options are rejected."""
import builtins
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from litesam_kernels.engine import EngineOptions, geometry
from tests.tiny_sam import scene, tiny_sam

sam_amg = pytest.importorskip("segment_anything.utils.amg")


class TestNoUpstreamImports:
    def test_engine_and_front_ends_import_and_run_with_upstream_blocked(self):
        """In a fresh interpreter where importing segment_anything or sam2 fails, the engine, the three front
        ends and SegEvery on a LiteSAM work."""
        code = textwrap.dedent("""
            import sys
            sys.modules["segment_anything"] = None  # any import of them raises ImportError
            sys.modules["sam2"] = None
            import numpy as np, torch
            import litesam_kernels.engine, litesam_kernels.amg, litesam_kernels.sam2_amg
            from litesam_kernels.model import build_litesam
            from litesam_kernels.segment_everything import segment_everything
            torch.manual_seed(0)
            image = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
            records = segment_everything(build_litesam("tiny").eval(), [image], points_per_image=4,
                                         pred_iou_thresh=-1e9, stability_score_thresh=0.0, crop_n_layers=1,
                                         min_mask_region_area=4)
            assert isinstance(records[0], list)
            print("ok")
        """)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]

    def test_drop_ins_run_users_models_without_importing_upstream(self, monkeypatch):
        """The drop-ins take the users' models but never import segment_anything / sam2 code themselves."""
        from litesam_kernels.amg import FastSamAutomaticMaskGenerator

        seen = []
        real_import = builtins.__import__

        def spy(name, globals=None, locals=None, fromlist=(), level=0):
            caller = (globals or {}).get("__name__", "")
            if caller.startswith("litesam_kernels") and name.split(".")[0] in ("segment_anything", "sam2"):
                seen.append((caller, name))
            return real_import(name, globals, locals, fromlist, level)

        monkeypatch.setattr(builtins, "__import__", spy)
        generator = FastSamAutomaticMaskGenerator(tiny_sam(), points_per_side=3, min_mask_region_area=5,
                                                  crop_n_layers=1, output_mode="coco_rle")
        generator.generate(scene())
        assert seen == []
        generator.predictor  # upstream's attribute: built on access, from segment_anything
        assert seen == [("litesam_kernels.amg", "segment_anything.predictor")]


class TestGeometryIsSams:
    @pytest.mark.parametrize("n", [1, 2, 7, 32])
    def test_point_grids(self, n):
        np.testing.assert_array_equal(geometry.build_point_grid(n), sam_amg.build_point_grid(n))
        for layers, scale in ((0, 1), (2, 2), (3, 3)):
            if int(n / scale ** layers) < 1:  # SAM divides by zero; we say why
                with pytest.raises(ValueError, match="points_per_side"):
                    geometry.build_all_layer_point_grids(n, layers, scale)
                continue
            ours = geometry.build_all_layer_point_grids(n, layers, scale)
            theirs = sam_amg.build_all_layer_point_grids(n, layers, scale)
            assert len(ours) == len(theirs)
            for a, b in zip(ours, theirs):
                np.testing.assert_array_equal(a, b)

    @pytest.mark.parametrize("size", [(96, 128), (1, 1), (37, 1000), (1500, 2250), (513, 511)])
    @pytest.mark.parametrize("layers,ratio", [(0, 512 / 1500), (1, 512 / 1500), (3, 0.5), (2, 0.0)])
    def test_crop_boxes(self, size, layers, ratio):
        assert geometry.generate_crop_boxes(size, layers, ratio) == sam_amg.generate_crop_boxes(size, layers, ratio)

    def test_edge_test_inclusive_at_20_pixels(self):
        crop, image = [40, 30, 140, 130], [0, 0, 200, 160]
        g = torch.Generator().manual_seed(0)
        xy = torch.randint(0, 100, (500, 2), generator=g)
        boxes = torch.cat([xy, xy + torch.randint(0, 60, (500, 2), generator=g)], 1)
        boxes[:4] = torch.tensor([[0, 0, 79, 79], [20, 20, 80, 80], [21, 21, 79, 79], [0, 0, 100, 100]])
        ours = geometry.is_box_near_crop_edge(boxes, crop, image)
        assert torch.equal(ours, sam_amg.is_box_near_crop_edge(boxes, crop, image))
        assert 0 < int(ours.sum()) < 500

    def test_coordinate_transforms(self):
        from segment_anything.utils.transforms import ResizeLongestSide

        points = np.random.default_rng(0).uniform(0, 300, (50, 2))
        for size, long_side in (((240, 320), 1024), ((333, 97), 128), ((1024, 1024), 1024)):
            expected = ResizeLongestSide(long_side).apply_coords(points, size)
            np.testing.assert_array_equal(geometry.longest_side_coords(points, size, long_side), expected)
            assert geometry.resized_shape(*size, long_side) == ResizeLongestSide.get_preprocess_shape(*size, long_side)
        pytest.importorskip("sam2")
        from sam2.utils.transforms import SAM2Transforms

        transforms = SAM2Transforms(resolution=1024, mask_threshold=0.0)
        tensor = torch.as_tensor(points, dtype=torch.float32)
        assert torch.equal(geometry.normalized_coords(tensor, (333, 97), 1024),
                           transforms.transform_coords(tensor, normalize=True, orig_hw=(333, 97)))


class TestRecordsAndSmallRegions:
    def test_static_postprocess_small_regions_is_sams(self):
        from segment_anything import SamAutomaticMaskGenerator

        from litesam_kernels.amg import FastSamAutomaticMaskGenerator

        g = torch.Generator().manual_seed(4)
        low = torch.rand(12, 1, 10, 12, generator=g)
        masks = torch.nn.functional.interpolate(low, (40, 48), mode="bilinear")[:, 0] + \
            0.35 * torch.rand(12, 40, 48, generator=g) > 0.6
        for i, (y, x) in enumerate(torch.randint(0, 24, (12, 2), generator=g).tolist()):
            window = torch.zeros(40, 48, dtype=torch.bool)
            window[y:y + 16, x:x + 24] = True
            masks[i] &= window  # masks in different places
        masks[3] = masks[2]  # a duplicate: NMS drops one of them
        iou_preds = torch.rand(12, generator=g)
        for to_numpy in (False, True):
            data = [sam_amg.MaskData(rles=sam_amg.mask_to_rle_pytorch(masks), boxes=sam_amg.batched_mask_to_box(masks),
                                     iou_preds=iou_preds.clone()) for _ in range(2)]
            if to_numpy:
                for d in data:
                    d.to_numpy()
            expected = SamAutomaticMaskGenerator.postprocess_small_regions(data[0], 15, 0.95)
            got = FastSamAutomaticMaskGenerator.postprocess_small_regions(data[1], 15, 0.95)
            assert got["rles"] == expected["rles"] and 1 < len(got["rles"]) < 12
            np.testing.assert_array_equal(np.asarray(got["boxes"]), np.asarray(expected["boxes"]))
            np.testing.assert_array_equal(np.asarray(got["iou_preds"]), np.asarray(expected["iou_preds"]))

    def test_binary_masks_fortran_ordered_for_pycocotools(self):
        mask_utils = pytest.importorskip("pycocotools.mask")
        from litesam_kernels.amg import FastSamAutomaticMaskGenerator

        records = FastSamAutomaticMaskGenerator(tiny_sam(), points_per_side=4, pred_iou_thresh=-1.0,
                                                stability_score_thresh=0.2, box_nms_thresh=0.98).generate(scene())
        assert records
        for record in records:
            mask = record["segmentation"]
            assert mask.flags.f_contiguous and not mask.flags.c_contiguous
            rle = mask_utils.encode(mask[..., None].astype(np.uint8))[0]  # fails on C-ordered arrays
            assert int(mask_utils.area(rle)) == record["area"] == int(mask.sum())

    def test_unpack_on_host_is_unpack_masks(self):
        from litesam_kernels.engine.records import unpack_on_host
        from litesam_kernels.ops.bitmask import pack_masks

        masks = torch.rand(5, 7, 70) > 0.5
        unpacked = unpack_on_host(pack_masks(masks).numpy(), 70)
        assert all(np.array_equal(u, m) for u, m in zip(unpacked, masks.numpy()))


class TestOptions:
    @pytest.mark.parametrize("bad,match", [
        (dict(output_mode="png"), "output_mode"), (dict(small_regions="sam3"), "small_regions"),
        (dict(nms="matrix"), "nms"), (dict(field_types="json"), "field_types"),
        (dict(prompts_per_decoder_call=0), "prompts_per_decoder_call"), (dict(masks_per_chunk=1.5), "masks_per_chunk"),
        (dict(crop_n_layers=-1), "crop_n_layers"), (dict(min_mask_region_area=-3), "min_mask_region_area"),
        (dict(points_per_batch=True), "points_per_batch"),
    ])
    def test_bad_options(self, bad, match):
        with pytest.raises(ValueError, match=match):
            EngineOptions(**bad)

    def test_unknown_model(self):
        from litesam_kernels.engine import adapter_for

        with pytest.raises(TypeError, match="Sam"):
            adapter_for(torch.nn.Linear(2, 2))
