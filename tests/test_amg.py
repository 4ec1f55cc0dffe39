"""FastSamAutomaticMaskGenerator vs segment_anything.SamAutomaticMaskGenerator on a tiny random Sam (CPU),
see tests/tiny_sam.py: identical records (types included), scores within float tolerance."""
import json
import math

import numpy as np
import pytest
import torch

sa = pytest.importorskip("segment_anything")
from segment_anything import SamAutomaticMaskGenerator  # noqa: E402

from litesam_kernels.amg import FastSamAutomaticMaskGenerator, sam_batched_nms  # noqa: E402
from tests.tiny_sam import scene, tiny_sam  # noqa: E402

H, W = 96, 128


@pytest.fixture(scope="module")
def sam():
    return tiny_sam()


@pytest.fixture(scope="module")
def image():
    return scene()


# Thresholds low enough that many masks survive; box NMS loose because random-weight masks overlap a lot.
BASE = dict(points_per_side=8, points_per_batch=16, pred_iou_thresh=-1.0, stability_score_thresh=0.2,
            box_nms_thresh=0.98, crop_nms_thresh=0.98)


def typed(value):
    """Records as JSON with types kept (1 vs 1.0 differ, as they do for json.dumps users)."""
    if isinstance(value, np.ndarray):
        return {"ndarray": value.dtype.str, "shape": value.shape, "bits": np.packbits(value).tobytes().hex()}
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [typed(v) for v in value]
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else value)
    return (type(value).__name__, value)


def assert_same_records(expected, got, score_tol=1e-6):
    assert len(got) == len(expected)
    for i, (e, g) in enumerate(zip(expected, got)):
        assert set(g) == set(e)
        for key in ("predicted_iou", "stability_score"):
            ev, gv = e[key], g[key]
            assert (math.isnan(ev) and math.isnan(gv)) or abs(ev - gv) <= score_tol, (i, key, ev, gv)
        e_exact = {k: v for k, v in e.items() if k not in ("predicted_iou", "stability_score")}
        g_exact = {k: v for k, v in g.items() if k not in ("predicted_iou", "stability_score")}
        assert json.dumps(typed(g_exact)) == json.dumps(typed(e_exact)), f"record {i} differs"


def run_both(sam, image, **kwargs):
    expected = SamAutomaticMaskGenerator(sam, **kwargs).generate(image)
    got = FastSamAutomaticMaskGenerator(sam, **kwargs).generate(image)
    assert_same_records(expected, got)
    return expected


