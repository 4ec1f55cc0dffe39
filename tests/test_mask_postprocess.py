"""stability_score, masks_to_boxes, postprocess_masks: every backend vs the reference and vs segment_anything."""
import pytest
import torch
import torch.nn.functional as F

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.ops import mask_postprocess as mp
from litesam_kernels.ops.bitmask import pack_masks, unpack_masks
from tests.helpers import runnable_backends

amg = pytest.importorskip("segment_anything.utils.amg")


def blob_logits(n, height, width, *, low=6, scale=6.0, dtype=torch.float32, seed=0):
    """Realistic logits: low-res noise upsampled (smooth blobs), in logit range."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, low, low, generator=generator) * scale
    return F.interpolate(noise, (height, width), mode="bilinear", align_corners=False)[:, 0].to(dtype)


def edge_case_masks(height, width):
    """Empty, full, single pixels in the corners, a border frame, a diagonal."""
    masks = torch.zeros(7, height, width, dtype=torch.bool)
    masks[1] = True
    masks[2, 0, 0] = True
    masks[3, -1, -1] = True
    masks[4, 0, :] = masks[4, -1, :] = masks[4, :, 0] = masks[4, :, -1] = True
    idx = torch.arange(min(height, width))
    masks[5, idx, idx] = True
    masks[6, height // 2, width - 1] = True
    return masks


STABILITY = _backend.implementations("stability_score")
BOXES = _backend.implementations("masks_to_boxes")
POSTPROCESS = _backend.implementations("postprocess_masks")


class TestStabilityScore:
    @pytest.mark.parametrize("backend", runnable_backends(STABILITY))
    @pytest.mark.parametrize("shape", [(3, 37, 45), (2, 3, 50, 33), (1, 1, 1)])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
    def test_matches_sam(self, backend, shape, dtype):
        logits = blob_logits(int(torch.tensor(shape[:-2]).prod()), *shape[-2:], dtype=dtype).reshape(shape)
        for threshold, offset in ((0.0, 1.0), (0.7, 0.3), (-0.25, 2.5)):
            expected = amg.calculate_stability_score(logits, threshold, offset)
            with lk.use_backend(backend):
                got = lk.ops.stability_score(logits, threshold, offset)
            assert got.dtype == torch.float32 and got.shape == shape[:-2]
            torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)

    @pytest.mark.parametrize("backend", runnable_backends(STABILITY))
    def test_empty_union_is_nan_and_threshold_rounding(self, backend):
        logits = torch.full((3, 5, 7), -10.0, dtype=torch.bfloat16)
        logits[1, 2, 3] = 0.69921875  # bf16(0.7): not > 0.7 once 0.7 is rounded to bf16
        logits[2, 0, 0] = 0.703125
        with lk.use_backend(backend):
            got = lk.ops.stability_score(logits, 0.2, 0.5)
        expected = amg.calculate_stability_score(logits, 0.2, 0.5)
        assert torch.isnan(got[0])
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)

    @pytest.mark.parametrize("backend", runnable_backends(STABILITY))
    def test_int16_row_sums_wrap_like_sam(self, backend):
        logits = torch.full((1, 2, 40_000), 5.0)
        logits[0, 1, :100] = 0.5  # in the union only
        with lk.use_backend(backend):
            got = lk.ops.stability_score(logits, 0.0, 1.0)
        expected = amg.calculate_stability_score(logits, 0.0, 1.0)
        assert torch.equal(got, expected)

    @pytest.mark.parametrize("backend", runnable_backends(STABILITY))
    def test_non_contiguous_and_empty(self, backend):
        logits = blob_logits(4, 30, 20).transpose(-1, -2)
        with lk.use_backend(backend):
            assert torch.equal(lk.ops.stability_score(logits, 0.0, 1.0), amg.calculate_stability_score(logits, 0.0, 1.0))
            assert lk.ops.stability_score(torch.zeros(0, 4, 4), 0.0, 1.0).shape == (0,)
            assert torch.isnan(lk.ops.stability_score(torch.zeros(2, 0, 4), 0.0, 1.0)).all()

    def test_bad_input(self):
        with pytest.raises(TypeError, match="mask_logits"):
            lk.ops.stability_score(torch.zeros(2, 3, 3, dtype=torch.int32), 0.0, 1.0)
        with pytest.raises(ValueError, match="mask_logits"):
            lk.ops.stability_score(torch.zeros(3), 0.0, 1.0)
        with pytest.raises(TypeError, match="offset"):
            lk.ops.stability_score(torch.zeros(2, 3, 3), 0.0, "1")
        with pytest.raises(ValueError, match="mask_threshold"):
            lk.ops.stability_score(torch.zeros(2, 3, 3), float("nan"), 1.0)

    def test_opcheck(self):
        torch.library.opcheck(torch.ops.litesam.stability_score, (blob_logits(2, 9, 11), 0.0, 1.0))


class TestMasksToBoxes:
    @pytest.mark.parametrize("backend", runnable_backends(BOXES))
    @pytest.mark.parametrize("height,width", [(37, 45), (64, 31), (1, 70), (33, 1)])
    def test_matches_sam(self, backend, height, width):
        masks = torch.cat([blob_logits(5, height, width) > 1.0, edge_case_masks(height, width)])
        expected = amg.batched_mask_to_box(masks)
        with lk.use_backend(backend):
            got = lk.ops.masks_to_boxes(masks)
            got_packed = lk.ops.masks_to_boxes(pack_masks(masks), width=width)
        assert got.dtype == torch.int64
        assert torch.equal(got, expected)
        assert torch.equal(got_packed, expected)

    @pytest.mark.parametrize("backend", runnable_backends(BOXES))
    def test_leading_dims_non_contiguous_and_2d(self, backend):
        masks = (blob_logits(6, 40, 50) > 0).reshape(2, 3, 40, 50)
        transposed = masks.transpose(-1, -2)
        with lk.use_backend(backend):
            assert torch.equal(lk.ops.masks_to_boxes(masks), amg.batched_mask_to_box(masks))
            assert torch.equal(lk.ops.masks_to_boxes(transposed), amg.batched_mask_to_box(transposed))
            assert torch.equal(lk.ops.masks_to_boxes(masks[0, 1]), amg.batched_mask_to_box(masks[0, 1]))

    @pytest.mark.parametrize("backend", runnable_backends(BOXES))
    @pytest.mark.parametrize("shape", [(0, 5, 5), (2, 0, 5), (3, 4, 0)])
    def test_no_elements_gives_float_zeros_like_sam(self, backend, shape):
        masks = torch.zeros(shape, dtype=torch.bool)
        expected = amg.batched_mask_to_box(masks)
        with lk.use_backend(backend):
            got = lk.ops.masks_to_boxes(masks)
            got_packed = lk.ops.masks_to_boxes(pack_masks(masks), width=shape[-1])
        for g in (got, got_packed):
            assert g.dtype == expected.dtype == torch.float32 and torch.equal(g, expected)

    def test_bad_input(self):
        with pytest.raises(TypeError, match="masks"):
            lk.ops.masks_to_boxes(torch.zeros(2, 3, 3))
        with pytest.raises(ValueError, match="width"):
            lk.ops.masks_to_boxes(torch.zeros(2, 3, 1, dtype=torch.int32))
        with pytest.raises(ValueError, match="masks must have shape"):
            lk.ops.masks_to_boxes(torch.zeros(2, 3, 1, dtype=torch.int32), width=40)
        with pytest.raises(ValueError, match="width"):
            lk.ops.masks_to_boxes(torch.zeros(2, 3, 3, dtype=torch.bool), width=3)
        with pytest.raises(ValueError, match="masks"):
            lk.ops.masks_to_boxes(torch.zeros(3, dtype=torch.bool))

    def test_opcheck(self):
        masks = blob_logits(3, 9, 40) > 0
        torch.library.opcheck(torch.ops.litesam.masks_to_boxes, (masks, None))
        torch.library.opcheck(torch.ops.litesam.masks_to_boxes, (pack_masks(masks), 40))


def sam_postprocess(low_res, input_size, original_size, image_size, threshold=0.0, offset=1.0):
    """segment_anything's own path: Sam.postprocess_masks, then the amg functions."""
    logits = mp.sam_upscale(low_res, input_size, original_size, image_size)
    masks = logits > threshold
    return (masks, amg.calculate_stability_score(logits, threshold, offset), amg.batched_mask_to_box(masks),
            masks.sum((-1, -2)))


