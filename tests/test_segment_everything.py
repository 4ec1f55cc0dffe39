"""SegEvery pipeline (tiny model on CPU): records valid and SAM-formatted, post-processing = SAM's, CLI."""
import json

import numpy as np
import pytest
import torch

from litesam_kernels.model import build_litesam
from litesam_kernels.segment_everything import (
    SegmentEverything, coco_rle_from_rle, postprocess_masks, rle_from_mask, rle_to_mask, segment_everything,
    unpack_mask_host,
)
from litesam_kernels.ops.bitmask import pack_masks, unpack_masks

LOOSE = dict(pred_iou_thresh=-1e9, stability_score_thresh=0.0, points_per_image=24, prompts_per_batch=10)


def synthetic_photo(h, w, seed=0):
    """A real-looking image: smooth background gradient, a few filled ellipses and rectangles, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([120 + 80 * xx / w, 90 + 60 * yy / h, np.full((h, w), 140.0)], axis=-1)
    for _ in range(5):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(h / 10, h / 3), rng.uniform(w / 10, w / 3)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        image[inside] = rng.uniform(0, 255, 3)
    y0, x0 = int(h * 0.6), int(w * 0.1)
    image[y0:y0 + h // 5, x0:x0 + w // 4] = (20, 200, 40)
    image += rng.normal(0, 4, image.shape)
    return image.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_litesam("tiny").eval()


def check_record(record, h, w):
    mask = record["segmentation"]
    assert mask.shape == (h, w) and mask.dtype == bool
    assert record["area"] == int(mask.sum())
    x, y, bw, bh = record["bbox"]
    if record["area"]:
        rows, cols = np.nonzero(mask)
        assert [x, y, x + bw, y + bh] == [cols.min(), rows.min(), cols.max(), rows.max()]
    else:
        assert record["bbox"] == [0, 0, 0, 0]
    assert record["crop_box"] == [0, 0, w, h]
    assert len(record["point_coords"]) == 1 and 0 <= record["point_coords"][0][0] <= w
    assert 0 <= record["point_coords"][0][1] <= h
    assert isinstance(record["predicted_iou"], float) and isinstance(record["stability_score"], float)


class TestSegmentEverything:
    def test_end_to_end_records_valid(self, tiny_model):
        images = [synthetic_photo(150, 200, 0), synthetic_photo(90, 70, 1)]
        binary = segment_everything(tiny_model, images, **LOOSE)
        rle = segment_everything(tiny_model, images, output_mode="uncompressed_rle", **LOOSE)
        coco = segment_everything(tiny_model, images, output_mode="coco_rle", **LOOSE)
        assert len(binary) == 2
        for image, records, rle_records, coco_records in zip(images, binary, rle, coco):
            assert len(records) > 0 and len(records) == len(rle_records) == len(coco_records)
            ious = [r["predicted_iou"] for r in records]
            assert ious == sorted(ious, reverse=True)
            for record, rle_record, coco_record in zip(records, rle_records, coco_records):
                check_record(record, *image.shape[:2])
                assert (rle_to_mask(rle_record["segmentation"]) == record["segmentation"]).all()
                assert (rle_to_mask(coco_record["segmentation"]) == record["segmentation"]).all()
                assert rle_record["bbox"] == record["bbox"] and coco_record["area"] == record["area"]

    def test_batch_tensor_equals_list_and_single(self, tiny_model):
        image = synthetic_photo(64, 96, 2)
        batch = torch.from_numpy(np.stack([image, image]))
        from_batch = segment_everything(tiny_model, batch, output_mode="coco_rle", **LOOSE)
        single = segment_everything(tiny_model, image, output_mode="coco_rle", **LOOSE)
        assert len(from_batch) == 2 and len(single) == 1
        for records in from_batch:
            assert [r["segmentation"] for r in records] == [r["segmentation"] for r in single[0]]

    def test_thresholds_filter(self, tiny_model):
        image = synthetic_photo(80, 80, 3)
        assert segment_everything(tiny_model, [image], pred_iou_thresh=1e9, points_per_image=8) == [[]]
        loose = segment_everything(tiny_model, [image], **LOOSE)[0]
        strict = segment_everything(tiny_model, [image], **{**LOOSE, "box_nms_thresh": 0.0})[0]
        assert 0 < len(strict) <= len(loose)

    @pytest.mark.parametrize("prompt", ["point", "point+box"])
    def test_prompt_modes(self, tiny_model, prompt):
        image = synthetic_photo(64, 64, 4)
        records = segment_everything(tiny_model, [image], prompt=prompt, box_nms_thresh=1.0, **LOOSE)[0]
        assert records
        for record in records:
            check_record(record, 64, 64)

    def test_batched_decoder_matches_per_prompt_path(self, tiny_model):
        images = [synthetic_photo(96, 128, 5), synthetic_photo(128, 64, 6)]
        fast = SegmentEverything(tiny_model, box_nms_thresh=1.0, **LOOSE).generate(images)
        slow = SegmentEverything(tiny_model, box_nms_thresh=1.0, batched_decoder=False, **LOOSE).generate(images)
        for a, b in zip(fast, slow):
            assert len(a) == len(b)
            np.testing.assert_allclose([r["predicted_iou"] for r in a], [r["predicted_iou"] for r in b], rtol=1e-4, atol=1e-5)
            for ra, rb in zip(a, b):
                differ = (ra["segmentation"] != rb["segmentation"]).sum()
                assert differ <= 0.001 * ra["segmentation"].size

    def test_full_size_model(self):
        """The shipped config end to end (1024^2 input, 64x64 embedding, 256^2 low-res masks), few prompts."""
        torch.manual_seed(0)
        model = build_litesam("litesam").eval()
        image = synthetic_photo(200, 300, 7)
        records = segment_everything(model, [image], pred_iou_thresh=-1e9, stability_score_thresh=0.0,
                                     points_per_image=4, box_nms_thresh=1.0)[0]
        assert 0 < len(records) <= 4
        for record in records:
            check_record(record, 200, 300)

    def test_bad_input(self, tiny_model):
        good = synthetic_photo(32, 32)
        with pytest.raises(TypeError, match="uint8"):
            segment_everything(tiny_model, [good.astype(np.float32)])
        with pytest.raises(TypeError, match="uint8"):
            segment_everything(tiny_model, torch.zeros(1, 8, 8, 3))
        with pytest.raises(ValueError, match="3 channels"):
            segment_everything(tiny_model, [good[..., :2]])
        with pytest.raises(ValueError, match="3 channels"):
            segment_everything(tiny_model, [np.zeros((3, 32, 32), np.uint8)])
        with pytest.raises(ValueError, match="empty"):
            segment_everything(tiny_model, [np.zeros((0, 5, 3), np.uint8)])
        with pytest.raises(ValueError, match="shape"):
            segment_everything(tiny_model, np.zeros((2, 2), np.uint8))
        with pytest.raises(TypeError, match="list"):
            segment_everything(tiny_model, "image.png")
        with pytest.raises(ValueError, match="output_mode"):
            SegmentEverything(tiny_model, output_mode="polygons")
        with pytest.raises(ValueError, match="prompt"):
            SegmentEverything(tiny_model, prompt="grid")
        assert segment_everything(tiny_model, []) == []


class TestPostprocessAgainstSAM:
    def test_postprocess_masks_matches_segment_anything(self):
        from segment_anything.modeling import Sam
        from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

        low_res = torch.nn.functional.interpolate(torch.randn(6, 1, 8, 8) * 4, (32, 32), mode="bilinear")[:, 0]
        low_res[0] = -20.0  # an empty mask: NaN-free zero box, stability NaN
        input_size, original = (128, 96), (100, 75)
        packed, stability, boxes, areas = postprocess_masks(low_res, input_size, original, 128, 0.0, 1.0)

        sam = Sam.__new__(Sam)
        torch.nn.Module.__init__(sam)
        sam.image_encoder = type("E", (), {"img_size": 128})()
        logits = Sam.postprocess_masks(sam, low_res[:, None], input_size, original)[:, 0]
        masks = logits > 0.0
        assert torch.equal(unpack_masks(packed, original[1]), masks)
        torch.testing.assert_close(stability, calculate_stability_score(logits, 0.0, 1.0), equal_nan=True)
        assert torch.equal(boxes, batched_mask_to_box(masks))
        assert torch.equal(areas, masks.sum((1, 2)))

    def test_rle_matches_segment_anything_and_pycocotools(self):
        from segment_anything.utils.amg import coco_encode_rle, mask_to_rle_pytorch

        masks = torch.nn.functional.interpolate(torch.randn(4, 1, 5, 6), (37, 41), mode="bilinear")[:, 0] > 0
        masks[1] = True
        masks[2] = False
        for mask, expected in zip(masks, mask_to_rle_pytorch(masks)):
            rle = rle_from_mask(mask.numpy())
            assert rle == expected
            assert coco_rle_from_rle(rle) == coco_encode_rle(expected)

    def test_host_unpack_matches_bitmask_layout(self):
        masks = torch.rand(3, 9, 70) > 0.5
        packed = pack_masks(masks).numpy()
        for i in range(3):
            assert (unpack_mask_host(packed[i], 70) == masks[i].numpy()).all()


class TestCLI:
    def test_cli_writes_json_and_overlay(self, tmp_path, capsys):
        from PIL import Image

        from litesam_kernels import cli

        paths = []
        for i, size in enumerate([(60, 80), (50, 40)]):
            path = tmp_path / f"photo{i}.png"
            Image.fromarray(synthetic_photo(*size, seed=i)).save(path)
            paths.append(str(path))
        out = tmp_path / "out"
        status = cli.main(paths + ["--out", str(out), "--config", "tiny", "--points-per-image", "8",
                                   "--pred-iou-thresh=-1e9", "--stability-score-thresh", "0"])
        assert status == 0
        err = capsys.readouterr().err
        assert "RANDOM weights" in err and "2/2" in err  # tqdm bar or the plain "[2/2] path" lines
        for i, size in enumerate([(60, 80), (50, 40)]):
            result = json.loads((out / f"photo{i}.json").read_text())
            assert (result["height"], result["width"]) == size and result["annotations"]
            for record in result["annotations"]:
                assert isinstance(record["segmentation"]["counts"], str)
                assert rle_to_mask(record["segmentation"]).sum() == record["area"]
            overlay = np.asarray(Image.open(out / f"photo{i}_overlay.png"))
            assert overlay.shape == (*size, 3)

    def test_cli_checkpoint_and_missing_file(self, tmp_path):
        from PIL import Image

        from litesam_kernels import cli

        checkpoint = tmp_path / "tiny.pt"
        build_litesam("tiny").save(checkpoint)
        image = tmp_path / "a.jpg"
        Image.fromarray(synthetic_photo(40, 40)).save(image)
        assert cli.main([str(image), "--out", str(tmp_path / "o"), "--checkpoint", str(checkpoint),
                         "--points-per-image", "4", "--no-overlay", "--no-progress"]) == 0
        assert (tmp_path / "o" / "a.json").exists() and not (tmp_path / "o" / "a_overlay.png").exists()
        assert cli.main([str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")]) == 2