class TestFastSamAutomaticMaskGenerator:
    def test_uncompressed_rle_many_records(self, sam, image):
        records = run_both(sam, image, **BASE, output_mode="uncompressed_rle")
        assert len(records) >= 8
        assert len({tuple(r["bbox"]) for r in records}) == len(records)

    def test_binary_mask_with_decoder_grouping(self, sam, image):
        expected = SamAutomaticMaskGenerator(sam, **BASE).generate(image)
        for batches, fused in ((1, True), (3, True), (2, False)):
            got = FastSamAutomaticMaskGenerator(sam, **BASE, batches_per_decoder_call=batches,
                                                fused_postprocess=fused).generate(image)
            assert_same_records(expected, got)
        assert all(r["segmentation"].shape == (H, W) and r["segmentation"].dtype == bool for r in got)

    def test_crops_and_coco_rle(self, sam, image):
        pytest.importorskip("pycocotools")
        records = run_both(sam, image, **BASE, crop_n_layers=1, output_mode="coco_rle")
        assert len({tuple(r["crop_box"]) for r in records}) > 1  # masks from several crops survive
        assert all(isinstance(r["segmentation"]["counts"], str) for r in records)

    def test_min_mask_region_area(self, sam, image):
        kwargs = dict(BASE, output_mode="uncompressed_rle")
        plain = FastSamAutomaticMaskGenerator(sam, **kwargs).generate(image)
        records = run_both(sam, image, **kwargs, min_mask_region_area=60)
        assert [r["segmentation"] for r in records] != [r["segmentation"] for r in plain]  # something changed

    def test_crops_with_min_mask_region_area_and_small_chunks(self, sam, image):
        kwargs = dict(BASE, crop_n_layers=1, min_mask_region_area=40, output_mode="uncompressed_rle")
        expected = SamAutomaticMaskGenerator(sam, **kwargs).generate(image)
        got = FastSamAutomaticMaskGenerator(sam, **kwargs, masks_per_chunk=3).generate(image)
        assert_same_records(expected, got)

    def test_nan_stability_and_empty_masks(self, sam, image):
        # No stability filter: masks with an empty union (NaN stability, empty box) are kept, as in SAM.
        records = run_both(sam, image, **dict(BASE, stability_score_thresh=0.0, pred_iou_thresh=0.0),
                           output_mode="uncompressed_rle")
        assert any(r["area"] == 0 for r in records)

    def test_point_grids_and_strict_thresholds(self, sam, image):
        grid = np.random.default_rng(1).uniform(0.02, 0.98, (37, 2))
        kwargs = dict(BASE, points_per_side=None, point_grids=[grid], pred_iou_thresh=0.0,
                      stability_score_thresh=0.5, output_mode="uncompressed_rle")
        run_both(sam, image, **kwargs)

    def test_no_mask_survives(self, sam, image):
        kwargs = dict(BASE, points_per_side=4, pred_iou_thresh=0.999, output_mode="uncompressed_rle")
        assert run_both(sam, image, **kwargs) == []
        kwargs["min_mask_region_area"] = 10
        assert FastSamAutomaticMaskGenerator(sam, **kwargs).generate(image) == []

    def test_bgr_model(self, image):
        model = tiny_sam(seed=1)
        model.image_format = "BGR"  # the input is still RGB: both generators flip it for the model
        run_both(model, image, **dict(BASE, points_per_side=5), output_mode="uncompressed_rle")

    def test_generate_batch_equals_generate(self, sam, image):
        images = [image, scene(64, 48, seed=1)]
        kwargs = dict(BASE, crop_n_layers=1, output_mode="uncompressed_rle")
        expected = [FastSamAutomaticMaskGenerator(sam, **kwargs).generate(im) for im in images]
        # 3 crop images per encoder call: groups straddle the two images (5 crops each).
        got = FastSamAutomaticMaskGenerator(sam, **kwargs, images_per_encoder_call=3).generate_batch(images)
        assert len(got) == len(images) and all(len(e) > 0 for e in expected)
        for e, g in zip(expected, got):
            assert_same_records(e, g)
        assert FastSamAutomaticMaskGenerator(sam, **kwargs).generate_batch([]) == []

    def test_bad_input(self, sam, image):
        gen = FastSamAutomaticMaskGenerator(sam, **BASE)
        with pytest.raises(TypeError, match="uint8"):
            gen.generate(image.astype(np.float32))
        with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
            gen.generate(image[..., :2])
        with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
            gen.generate(image[..., 0])
        with pytest.raises(ValueError, match="empty"):
            gen.generate(np.zeros((0, 10, 3), np.uint8))
        with pytest.raises(TypeError, match="numpy"):
            gen.generate(torch.from_numpy(image))
        with pytest.raises(TypeError, match="list"):
            gen.generate_batch(image[None][0])
        with pytest.raises(ValueError, match="output_mode"):
            FastSamAutomaticMaskGenerator(sam, output_mode="polygon")
        with pytest.raises(ValueError, match="Exactly one"):
            FastSamAutomaticMaskGenerator(sam, points_per_side=None)
        with pytest.raises(ValueError, match="points_per_batch"):
            FastSamAutomaticMaskGenerator(sam, points_per_batch=0)


class TestSamBatchedNms:
    """torchvision.ops.batched_nms(boxes, scores, zeros, t), tie order included, on both of its paths."""

    @pytest.mark.parametrize("n", [0, 1, 300, 999, 1001, 2500])
    @pytest.mark.parametrize("scores_kind", ["binary", "distinct", "per_crop"])
    def test_matches_torchvision_on_cpu(self, n, scores_kind):
        torchvision = pytest.importorskip("torchvision")
        g = torch.Generator().manual_seed(n)
        xy = torch.randint(0, 200, (n, 2), generator=g)
        boxes = torch.cat([xy, xy + torch.randint(0, 60, (n, 2), generator=g)], 1).float()
        if scores_kind == "binary":
            scores = (torch.rand(n, generator=g) < 0.3).float()
        elif scores_kind == "per_crop":
            scores = 1 / torch.tensor([100 * 100, 60 * 60, 60 * 61])[torch.randint(0, 3, (n,), generator=g)]
        else:
            scores = torch.rand(n, generator=g)
        expected = torchvision.ops.batched_nms(boxes, scores, torch.zeros(n), 0.7)
        assert torch.equal(sam_batched_nms(boxes, scores, 0.7), expected)