def fused_formula(low_res, input_size, original_size, image_size):
    """The fused kernel's arithmetic in plain torch (bilinear tables + FMA blends), full resolution:
    lets the tests check it against F.interpolate at SAM's real sizes, fast."""
    def fma(a, b, c):
        return (a.double() * b.double() + c.double()).float()

    def resize(x, table_y, table_x):
        y0, y1, wy0, wy1 = (table_y[:, k] for k in range(4))
        x0, x1, wx0, wx1 = (table_x[:, k] for k in range(4))
        r0, r1 = x[:, y0.long()], x[:, y1.long()]
        top = fma(r0[:, :, x0.long()], wx0, r0[:, :, x1.long()] * wx1)
        bottom = fma(r1[:, :, x0.long()], wx0, r1[:, :, x1.long()] * wx1)
        return fma(top, wy0[:, None], bottom * wy1[:, None])

    n, h, w = low_res.shape
    stage1 = resize(low_res.float(), mp.bilinear_table(h, image_size, "cpu")[: input_size[0]],
                    mp.bilinear_table(w, image_size, "cpu")[: input_size[1]]).to(low_res.dtype).float()
    return resize(stage1, mp.bilinear_table(input_size[0], original_size[0], "cpu"),
                  mp.bilinear_table(input_size[1], original_size[1], "cpu")).to(low_res.dtype)


