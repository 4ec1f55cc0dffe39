"""litesam_kernels.train without a teacher: views, targets, losses, data positions, caches, schedule, options."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from litesam_kernels.train import losses
from litesam_kernels.train.cache import CacheMismatchError, EmbeddingCache, MaskCache, downsample_masks
from litesam_kernels.train.data import Positions, StepBatches, ViewPlan
from litesam_kernels.train.targets import PPN_STRIDE, decoder_prompts, gaussian_radius, mask_geometry, ppn_targets
from litesam_kernels.train.trainer import TrainError, TrainOptions, WarmupCosine, load_config
from litesam_kernels.train.views import MASK_STRIDE, Augmentation, View, normalize, render_image, render_masks

S = 128  # the tiny config's input size


def shapes_image(height=150, width=230):
    """White shapes on black, and their masks: what the rendered pixels must show, cell for cell."""
    image = np.zeros((height, width, 3), np.uint8)
    masks = np.zeros((3, height, width), bool)
    masks[0, 30:97, 40:181] = True
    yy, xx = np.mgrid[:height, :width]
    masks[1] = (yy - 110) ** 2 + (xx - 30) ** 2 < 25 ** 2
    masks[2] = ((yy - 60) ** 2 + (xx - 200) ** 2 < 22 ** 2) & ((yy - 60) ** 2 + (xx - 200) ** 2 > 12 ** 2)  # a ring
    image[masks.any(0)] = 255
    return image, masks


class TestViews:
    def test_identity_view_is_segevery_preprocessing(self):
        """What the student trains on equals what SegEvery feeds it, up to SAM's uint8 rounding of the resize."""
        image, _ = shapes_image()
        image = (image * 0.7 + np.random.default_rng(0).integers(0, 60, image.shape)).astype(np.uint8)
        mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])
        pixels, size = render_image(image, View.identity(*image.shape[:2]), S)
        ours = normalize(pixels[None], torch.tensor([size]), mean, std)
        try:
            from litesam_kernels.segment_everything import preprocess
            theirs, sizes = preprocess([torch.from_numpy(image)], S, mean.view(3, 1, 1), std.view(3, 1, 1))
        except ImportError:  # the engine's name for it
            from litesam_kernels.engine.preprocess import preprocess_longest_side
            theirs, sizes = preprocess_longest_side([image], S, mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1))
        assert tuple(int(v) for v in sizes[0]) == size
        assert (ours - theirs).abs().max() <= 0.5 / std.min() + 1e-5  # rounding to uint8, nothing else

    @pytest.mark.parametrize("mask_scale", [1.0, 0.5, 2.0])
    def test_masks_stay_aligned_with_pixels(self, mask_scale):
        """Random crops/flips: the rendered mask coverage equals the white fraction of each 4x4 cell, whatever
        resolution the masks are stored at. Measured max error: 0.024 at scales 1 and 2 (the pixels' resize is
        antialiased bilinear, the masks' cells are box averages), 0.25 at 0.5, where the stored masks
        themselves are off by half a pixel at the shapes' odd edges."""
        image, masks = shapes_image()
        masks = masks.any(0, keepdims=True)  # the white pixels (the shapes overlap)
        size = (int(masks.shape[1] * mask_scale), int(masks.shape[2] * mask_scale))
        stored = downsample_masks(torch.from_numpy(masks), size) if mask_scale < 1 else \
            F.interpolate(torch.from_numpy(masks)[:, None].float(), size, mode="nearest")[:, 0] > 0.5
        augmentation = Augmentation(colour_jitter=0.0)
        rng = np.random.default_rng(1)
        for trial in range(6):
            view = augmentation.sample(rng, *image.shape[:2]) if trial else View.identity(*image.shape[:2])
            pixels, _ = render_image(image, view, S)
            white = F.avg_pool2d(pixels[0].float()[None, None] / 255, MASK_STRIDE)[0, 0]
            coverage = render_masks(stored, image.shape[:2], view, S)[0]
            assert coverage.shape == (S // MASK_STRIDE, S // MASK_STRIDE)
            error = (coverage - white).abs()
            assert error.max() <= (0.3 if mask_scale < 1 else 0.03), (trial, view)
            assert error.mean() <= 0.01

    def test_masks_render_as_one_roi_align_over_the_whole_grid(self):
        """Each mask is sampled over the cells its extent reaches only; the result is that of one
        roi_align over the whole grid (the straightforward reference, written out here)."""
        from torchvision.ops import roi_align

        image, masks = shapes_image()
        masks = torch.from_numpy(np.concatenate([masks, np.zeros((1,) + masks.shape[1:], bool)]))
        stored = downsample_masks(masks, (75, 115))
        rng = np.random.default_rng(5)
        for trial in range(5):
            view = Augmentation().sample(rng, *image.shape[:2]) if trial else View.identity(*image.shape[:2])
            got = render_masks(stored, image.shape[:2], view, S)
            height, width = image.shape[:2]
            x0, y0, x1, y1 = view.crop
            rows_at = (torch.arange(75) + 0.5) * (height / 75)
            cols_at = (torch.arange(115) + 0.5) * (width / 115)
            window = ((rows_at >= y0) & (rows_at < y1))[:, None] & ((cols_at >= x0) & (cols_at < x1))[None, :]
            source = stored.float() * window
            if view.flip:
                source, (x0, x1) = source.flip(-1), (width - x1, width - x0)
            h, w = view.input_size(S)
            rows, cols = -(-h // MASK_STRIDE), -(-w // MASK_STRIDE)
            box = [x0, y0, x0 + cols * MASK_STRIDE * (x1 - x0) / w, y0 + rows * MASK_STRIDE * (y1 - y0) / h]
            scale = [115 / width, 75 / height] * 2
            boxes = torch.tensor([[0.0] + [c * k for c, k in zip(box, scale)]])
            expected = torch.zeros_like(got)
            expected[:, :rows, :cols] = roi_align(source[None], boxes, (rows, cols), 1.0, -1, True)[0].clamp(0, 1)
            assert torch.allclose(got, expected, atol=1e-5), trial
            assert got[-1].abs().max() == 0

    def test_augmentation_is_a_function_of_its_generator(self):
        augmentation = Augmentation()
        a = [augmentation.sample(np.random.default_rng([3, 1]), 100, 200) for _ in range(2)]
        assert a[0] == a[1]
        for seed in range(50):
            view = augmentation.sample(np.random.default_rng(seed), 100, 200)
            x0, y0, x1, y1 = view.crop
            assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 100
            assert (x1 - x0) * (y1 - y0) >= 0.3 * 100 * 200 * 0.74  # min_area, up to rounding and the aspect clip

    def test_bad_augmentation_settings(self):
        with pytest.raises(ValueError, match="min_area"):
            Augmentation(min_area=0)
        with pytest.raises(ValueError, match="colour_jitter"):
            Augmentation(colour_jitter=1.5)

    def test_view_plan(self):
        plan = ViewPlan(3, Augmentation(), seed=7)
        assert plan.view(4, 0, 50, 60) == View.identity(50, 60)
        assert plan.view(4, 1, 50, 60) == ViewPlan(3, Augmentation(), seed=7).view(4, 1, 50, 60)
        assert plan.view(4, 1, 50, 60) != plan.view(4, 2, 50, 60)
        assert ViewPlan(1, None, seed=1).manifest() == ViewPlan(1, None, seed=2).manifest()  # identity only
        with pytest.raises(ValueError, match="augmentation"):
            ViewPlan(2, None, 0)


class TestTargets:
    def coverage(self, view=None):
        image, masks = shapes_image()
        view = view or View.identity(*image.shape[:2])
        return render_masks(torch.from_numpy(masks), image.shape[:2], view, S), view.input_size(S)

    def test_geometry(self):
        coverage, _ = self.coverage()
        geometry = mask_geometry(coverage)
        assert geometry["index"].tolist() == [0, 1, 2]
        cells = geometry["cells"]
        for i in range(3):
            ys, xs = torch.nonzero(cells[i], as_tuple=True)
            expected = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float() * MASK_STRIDE
            assert torch.equal(geometry["boxes"][i], expected)
            cx, cy = (geometry["centres"][i] / MASK_STRIDE).floor().long().tolist()
            assert cells[i, cy, cx], f"mask {i}'s centre is not on the mask"  # also for the ring
        ring_centre = geometry["centres"][2]
        box = geometry["boxes"][2]
        assert not torch.allclose(ring_centre, (box[:2] + box[2:]) / 2, atol=4)  # the ring's centroid is a hole

    def test_empty_masks_are_dropped(self):
        coverage = torch.zeros(2, S // 4, S // 4)
        coverage[1, 3:5, 6:9] = 1.0
        geometry = mask_geometry(coverage)
        assert geometry["index"].tolist() == [1]
        assert mask_geometry(torch.zeros(0, 32, 32))["boxes"].shape == (0, 4)

    def test_ppn_targets_decode_back_to_the_boxes(self):
        """ppn_decode on the targets (peaks at the positives, the target distances) gives the masks' boxes."""
        from litesam_kernels.ops import ppn_decode

        coverage, size = self.coverage()
        geometry = mask_geometry(coverage)
        targets = ppn_targets(geometry, size, S)
        assert targets["positive"].sum() == 3
        assert torch.all(targets["heatmap"][targets["positive"]] == 1)
        assert targets["heatmap"].max() == 1 and targets["heatmap"][~targets["valid"]].abs().max() == 0
        logits = torch.where(targets["positive"], 10.0, -10.0)[None, None]
        prompts = ppn_decode(logits, targets["box"][None], k=8, score_threshold=0.5, stride=PPN_STRIDE,
                             image_sizes=torch.tensor([size]))
        assert prompts.num_valid.item() == 3
        decoded = sorted(prompts.boxes[0, :3].tolist())
        expected = sorted(geometry["boxes"].clamp(max=float(max(size))).tolist())
        assert np.allclose(decoded, expected, atol=1e-4)

    def test_shared_centre_cell_regresses_the_smaller_mask(self):
        coverage = torch.zeros(2, 32, 32)
        coverage[0, 4:28, 4:28] = 1.0  # large, centred at 64 px: heatmap cell (4, 4)
        coverage[1, 16:20, 16:20] = 1.0  # small, the same centre cell
        geometry = mask_geometry(coverage)
        targets = ppn_targets(geometry, (128, 128), S)
        cell = torch.nonzero(targets["positive"])
        assert cell.shape[0] == 1
        y, x = cell[0].tolist()
        assert torch.allclose(targets["box"][:, y, x], torch.tensor([0.5, 0.5, 0.5, 0.5]))

    def test_gaussian_radius_is_centernets(self):
        def centernet(det_size, min_overlap=0.7):  # CenterNet's src/lib/utils/image.py, verbatim but for numpy
            height, width = det_size
            a1, b1 = 1, (height + width)
            c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
            r1 = (b1 + np.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
            a2, b2 = 4, 2 * (height + width)
            c2 = (1 - min_overlap) * width * height
            r2 = (b2 + np.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
            a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
            c3 = (min_overlap - 1) * width * height
            r3 = (b3 + np.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
            return min(r1, r2, r3)

        for size in [(10, 20), (1, 1), (3.5, 40), (64, 64)]:
            assert gaussian_radius(*size) == pytest.approx(centernet(size))
        assert gaussian_radius(0, 0) == 0

    def test_decoder_prompts(self):
        coverage, size = self.coverage()
        geometry = mask_geometry(coverage)
        prompts = decoder_prompts(geometry, np.random.default_rng(0), slots=8, box_fraction=0.5, input_size=size,
                                  image_size=S)
        assert prompts["mask_targets"].shape == (8, S // 4, S // 4)
        assert prompts["slot_valid"].tolist() == [True] * 3 + [False] + [True] * 3 + [False]  # 3 masks, 4 slots each
        for slot, box in enumerate(prompts["boxes"]):
            target_box = mask_geometry(prompts["mask_targets"][slot:slot + 1].float())["boxes"][0]
            assert (box - target_box).abs().max() <= 20 * S / 1024 + 1e-6  # SAM's noise bound
            assert box[0] <= box[2] and box[1] <= box[3] and box[2] <= size[1] and box[3] <= size[0]
        for slot, (x, y) in enumerate(prompts["points"]):
            assert prompts["mask_targets"][4 + slot, int(y) // MASK_STRIDE, int(x) // MASK_STRIDE]
        empty = decoder_prompts(mask_geometry(torch.zeros(0, 32, 32)), np.random.default_rng(0), 4, 0.5, size, S)
        assert not empty["slot_valid"].any() and empty["boxes"].shape == (2, 4)


class TestLosses:
    def test_heatmap_focal_matches_centernet(self):
        torch.manual_seed(0)
        logits = torch.randn(2, 1, 6, 6)
        target = torch.rand(2, 6, 6) * 0.9
        positive = torch.zeros(2, 6, 6, dtype=torch.bool)
        positive[0, 2, 3] = positive[0, 4, 1] = True
        target[positive] = 1
        valid = torch.ones(2, 6, 6, dtype=torch.bool)
        valid[1, 5] = False
        got = losses.heatmap_focal_loss(logits, target, positive, valid)
        p = logits[:, 0].sigmoid()
        pos = -(1 - p) ** 2 * p.log()
        neg = -(1 - target) ** 4 * p ** 2 * (1 - p).log()
        expected = torch.where(positive, pos, neg * valid).flatten(1).sum(1) / torch.tensor([2.0, 1.0])
        assert torch.allclose(got, expected, rtol=1e-5)

    def test_box_losses_vanish_at_the_target(self):
        target = torch.rand(3, 4, 5, 5) * 4
        positive = torch.rand(3, 5, 5) > 0.6
        positive[2] = False
        parts = losses.box_losses(target.clone(), target, positive)
        assert parts["l1"].abs().max() < 1e-6 and parts["giou"].abs().max() < 1e-5
        worse = losses.box_losses(target * 2, target, positive)
        assert (worse["l1"][:2] > 0).all() and (worse["giou"][:2] > 0).all()
        assert worse["l1"][2] == 0 and worse["giou"][2] == 0  # no positives: nothing to regress

    def test_mask_losses_take_the_best_candidate(self):
        targets = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
        targets[0, :, 2:6, 2:6] = True
        good = torch.where(targets[:, :, None], 8.0, -8.0).float()
        logits = torch.cat([-good, good, -good], 2)  # the second of three candidates is right
        valid_cells = torch.ones(1, 8, 8, dtype=torch.bool)
        iou = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]])
        parts = losses.mask_losses(logits, iou, targets, valid_cells, torch.tensor([[True, True]]))
        assert parts["dice"].item() < 0.02 and parts["focal"].item() < 0.01 and parts["iou"].item() < 1e-6
        wrong = losses.mask_losses(-good, torch.ones(1, 2, 1), targets, valid_cells, torch.tensor([[True, False]]))
        assert wrong["dice"].item() > 0.9 and wrong["iou"].item() == pytest.approx(1.0)

    def test_per_image_losses_split_into_any_batches(self):
        """The batch loss is a mean of per-image losses: two half batches average to the whole batch."""
        student, teacher = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
        whole = losses.distillation_mse(student, teacher).mean()
        halves = (losses.distillation_mse(student[:2], teacher[:2]).mean()
                  + losses.distillation_mse(student[2:], teacher[2:]).mean()) / 2
        assert torch.allclose(whole, halves)


class TestPositions:
    def test_epochs_are_permutations(self):
        positions = Positions(7, seed=3)
        for epoch in range(3):
            items = [positions(epoch * 7 + i) for i in range(7)]
            assert {e for e, _ in items} == {epoch} and sorted(i for _, i in items) == list(range(7))
        assert [Positions(7, 3)(p) for p in range(20)] == [positions(p) for p in range(20)]
        assert [Positions(7, 4)(p)[1] for p in range(7)] != [positions(p)[1] for p in range(7)]

    def test_ranks_and_accumulation_read_the_global_batch(self):
        one = [p for batch in StepBatches(0, 3, batch_size=8) for p in batch]
        split = [[list(StepBatches(0, 3, 2, accumulation=2, rank=r, world_size=2))] for r in range(2)]
        per_step = []
        for step in range(3):
            for micro in range(2):
                for rank in range(2):
                    per_step += split[rank][0][step * 2 + micro]
        assert per_step == one
        resumed = [p for batch in StepBatches(2, 3, batch_size=8) for p in batch]
        assert resumed == one[16:]
        assert len(StepBatches(1, 4, 2, accumulation=3)) == 9


class TestCaches:
    def test_embedding_cache_resumes_and_checks_its_manifest(self, tmp_path):
        cache = EmbeddingCache(tmp_path, {"teacher": {"name": "a"}, "images": ["x.png"] * 5}, 5, shard_size=2)
        cache.write_manifest()
        assert cache.missing_shards() == [0, 1, 2]
        assert cache.missing_shards(rank=1, world_size=2) == [1]
        embeddings = torch.randn(5, 4, 2, 2)
        cache.write_shard(1, embeddings[2:4])
        assert cache.missing_shards() == [0, 2] and not cache.complete()
        cache.write_shard(0, embeddings[:2])
        cache.write_shard(2, embeddings[4:])
        assert cache.complete()
        assert not list(tmp_path.glob(".*tmp"))  # no temporary files left
        reopened = EmbeddingCache(tmp_path, {"teacher": {"name": "a"}, "images": ["x.png"] * 5}, 5, shard_size=2)
        for item in range(5):
            assert torch.equal(reopened.read(item), embeddings[item].half())
        with pytest.raises(ValueError, match="holds 2 items"):
            cache.write_shard(0, embeddings[:3])
        other = EmbeddingCache(tmp_path, {"teacher": {"name": "b"}, "images": ["x.png"] * 5}, 5, shard_size=2)
        with pytest.raises(CacheMismatchError, match="teacher"):
            other.write_manifest()

    def test_mask_cache_round_trip(self, tmp_path):
        cache = MaskCache(tmp_path, {"images": ["a", "b"]}, 2, shard_size=2)
        cache.write_manifest()
        masks = torch.rand(3, 7, 13) > 0.5  # a width that is no multiple of 8
        cache.write_shard(0, [
            {"masks": masks.numpy(), "original_size": (14, 26), "boxes": np.ones((3, 4)), "scores": np.ones((3, 2))},
            {"masks": np.zeros((0, 7, 13), bool), "original_size": (14, 26), "boxes": np.zeros((0, 4)),
             "scores": np.zeros((0, 2))}])
        first, second = cache.read(0), cache.read(1)
        assert torch.equal(first["masks"], masks) and first["original_size"] == (14, 26)
        assert second["masks"].shape == (0, 7, 13) and second["boxes"].shape == (0, 4)
        with pytest.raises(IndexError):
            cache.read(2)

    def test_mismatched_image_list_is_named(self, tmp_path):
        EmbeddingCache(tmp_path, {"images": ["a", "b"]}, 2, 1).write_manifest()
        with pytest.raises(CacheMismatchError, match=r"images \(2 images in the cache, 3 asked for"):
            EmbeddingCache(tmp_path, {"images": ["a", "b", "c"]}, 3, 1).check_manifest()

    def test_downsample_masks(self):
        masks = torch.zeros(40, 20, 20, dtype=torch.bool)  # more than one chunk
        masks[:, 4:12, 6:14] = True
        small = downsample_masks(masks, (10, 10))
        assert small.shape == (40, 10, 10) and torch.equal(small[0], masks[0, ::2, ::2])


class TestScheduleAndOptions:
    def test_warmup_cosine(self):
        schedule = WarmupCosine(total=100, warmup=10, min_ratio=0.01)
        assert [schedule(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
        assert schedule(10) == pytest.approx(1.0) and schedule(99) == pytest.approx(0.01)
        values = [schedule(s) for s in range(10, 100)]
        assert all(a >= b for a, b in zip(values, values[1:]))
        assert schedule(55) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 45 / 89)))
        assert WarmupCosine(5, 0, 0.0)(0) == 1.0

    def resolved(self, **overrides):
        options = dict(stage="distill", images="x", out="y", steps=10)
        return TrainOptions(**{**options, **overrides}).resolved(torch.device("cpu"))

    def test_defaults(self):
        options = self.resolved()
        assert (options.lr, options.bn, options.precision, options.warmup_steps) == (1e-3, "train", "fp32", 0)
        finetune = self.resolved(stage="finetune", steps=1000)
        assert (finetune.lr, finetune.bn, finetune.warmup_steps) == (1e-4, "frozen", 50)
        assert TrainOptions(stage="ppn", images="x", out="y", steps=5).resolved(torch.device("cuda")).precision == "bf16"

    @pytest.mark.parametrize("overrides, message", [
        ({"steps": 0}, "--steps must be a positive integer"),
        ({"batch_size": 2.5}, "--batch-size must be a positive integer"),
        ({"lr": -1.0}, "--lr must be a finite number"),
        ({"lr": float("nan")}, "--lr must be a finite number"),
        ({"min_lr_ratio": 2.0}, "--min-lr-ratio must be in"),
        ({"precision": "fp8"}, "--precision must be one of"),
        ({"bn": "sync"}, "--bn must be one of"),
        ({"warmup_steps": -1}, "--warmup-steps must be >= 0"),
        ({"stop_after": 0}, "--stop-after must be a positive integer"),
        ({"num_workers": -2}, "--num-workers must be >= 0"),
    ])
    def test_bad_options_are_named(self, overrides, message):
        with pytest.raises(TrainError, match=message):
            self.resolved(**overrides).check()
        with pytest.raises(TrainError, match="unknown stage"):
            self.resolved(stage="pretrain")

    def test_config_from_json(self, tmp_path):
        from tests._teachers import TINY_SAM_STUDENT

        path = tmp_path / "student.json"
        path.write_text(json.dumps(TINY_SAM_STUDENT.to_dict()))
        assert load_config(str(path)) == TINY_SAM_STUDENT
        assert load_config("tiny").image_size == 128
        with pytest.raises(TrainError, match="unknown config"):
            load_config("huge")
        (tmp_path / "bad.json").write_text('{"image_size": 64, "wings": 2}')
        with pytest.raises(TrainError, match="wings"):
            load_config(str(tmp_path / "bad.json"))


def test_sigterm_asks_for_a_checkpoint_and_stop():
    import signal

    from litesam_kernels.train.trainer import _StopRequest

    before = signal.getsignal(signal.SIGTERM)
    stop = _StopRequest()
    assert not stop.requested
    signal.raise_signal(signal.SIGTERM)
    assert stop.requested
    stop.restore()
    assert signal.getsignal(signal.SIGTERM) == before


def test_bench_train_quick_runs_on_cpu():
    from benchmarks import bench_train

    rows = bench_train.run(torch.device("cpu"), quick=True)
    timed = [r for r in rows if r.median_ms]
    assert {r.impl for r in timed} == {"eager", "fused", "file-per-image", "fp16 shards"}
    assert all(r.matches_baseline for r in timed) and all("/s" in r.note for r in timed)
    assert {r.impl for r in rows if r.note.startswith("skipped")} == {"compiled-eager", "compiled-fused"}


def test_device_of_a_rank(monkeypatch):
    from litesam_kernels.train.dist import Distributed

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    dist = Distributed.from_environment()
    assert (dist.rank, dist.world_size, dist.active, dist.is_main) == (1, 2, True, False)
    assert dist.device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert dist.device("auto") == torch.device("cpu")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK, WORLD_SIZE and LOCAL_RANK must be integers"):
        Distributed.from_environment()


@pytest.mark.gpu
def test_cuda_device_gets_this_ranks_index():
    from litesam_kernels.train.dist import Distributed

    assert Distributed().device("cuda") == torch.device("cuda", 0)
    assert Distributed().device("auto") == torch.device("cuda", 0)