# A Sam in half precision (segment-anything-fast style, model.to(dtype)) vs the float32 run, thresholds opened
# (tests/_half.py defines the measure). Measured on this CPU (tiny Sam, 8x8 points, 192 records): bfloat16
# min IoU of large masks 0.876, median 0.977, max pixels differing 0.004 of the image, max predicted-IoU delta
# 0.0069; float16 0.978 / 1.0 / 0.0005 / 0.00065. Bounds: about 2x those. Stability scores of small masks move
# by up to 0.12 (a few boundary pixels of a few-pixel mask): not bounded.
HALF_BOUNDS = {
    torch.bfloat16: dict(matched=1.0, min_mask_iou_large=0.8, median_mask_iou=0.95, max_pixels_differ=0.01,
                         max_predicted_iou_delta=0.015),
    torch.float16: dict(matched=1.0, min_mask_iou_large=0.95, median_mask_iou=0.99, max_pixels_differ=0.002,
                        max_predicted_iou_delta=0.002),
}


class TestHalfPrecision:
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
    def test_records_close_to_float32(self, sam, image, dtype):
        import copy

        from tests._half import assert_field_types, assert_within, compare_records

        kwargs = dict(points_per_side=8, points_per_batch=16, pred_iou_thresh=-1e9, stability_score_thresh=0.0,
                      box_nms_thresh=1.0, output_mode="uncompressed_rle")
        expected = FastSamAutomaticMaskGenerator(sam, **kwargs).generate(image)
        got = FastSamAutomaticMaskGenerator(copy.deepcopy(sam).to(dtype), **kwargs).generate(image)
        assert len(got) == len(expected) == 192
        assert_field_types(got)
        assert_within(compare_records(expected, got), HALF_BOUNDS[dtype])

    def test_half_model_with_crops_and_small_regions(self, sam, image):
        import copy

        records = FastSamAutomaticMaskGenerator(copy.deepcopy(sam).to(torch.bfloat16), **BASE, crop_n_layers=1,
                                                min_mask_region_area=40).generate(image)
        assert records and all(r["segmentation"].flags.f_contiguous for r in records)


@pytest.mark.gpu
class TestOnCuda:
    @pytest.mark.parametrize("fused", [True, False])
    def test_matches_segment_anything(self, image, fused):
        model = tiny_sam().cuda()
        kwargs = dict(BASE, crop_n_layers=1, min_mask_region_area=40, output_mode="uncompressed_rle")
        expected = SamAutomaticMaskGenerator(model, **kwargs).generate(image)
        got = FastSamAutomaticMaskGenerator(model, **kwargs, fused_postprocess=fused).generate(image)
        assert_same_records(expected, got, score_tol=1e-5)
        assert len(got) >= 8


def test_constructor_rejects_bad_numbers(sam):
    """Regression (issue 14): NaN and out-of-range thresholds were accepted (NaN compares False with every
    score: silently everything or nothing kept) and a zero points_per_side divided by zero."""
    for kwargs, error, message in ((dict(pred_iou_thresh=math.nan), ValueError, "pred_iou_thresh"),
                                   (dict(box_nms_thresh=1.5), ValueError, r"box_nms_thresh must be in \[0, 1\]"),
                                   (dict(points_per_side=0), ValueError, "points_per_side"),
                                   (dict(points_per_side=4.5), TypeError, "points_per_side must be an int"),
                                   (dict(crop_n_layers=-1), ValueError, "crop_n_layers"),
                                   (dict(stability_score_offset="1"), TypeError, "stability_score_offset")):
        with pytest.raises(error, match=message):
            FastSamAutomaticMaskGenerator(sam, **kwargs)
    FastSamAutomaticMaskGenerator(sam, pred_iou_thresh=-math.inf, points_per_side=None,
                                  point_grids=[np.zeros((1, 2))])  # SAM takes these