class TestPostprocessMasks:
    # (low-res side, image_size, input_size, original_size): up- and down-sampling, odd sizes, equal sizes.
    SMALL_CASES = [
        (16, 64, (64, 48), (75, 57)),
        (16, 64, (40, 64), (40, 64)),
        (16, 64, (64, 48), (64, 70)),
        (12, 48, (48, 30), (23, 13)),
    ]

    @pytest.mark.parametrize("backend", runnable_backends(POSTPROCESS))
    @pytest.mark.parametrize("case", SMALL_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}")
    @pytest.mark.parametrize("packed", [False, True])
    def test_matches_sam_exactly_float32(self, backend, case, packed):
        low, image_size, input_size, original_size = case
        low_res = blob_logits(3, low, low, low=4, scale=8.0)
        low_res[2] = -20.0  # an empty mask (NaN stability)
        expected = sam_postprocess(low_res, input_size, original_size, image_size)
        with lk.use_backend(backend):
            got = lk.ops.postprocess_masks(low_res, input_size, original_size, packed=packed, image_size=image_size)
        masks = unpack_masks(got.masks, original_size[1]) if packed else got.masks
        assert got.masks.dtype == (torch.int32 if packed else torch.bool)
        assert torch.equal(masks, expected[0])
        torch.testing.assert_close(got.stability_scores, expected[1], rtol=0, atol=0, equal_nan=True)
        assert torch.equal(got.boxes, expected[2]) and got.boxes.dtype == torch.int64
        assert torch.equal(got.areas, expected[3]) and got.areas.dtype == torch.int64

    @pytest.mark.parametrize("backend", runnable_backends(POSTPROCESS))
    def test_sam_sizes_downsampled_output(self, backend):
        """256² logits -> 1024² -> crop (1024, 683) -> (200, 133): SAM's real first stage."""
        low_res = blob_logits(2, 256, 256, low=16, scale=8.0)
        expected = sam_postprocess(low_res, (1024, 683), (200, 133), 1024)
        with lk.use_backend(backend):
            got = lk.ops.postprocess_masks(low_res, (1024, 683), (200, 133))
        assert torch.equal(got.masks, expected[0])
        assert torch.equal(got.stability_scores, expected[1])
        assert torch.equal(got.boxes, expected[2]) and torch.equal(got.areas, expected[3])

    @pytest.mark.parametrize("backend", runnable_backends(POSTPROCESS))
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_reduced_precision_within_tolerance(self, backend, dtype):
        """torch's CPU bilinear kernel keeps float16/bfloat16 weights in that dtype; the fused kernel uses
        float32 weights (torch's CUDA arithmetic). Masks may differ only where a value is within one dtype
        rounding of the threshold. Bounds from the SAM-size measurement below (at most 2e-5 of pixels,
        stability within 5e-4); measured here (Triton, interpreter): no pixel and no stability score differs."""
        low, image_size, input_size, original_size = self.SMALL_CASES[0]
        low_res = blob_logits(3, low, low, low=4, scale=8.0, dtype=dtype)
        expected = sam_postprocess(low_res, input_size, original_size, image_size)
        if backend == "cpu":  # float32 only: unforced, reduced precision runs the (exact) reference
            with pytest.raises(lk.BackendUnavailableError, match="float32"), lk.use_backend(backend):
                lk.ops.postprocess_masks(low_res, input_size, original_size, image_size=image_size)
            got = lk.ops.postprocess_masks(low_res, input_size, original_size, image_size=image_size)
            assert torch.equal(got.masks, expected[0]) and torch.equal(got.boxes, expected[2])
            return
        with lk.use_backend(backend):
            got = lk.ops.postprocess_masks(low_res, input_size, original_size, image_size=image_size)
        differing = (got.masks != expected[0]).sum().item()
        assert differing <= 2e-5 * expected[0].numel()
        torch.testing.assert_close(got.stability_scores, expected[1], rtol=0, atol=5e-4, equal_nan=True)
        assert (got.boxes - expected[2]).abs().max() <= 1
        assert torch.equal(got.areas, got.masks.sum((-1, -2)))

    def test_fused_arithmetic_is_torch_bit_for_bit_at_sam_sizes(self):
        """The kernel's index/weight tables and FMA blends equal two F.interpolate calls exactly (float32)."""
        low_res = blob_logits(2, 256, 256, low=16, scale=8.0)
        for input_size, original_size in (((1024, 768), (1500, 1125)), ((683, 1024), (683, 1024)),
                                          ((1024, 1024), (777, 777))):
            expected = mp.sam_upscale(low_res, input_size, original_size, 1024)
            assert torch.equal(fused_formula(low_res, input_size, original_size, 1024), expected)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_reduced_precision_arithmetic_vs_torch_cpu_at_sam_sizes(self, dtype):
        """Measured tolerance of the fused arithmetic (float32 weights, values rounded to the dtype between
        and after the resizes, as torch's CUDA kernel) vs torch's CPU kernel (reduced-precision weights),
        realistic logits, 3 seeds x 3 SAM size pairs (crop 1024x768 -> 1500x1125, 768x1024 -> 480x640,
        1024x683 -> 2250x1500): at most 1.6e-6 (float16) / 1.1e-5 (bfloat16) of mask pixels differ,
        stability scores within 1.1e-4 / 1.7e-4, boxes equal; exact when the second resize keeps the size.
        Bounds: 2e-5 of pixels, 5e-4 stability."""
        low_res = blob_logits(2, 256, 256, low=16, scale=8.0, dtype=dtype)
        for input_size, original_size in (((1024, 768), (1500, 1125)), ((1024, 1024), (1024, 1024)),
                                          ((1024, 683), (2250, 1500))):
            expected = mp.sam_upscale(low_res, input_size, original_size, 1024)
            got = fused_formula(low_res, input_size, original_size, 1024)
            differing = ((got > 0) != (expected > 0)).sum().item()
            assert differing <= 2e-5 * expected.numel()
            torch.testing.assert_close(amg.calculate_stability_score(got, 0.0, 1.0),
                                       amg.calculate_stability_score(expected, 0.0, 1.0), rtol=0, atol=5e-4)
            assert torch.equal(amg.batched_mask_to_box(got > 0), amg.batched_mask_to_box(expected > 0))
            if input_size == original_size:
                assert differing == 0

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("case", SMALL_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}")
    def test_triton_half_is_the_fused_formula_exactly(self, dtype, case):
        """Half logits on the Triton kernel: masks, stability, boxes and areas equal the fused formula (float32
        weights and blends, values rounded to the logits dtype between and after the resizes, torch's CUDA
        arithmetic) bit for bit; the formula's distance to torch's CPU kernel is measured at SAM sizes below."""
        if _backend.why_not("triton", POSTPROCESS, torch.device("cpu")):
            pytest.skip("triton cannot run here")
        low, image_size, input_size, original_size = case
        low_res = blob_logits(3, low, low, low=4, scale=8.0, dtype=dtype)
        logits = fused_formula(low_res, input_size, original_size, image_size)
        with lk.use_backend("triton"):
            got = lk.ops.postprocess_masks(low_res, input_size, original_size, image_size=image_size, packed=True)
        masks = logits > 0
        assert torch.equal(unpack_masks(got.masks, original_size[1]), masks)
        torch.testing.assert_close(got.stability_scores, amg.calculate_stability_score(logits, 0.0, 1.0), rtol=0,
                                   atol=0, equal_nan=True)
        assert torch.equal(got.boxes, amg.batched_mask_to_box(masks)) and torch.equal(got.areas, masks.sum((-1, -2)))

    def test_tables_are_cached_per_sizes_and_device(self):
        low_res = blob_logits(2, 16, 16)
        first = mp._resize_tables(low_res, [64, 48], [75, 57], 64, struct_of_arrays=True)
        assert all(a is b for a, b in zip(first, mp._resize_tables(low_res, [64, 48], [75, 57], 64,
                                                                       struct_of_arrays=True)))
        rows = mp._resize_tables(low_res, [64, 48], [75, 57], 64)
        assert all(torch.equal(a, b.t()) for a, b in zip(first, rows))
        assert mp._resize_tables(low_res, [64, 48], [70, 57], 64)[2].shape == (70, 4)

    @pytest.mark.parametrize("family", ["mask_postprocess.stability", "mask_postprocess.boxes",
                                        "mask_postprocess.fused"])
    def test_every_triton_launch_configuration(self, family):
        if _backend.why_not("triton", POSTPROCESS, torch.device("cpu")):
            pytest.skip("triton cannot run here")
        from litesam_kernels.triton import _configs, mask_postprocess as triton_mp  # noqa: F401  (declares them)

        low_res = blob_logits(2, 12, 12, low=4, scale=8.0, dtype=torch.bfloat16)
        cases = (((48, 30), (23, 70)), ((48, 48), (48, 48)))  # general and same-size second resize

        def fused():
            for (input_size, original_size), packed in zip(cases, (True, False)):
                formula = fused_formula(low_res, input_size, original_size, 48)
                got = lk.ops.postprocess_masks(low_res, input_size, original_size, image_size=48, packed=packed)
                assert torch.equal(unpack_masks(got.masks, original_size[1]) if packed else got.masks, formula > 0)
                assert torch.equal(got.boxes, amg.batched_mask_to_box(formula > 0))

        def boxes():
            masks = mp.sam_upscale(low_res, *cases[0], 48) > 0
            assert torch.equal(lk.ops.masks_to_boxes(masks), amg.batched_mask_to_box(masks))
            assert torch.equal(lk.ops.masks_to_boxes(pack_masks(masks), width=70), amg.batched_mask_to_box(masks))

        def stability():
            logits = mp.sam_upscale(low_res, *cases[0], 48)
            torch.testing.assert_close(lk.ops.stability_score(logits, 0.0, 1.0),
                                       amg.calculate_stability_score(logits, 0.0, 1.0), rtol=0, atol=0, equal_nan=True)

        check = {"mask_postprocess.stability": stability, "mask_postprocess.boxes": boxes,
                 "mask_postprocess.fused": fused}[family]
        for index in range(len(_configs.families()[family])):
            with _configs.force_config(family, index), lk.use_backend("triton"):
                check()

    @pytest.mark.parametrize("backend", runnable_backends(POSTPROCESS))
    def test_no_masks_and_one_pixel_output(self, backend):
        with lk.use_backend(backend):
            got = lk.ops.postprocess_masks(torch.zeros(0, 16, 16), (64, 48), (75, 57), packed=True, image_size=64)
            assert got.masks.shape == (0, 75, 2) and got.boxes.shape == (0, 4) and got.areas.shape == (0,)
            low_res = blob_logits(2, 8, 8)
            got = lk.ops.postprocess_masks(low_res, (32, 32), (1, 1), image_size=32)
        expected = sam_postprocess(low_res, (32, 32), (1, 1), 32)
        assert torch.equal(got.masks, expected[0]) and torch.equal(got.boxes, expected[2])

    def test_bad_input(self):
        low_res = torch.zeros(2, 16, 16)
        with pytest.raises(TypeError, match="low_res_logits"):
            lk.ops.postprocess_masks(low_res.double(), (64, 64), (64, 64), image_size=64)
        with pytest.raises(ValueError, match="low_res_logits"):
            lk.ops.postprocess_masks(low_res[0], (64, 64), (64, 64), image_size=64)
        with pytest.raises(ValueError, match="input_size"):
            lk.ops.postprocess_masks(low_res, (65, 64), (64, 64), image_size=64)
        with pytest.raises(ValueError, match="original_size"):
            lk.ops.postprocess_masks(low_res, (64, 64), (0, 64), image_size=64)
        with pytest.raises(TypeError, match="input_size"):
            lk.ops.postprocess_masks(low_res, 64, (64, 64), image_size=64)

    def test_opcheck(self):
        args = (blob_logits(2, 8, 8), [32, 24], [20, 17], 0.0, 1.0, True, 32)
        torch.library.opcheck(torch.ops.litesam.postprocess_masks, args)

    @pytest.mark.skipif(_backend.why_not("cpu", POSTPROCESS, torch.device("cpu")) is not None,
                        reason="no compiled CPU kernel")
    def test_opcheck_compiled_kernel_and_bad_tables(self):
        low_res = blob_logits(2, 8, 8)
        tables = mp._resize_tables(low_res, [32, 24], [20, 17], 32)
        for packed in (False, True):
            torch.library.opcheck(torch.ops.litesam._postprocess_masks_kernel,
                                  (low_res, *tables, 0.0, 1.0, -1.0, packed))
        with pytest.raises(ValueError, match="y2"):
            torch.ops.litesam._postprocess_masks_kernel(low_res, tables[0], tables[1], tables[2] + 100, tables[3],
                                                        0.0, 1.0, -1.0, False)
        with pytest.raises(TypeError, match="float32"):
            torch.ops.litesam._postprocess_masks_kernel(low_res.half(), *tables, 0.0, 1.0, -1.0, False)


@pytest.mark.gpu
class TestPostprocessMasksGpu:
    """On CUDA the fused kernel must equal torch's CUDA F.interpolate path (same FMA-contracted formula)."""

    @pytest.mark.parametrize("backend", runnable_backends(POSTPROCESS, "cuda"))
    @pytest.mark.parametrize("sizes", [((1024, 1024), (1024, 1024)), ((768, 1024), (1200, 1600)),
                                       ((1024, 683), (1500, 1000))])
    def test_matches_sam_float32(self, backend, sizes):
        input_size, original_size = sizes
        low_res = blob_logits(64, 256, 256, low=16, scale=8.0).cuda()
        expected = sam_postprocess(low_res, input_size, original_size, 1024)
        with lk.use_backend(backend):
            got = lk.ops.postprocess_masks(low_res, input_size, original_size)
            packed = lk.ops.postprocess_masks(low_res, input_size, original_size, packed=True)
        assert (got.masks != expected[0]).sum().item() == 0
        assert torch.equal(unpack_masks(packed.masks, original_size[1]), expected[0])
        torch.testing.assert_close(got.stability_scores, expected[1], rtol=0, atol=0, equal_nan=True)
        assert torch.equal(got.boxes, expected[2]) and torch.equal(got.areas, expected[3])

    @pytest.mark.parametrize("backend", runnable_backends(POSTPROCESS, "cuda"))
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_matches_sam_reduced_precision(self, backend, dtype):
        low_res = blob_logits(32, 256, 256, low=16, scale=8.0, dtype=dtype).cuda()
        expected = sam_postprocess(low_res, (768, 1024), (1200, 1600), 1024)
        with lk.use_backend(backend):
            got = lk.ops.postprocess_masks(low_res, (768, 1024), (1200, 1600))
        assert (got.masks != expected[0]).sum().item() == 0
        torch.testing.assert_close(got.stability_scores, expected[1], rtol=0, atol=0, equal_nan=True)
        assert torch.equal(got.boxes, expected[2]) and torch.equal(got.areas, expected[3])

    @pytest.mark.parametrize("backend", runnable_backends(BOXES, "cuda"))
    def test_boxes_and_stability_on_cuda(self, backend):
        logits = blob_logits(50, 301, 257).cuda()
        masks = logits > 0
        with lk.use_backend(backend):
            assert torch.equal(lk.ops.masks_to_boxes(masks), amg.batched_mask_to_box(masks))
            assert torch.equal(lk.ops.masks_to_boxes(pack_masks(masks), width=257), amg.batched_mask_to_box(masks))
            torch.testing.assert_close(lk.ops.stability_score(logits, 0.0, 1.0),
                                       amg.calculate_stability_score(logits, 0.0, 1.0), rtol=0, atol=0, equal_nan=True)


def test_the_ops_check_their_sizes_and_thresholds():
    """Regression (issue 14): the op bodies did not check what their wrappers did: three-entry sizes were cut
    to two, zero sizes reached the kernels, NaN thresholds gave silent all-NaN answers; image_size had no
    upper limit (2**40 reached a 4 TB allocation)."""
    logits = torch.zeros(1, 4, 4)
    ok = dict(input_size=[4, 4], original_size=[5, 5], mask_threshold=0.0, stability_offset=1.0, packed=False,
              image_size=8)
    for name, value, message in (("input_size", [4, 4, 4], "input_size must be a \\(height, width\\) pair"),
                                 ("original_size", [0, 5], r"original_size\[0\] must be in \[1, 32768\]"),
                                 ("mask_threshold", float("nan"), "mask_threshold must be in"),
                                 ("image_size", 2**40, r"image_size must be in \[1, 32768\]")):
        with pytest.raises(ValueError, match=message):
            torch.ops.litesam.postprocess_masks(logits, **{**ok, name: value})
    with pytest.raises(ValueError, match="offset must be in"):
        torch.ops.litesam.stability_score(logits, 0.0, float("nan"))
    with pytest.raises(ValueError, match=r"image_size must be in \[1, 32768\]"):
        lk.ops.postprocess_masks(logits, (4, 4), (5, 5), image_size=mp.MAX_SIDE + 1)
    with pytest.raises(TypeError, match="mask_logits must be a torch.Tensor"):
        lk.ops.stability_score(logits.numpy(), 0.0, 1.0)
