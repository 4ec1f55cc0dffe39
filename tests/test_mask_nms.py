"""Mask IoU, mask NMS and Matrix NMS: every backend against the pure-torch reference on blob-like masks
of awkward sizes (H, W not multiples of 32 or 64), plus edge cases, bad input and opcheck."""
import importlib

import pytest
import torch

from litesam_kernels import _backend
from litesam_kernels.ops.bitmask import pack_masks
from tests.helpers import lk, runnable_backends

mask_nms_module = importlib.import_module("litesam_kernels.ops.mask_nms")
_MASK_IOU = mask_nms_module._MASK_IOU
_MASK_NMS = mask_nms_module._MASK_NMS
_MATRIX_NMS = mask_nms_module._MATRIX_NMS


def blob_masks(n, height, width, *, generator=None, empty=()):
    """SAM-like masks: each a thresholded upsampled-noise blob inside a random box of the image."""
    masks = torch.zeros(n, height, width, dtype=torch.bool)
    for i in range(n):
        box_h = int(torch.randint(2, height + 1, (1,), generator=generator))
        box_w = int(torch.randint(2, width + 1, (1,), generator=generator))
        y = int(torch.randint(0, height - box_h + 1, (1,), generator=generator))
        x = int(torch.randint(0, width - box_w + 1, (1,), generator=generator))
        noise = torch.rand(1, 1, max(2, box_h // 5), max(2, box_w // 5), generator=generator)
        blob = torch.nn.functional.interpolate(noise, size=(box_h, box_w), mode="bilinear", align_corners=False)
        masks[i, y:y + box_h, x:x + box_w] = blob[0, 0] > 0.45
    for i in empty:
        masks[i] = False
    return masks


def with_duplicates(masks, scores, copies=((3, 1), (4, 1), (6, 2))):
    """Exact copies (IoU 1) of some masks, some with tied scores."""
    masks, scores = masks.clone(), scores.clone()
    for dst, src in copies:
        masks[dst] = masks[src]
    scores[4] = scores[1]
    return masks, scores


SIZES = [(37, 70), (45, 33), (29, 97)]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class TestMaskIou:
    @pytest.mark.parametrize("backend", runnable_backends(_MASK_IOU))
    @pytest.mark.parametrize("height,width", SIZES)
    def test_matches_reference(self, backend, height, width):
        a = blob_masks(20, height, width, generator=_gen(height), empty=(2,))
        b = blob_masks(13, height, width, generator=_gen(width))
        b[4] = a[5]
        expected = mask_nms_module._mask_iou_reference(pack_masks(a), pack_masks(b), width)
        with lk.use_backend(backend):
            got = lk.ops.mask_iou(a, b)
            got_packed = lk.ops.mask_iou(pack_masks(a), pack_masks(b), width=width)
        assert got.dtype == torch.float32 and got.shape == (20, 13)
        assert torch.equal(got, expected) and torch.equal(got_packed, expected)
        assert got[5, 4] == 1.0 and torch.all(got[2] == 0)  # identical masks; empty mask
        assert not torch.isnan(got).any()

    def test_reference_against_dense_float(self):
        a = blob_masks(9, 31, 65, generator=_gen(1))
        af = a.flatten(1).float()
        inter = af @ af.T
        union = af.sum(1)[:, None] + af.sum(1)[None, :] - inter
        assert torch.allclose(lk.ops.mask_iou(a, a), inter / union)

    @pytest.mark.parametrize("backend", runnable_backends(_MASK_IOU))
    def test_empty_and_all_empty(self, backend):
        with lk.use_backend(backend):
            assert lk.ops.mask_iou(torch.zeros(0, 5, 40, dtype=torch.bool), blob_masks(3, 5, 40)).shape == (0, 3)
            zeros = lk.ops.mask_iou(torch.zeros(4, 6, 40, dtype=torch.bool), torch.zeros(2, 6, 40, dtype=torch.bool))
        assert torch.equal(zeros, torch.zeros(4, 2))

    def test_bad_input(self):
        masks = blob_masks(3, 8, 40)
        with pytest.raises(TypeError, match="masks_a"):
            lk.ops.mask_iou(masks.float(), masks)
        with pytest.raises(ValueError, match="same"):
            lk.ops.mask_iou(masks, masks[:, :7])
        with pytest.raises(ValueError, match="width is required"):
            lk.ops.mask_iou(pack_masks(masks), pack_masks(masks))
        with pytest.raises(ValueError, match="masks_a must have shape"):
            lk.ops.mask_iou(pack_masks(masks), pack_masks(masks), width=70)
        with pytest.raises(ValueError, match="width"):
            lk.ops.mask_iou(masks, masks, width=39)
        with pytest.raises(ValueError, match="3-D"):
            lk.ops.mask_iou(masks[0], masks)

    def test_opcheck(self):
        packed = pack_masks(blob_masks(5, 9, 40))
        torch.library.opcheck(torch.ops.litesam.mask_iou, (packed, packed[:3], 40))


class TestMaskNms:
    @pytest.mark.parametrize("backend", runnable_backends(_MASK_NMS))
    @pytest.mark.parametrize("height,width", SIZES[:2])
    @pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7])
    def test_matches_reference(self, backend, height, width, threshold):
        masks, scores = with_duplicates(blob_masks(28, height, width, generator=_gen(7), empty=(9,)),
                                        torch.rand(28, generator=_gen(8)))
        packed = pack_masks(masks)
        expected = mask_nms_module._mask_nms_reference(packed, scores, threshold, None, width)
        with lk.use_backend(backend):
            got = lk.ops.mask_nms(masks, scores, threshold)
            got_packed = lk.ops.mask_nms(packed, scores, threshold, width=width)
        assert got.dtype == torch.int64
        assert torch.equal(got, expected) and torch.equal(got_packed, expected)
        assert 9 in got.tolist()  # an empty mask suppresses nothing and is never suppressed
        assert not ({3, 4} <= set(got.tolist()))  # exact copies never both survive
        assert torch.all(scores[got][:-1] >= scores[got][1:])

    @pytest.mark.parametrize("backend", runnable_backends(_MASK_NMS))
    def test_groups(self, backend):
        masks, scores = with_duplicates(blob_masks(40, 37, 70, generator=_gen(3)), torch.rand(40, generator=_gen(4)))
        idxs = torch.randint(-2, 3, (40,), generator=_gen(5)) * 1000
        idxs[3] = idxs[1] + 1  # a copy in another group survives
        expected = mask_nms_module._mask_nms_reference(pack_masks(masks), scores, 0.4, idxs, 70)
        with lk.use_backend(backend):
            got = lk.ops.mask_nms(masks, scores, 0.4, idxs=idxs)
        assert torch.equal(got, expected)
        assert {1, 3} <= set(got.tolist())
        # Each group alone gives the same masks.
        for group in torch.unique(idxs):
            members = torch.nonzero(idxs == group).flatten()
            alone = members[lk.ops.mask_nms(masks[members], scores[members], 0.4)]
            assert set(alone.tolist()) == set(got[idxs[got] == group].tolist())

    @pytest.mark.parametrize("backend", runnable_backends(_MASK_NMS))
    def test_many_masks(self, backend):
        """Several 64-wide words per row of the bitmask, groups spanning word boundaries, many copies."""
        masks, scores = with_duplicates(blob_masks(200, 45, 33, generator=_gen(41)), torch.rand(200, generator=_gen(42)))
        masks[150:200] = masks[0:50]
        idxs = torch.randint(0, 3, (200,), generator=_gen(43))
        for groups in (None, idxs):
            expected = mask_nms_module._mask_nms_reference(pack_masks(masks), scores, 0.5, groups, 33)
            with lk.use_backend(backend):
                assert torch.equal(lk.ops.mask_nms(masks, scores, 0.5, idxs=groups), expected)

    @pytest.mark.parametrize("backend", runnable_backends(_MASK_NMS))
    def test_edge_cases(self, backend):
        with lk.use_backend(backend):
            none = lk.ops.mask_nms(torch.zeros(0, 7, 40, dtype=torch.bool), torch.zeros(0), 0.5)
            one = lk.ops.mask_nms(blob_masks(1, 7, 40), torch.ones(1), 0.5)
            all_empty = lk.ops.mask_nms(torch.zeros(5, 7, 40, dtype=torch.bool), torch.tensor([1.0, 3, 3, 2, 0]), 0.0)
            copies = lk.ops.mask_nms(blob_masks(1, 9, 41, generator=_gen(2)).expand(70, 9, 41).contiguous(),
                                     torch.ones(70), 0.99)
        for height, width in ((0, 40), (6, 0)):
            no_pixels = torch.zeros(3, height, width, dtype=torch.bool)
            with lk.use_backend(backend):
                assert lk.ops.mask_nms(no_pixels, torch.tensor([0.1, 0.3, 0.2]), 0.0).tolist() == [1, 2, 0]
                assert torch.equal(lk.ops.mask_iou(no_pixels, no_pixels), torch.zeros(3, 3))
                assert lk.ops.matrix_nms(no_pixels, torch.tensor([0.1, 0.3, 0.2])).tolist() == [
                    pytest.approx(0.1), pytest.approx(0.3), pytest.approx(0.2)]
        assert none.dtype == torch.int64 and none.shape == (0,)
        assert one.tolist() == [0]
        assert all_empty.tolist() == [1, 2, 3, 0, 4]  # ties by index; nothing suppressed
        assert copies.tolist() == [0]  # 70 tied copies (more than one 64-bit word): the lowest index wins

    @pytest.mark.parametrize("backend", runnable_backends(_MASK_NMS))
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
    def test_score_dtypes(self, backend, dtype):
        """Scores only order the visit (sorted in their own dtype, ties by index; bf16's 8 mantissa bits make
        ties common); IoUs are exact counts whatever the score dtype."""
        masks, scores = with_duplicates(blob_masks(70, 37, 70, generator=_gen(51)), torch.rand(70, generator=_gen(52)))
        scores = scores.to(dtype)
        idxs = torch.randint(0, 2, (70,), generator=_gen(53))
        for groups in (None, idxs):
            expected = mask_nms_module._mask_nms_reference(pack_masks(masks), scores, 0.4, groups, 70)
            with lk.use_backend(backend):
                assert torch.equal(lk.ops.mask_nms(masks, scores, 0.4, idxs=groups), expected)

    @pytest.mark.parametrize("backend", runnable_backends(_MASK_NMS))
    def test_iou_exactly_at_threshold(self, backend):
        masks = torch.zeros(3, 5, 40, dtype=torch.bool)
        masks[0, :, :8] = True  # 40 px
        masks[1, :, 4:12] = True  # 40 px, 20 in common with mask 0: IoU = 20 / 60 = 1/3
        masks[2, :, :16] = True  # 80 px containing mask 0: IoU(0, 2) = 1/2
        scores = torch.tensor([0.9, 0.8, 0.7])
        third = float(torch.tensor(1 / 3, dtype=torch.float32))
        with lk.use_backend(backend):
            assert lk.ops.mask_iou(masks, masks)[0, 1].item() == third
            assert lk.ops.mask_nms(masks, scores, 0.5).tolist() == [0, 1, 2]  # 1/2 > 0.5 is false
            assert lk.ops.mask_nms(masks, scores, third).tolist() == [0, 1]  # strict at the float32 IoU
            assert lk.ops.mask_nms(masks, scores, 0.4999).tolist() == [0, 1]

    @pytest.mark.parametrize("backend", runnable_backends(_MASK_NMS))
    def test_given_boxes(self, backend):
        masks, scores = with_duplicates(blob_masks(25, 37, 70, generator=_gen(11)), torch.rand(25, generator=_gen(12)))
        packed = pack_masks(masks)
        tight = mask_nms_module.packed_mask_boxes(packed, 70)
        loose = tight + torch.tensor([-3, -50, 2, 100])  # enclosing boxes may leave the image
        with lk.use_backend(backend):
            expected = lk.ops.mask_nms(masks, scores, 0.3)
            assert torch.equal(lk.ops.mask_nms(masks, scores, 0.3, boxes=tight), expected)
            assert torch.equal(lk.ops.mask_nms(masks, scores, 0.3, boxes=loose.int()), expected)

    def test_boxes_match_segment_anything(self):
        amg = pytest.importorskip("segment_anything.utils.amg")
        masks = blob_masks(30, 45, 97, generator=_gen(13), empty=(0, 7))
        masks[3] = False
        masks[3, 44, 96] = True  # a single corner pixel
        assert torch.equal(mask_nms_module.packed_mask_boxes(pack_masks(masks), 97), amg.batched_mask_to_box(masks))

    def test_non_contiguous_and_dtypes(self):
        masks = blob_masks(12, 37, 70, generator=_gen(14))
        scores = torch.rand(24, dtype=torch.float64, generator=_gen(15))[::2]
        transposed = masks.transpose(1, 2).contiguous().transpose(1, 2)
        expected = lk.ops.mask_nms(masks, scores, 0.2)
        assert torch.equal(lk.ops.mask_nms(transposed, scores, 0.2), expected)
        assert torch.equal(lk.ops.mask_nms(masks, scores.half(), 0.2, idxs=torch.zeros(12, dtype=torch.int32)),
                           lk.ops.mask_nms(masks, scores.half(), 0.2))

    def test_bad_input(self):
        masks = blob_masks(4, 8, 40)
        scores = torch.rand(4)
        with pytest.raises(TypeError, match="masks"):
            lk.ops.mask_nms(masks.float(), scores, 0.5)
        with pytest.raises(TypeError, match="scores"):
            lk.ops.mask_nms(masks, torch.ones(4, dtype=torch.int64), 0.5)
        with pytest.raises(ValueError, match="scores"):
            lk.ops.mask_nms(masks, torch.rand(5), 0.5)
        with pytest.raises(ValueError, match="iou_threshold"):
            lk.ops.mask_nms(masks, scores, 1.5)
        with pytest.raises(TypeError, match="iou_threshold"):
            lk.ops.mask_nms(masks, scores, "0.5")
        with pytest.raises(TypeError, match="idxs"):
            lk.ops.mask_nms(masks, scores, 0.5, idxs=torch.zeros(4))
        with pytest.raises(ValueError, match="idxs"):
            lk.ops.mask_nms(masks, scores, 0.5, idxs=torch.zeros(3, dtype=torch.long))
        with pytest.raises(TypeError, match="boxes"):
            lk.ops.mask_nms(masks, scores, 0.5, boxes=torch.zeros(4, 4))
        with pytest.raises(ValueError, match="boxes"):
            lk.ops.mask_nms(masks, scores, 0.5, boxes=torch.zeros(3, 4, dtype=torch.long))
        with pytest.raises(ValueError, match="width"):
            lk.ops.mask_nms(pack_masks(masks), scores, 0.5)

    @pytest.mark.skipif(not hasattr(torch.ops.litesam, "_mask_nms_kernel"), reason="compiled extension missing")
    def test_compiled_kernel_checks(self):
        packed = pack_masks(blob_masks(4, 8, 40))
        boxes = torch.zeros(4, 4, dtype=torch.long)
        with pytest.raises(ValueError, match="iou_threshold"):
            torch.ops.litesam._mask_nms_kernel(packed, boxes, torch.rand(4), None, 2.0)
        with pytest.raises(TypeError, match="masks"):
            torch.ops.litesam._mask_nms_kernel(packed.long(), boxes, torch.rand(4), None, 0.5)
        with pytest.raises(ValueError, match="boxes"):
            torch.ops.litesam._mask_iou_kernel(packed, boxes[:3], packed, boxes, False)

    @pytest.mark.skipif(not hasattr(torch.ops.litesam, "_mask_nms_kernel"), reason="compiled extension missing")
    def test_compiled_kernel_opcheck(self):
        packed = pack_masks(blob_masks(6, 9, 40, generator=_gen(17)))
        boxes = mask_nms_module.packed_mask_boxes(packed, 40)
        torch.library.opcheck(torch.ops.litesam._mask_iou_kernel, (packed, boxes, packed[:4], boxes[:4], False))
        torch.library.opcheck(torch.ops.litesam._mask_nms_kernel,
                              (packed, boxes, torch.rand(6), torch.tensor([0, 1, 0, 1, 0, 1]), 0.3))

    def test_compile_fullgraph(self):
        masks, scores = blob_masks(20, 37, 70, generator=_gen(18)), torch.rand(20, generator=_gen(19))
        idxs = torch.randint(0, 2, (20,), generator=_gen(20))

        def select(masks, scores, idxs):
            keep = lk.ops.mask_nms(masks, scores, 0.3, idxs=idxs)
            return scores[keep], lk.ops.matrix_nms(masks, scores, idxs=idxs), lk.ops.mask_iou(masks, masks[:5])

        kept_scores, decayed, iou = torch.compile(select, fullgraph=True)(masks, scores, idxs)
        assert torch.equal(kept_scores, scores[lk.ops.mask_nms(masks, scores, 0.3, idxs=idxs)])
        assert torch.equal(decayed, lk.ops.matrix_nms(masks, scores, idxs=idxs))
        assert torch.equal(iou, lk.ops.mask_iou(masks, masks[:5]))

    def test_opcheck(self):
        packed = pack_masks(blob_masks(6, 9, 40, generator=_gen(16)))
        scores = torch.rand(6)
        torch.library.opcheck(torch.ops.litesam.mask_nms, (packed, scores, 0.3, None, None, 40))
        torch.library.opcheck(torch.ops.litesam.mask_nms,
                              (packed, scores, 0.3, torch.tensor([0, 1, 0, 1, 0, 1]), None, 40))


def _matrix_nms_loops(iou_sorted, groups, kernel, sigma):
    """Independent check of the decay: min(1, min over higher-ranked i of the same group with IoU > 0)."""
    n = iou_sorted.shape[0]
    same = lambda i, j: groups is None or groups[i] == groups[j]  # noqa: E731
    comp = [max([iou_sorted[k, i].item() for k in range(i) if same(k, i)], default=0.0) for i in range(n)]
    decay = []
    for j in range(n):
        terms = [1.0]
        for i in range(j):
            if same(i, j) and iou_sorted[i, j] > 0:
                d = iou_sorted[i, j].item()
                if kernel == "gaussian":
                    terms.append(torch.exp(torch.tensor(-sigma * d * d + sigma * comp[i] ** 2)).item())
                elif comp[i] < 1:
                    terms.append((1 - d) / (1 - comp[i]))
        decay.append(min(terms))
    return torch.tensor(decay)


class TestMatrixNms:
    @pytest.mark.parametrize("backend", runnable_backends(_MATRIX_NMS))
    @pytest.mark.parametrize("kernel", ["gaussian", "linear"])
    @pytest.mark.parametrize("grouped", [False, True])
    def test_matches_reference(self, backend, kernel, grouped):
        masks, scores = with_duplicates(blob_masks(24, 45, 33, generator=_gen(21), empty=(5,)),
                                        torch.rand(24, generator=_gen(22)))
        masks[10] = masks[1]  # a third copy: the linear 0/0 term
        idxs = torch.randint(0, 3, (24,), generator=_gen(23)) if grouped else None
        with lk.use_backend("reference"):
            expected = lk.ops.matrix_nms(masks, scores, idxs=idxs, kernel=kernel, sigma=1.5)
        with lk.use_backend(backend):
            got = lk.ops.matrix_nms(masks, scores, idxs=idxs, kernel=kernel, sigma=1.5)
            got_packed = lk.ops.matrix_nms(pack_masks(masks), scores, idxs=idxs, kernel=kernel, sigma=1.5, width=33)
        assert got.dtype == scores.dtype and not torch.isnan(got).any()
        assert torch.equal(got, expected) and torch.equal(got_packed, expected)
        assert torch.all(got <= scores) and torch.all(got >= 0)

    @pytest.mark.parametrize("backend", runnable_backends(_MATRIX_NMS))
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_scores(self, backend, dtype):
        """Half scores: ranked in their dtype, decay computed in float32 and rounded once to the score dtype,
        identical on every backend (same IoUs, same float32 decay)."""
        masks = blob_masks(20, 37, 70, generator=_gen(54))
        scores = torch.rand(20, generator=_gen(55)).to(dtype)
        with lk.use_backend("reference"):
            expected = lk.ops.matrix_nms(masks, scores, kernel="gaussian")
        with lk.use_backend(backend):
            got = lk.ops.matrix_nms(masks, scores, kernel="gaussian")
        assert got.dtype == dtype and torch.equal(got, expected)

    @pytest.mark.parametrize("kernel", ["gaussian", "linear"])
    def test_decay_formula_and_input_order(self, kernel):
        masks, scores = with_duplicates(blob_masks(16, 37, 70, generator=_gen(24)), torch.rand(16, generator=_gen(25)))
        idxs = torch.randint(0, 2, (16,), generator=_gen(26))
        order = torch.sort(scores, stable=True, descending=True).indices
        iou_sorted = lk.ops.mask_iou(masks[order], masks[order])
        decay = _matrix_nms_loops(iou_sorted, idxs[order].tolist(), kernel, 2.0)
        got = lk.ops.matrix_nms(masks, scores, idxs=idxs, kernel=kernel)
        assert torch.allclose(got[order], scores[order] * decay, rtol=1e-5, atol=1e-7)
        assert got[order[0]] == scores[order[0]]  # the top mask is never decayed
        # Output is aligned with the input: permuting the input permutes the output.
        perm = torch.randperm(16, generator=_gen(27))
        assert torch.equal(lk.ops.matrix_nms(masks[perm], scores[perm], idxs=idxs[perm], kernel=kernel), got[perm])

    def test_edge_cases(self):
        assert lk.ops.matrix_nms(torch.zeros(0, 4, 40, dtype=torch.bool), torch.zeros(0)).shape == (0,)
        assert lk.ops.matrix_nms(blob_masks(1, 4, 40), torch.tensor([0.25])).tolist() == [0.25]
        empty = lk.ops.matrix_nms(torch.zeros(3, 4, 40, dtype=torch.bool), torch.tensor([0.5, 0.25, 0.75]))
        assert empty.tolist() == [0.5, 0.25, 0.75]
        half = lk.ops.matrix_nms(blob_masks(4, 6, 40, generator=_gen(28)), torch.rand(4).half(), kernel="linear")
        assert half.dtype == torch.float16

    def test_bad_input(self):
        masks, scores = blob_masks(4, 8, 40), torch.rand(4)
        with pytest.raises(ValueError, match="kernel"):
            lk.ops.matrix_nms(masks, scores, kernel="box")
        with pytest.raises(ValueError, match="sigma"):
            lk.ops.matrix_nms(masks, scores, sigma=-1.0)
        with pytest.raises(ValueError, match="scores"):
            lk.ops.matrix_nms(masks, scores[:3])
        with pytest.raises(TypeError, match="idxs"):
            lk.ops.matrix_nms(masks, scores, idxs=torch.zeros(4))

    def test_opcheck(self):
        packed = pack_masks(blob_masks(6, 9, 40, generator=_gen(29)))
        torch.library.opcheck(torch.ops.litesam.matrix_nms, (packed, torch.rand(6), None, "gaussian", 2.0, 40))
        torch.library.opcheck(torch.ops.litesam.matrix_nms,
                              (packed, torch.rand(6), torch.tensor([0, 0, 1, 1, 2, 2]), "linear", 2.0, 40))


try:
    import triton
    import triton.language as tl

    from litesam_kernels.triton import _bits

    @triton.jit
    def _bits_probe_kernel(x_ptr, popc_ptr, low_ptr, high_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        ok = offs < n
        x = tl.load(x_ptr + offs, mask=ok, other=0)
        tl.store(popc_ptr + offs, _bits.popcount32(x, False), mask=ok)
        tl.store(low_ptr + offs, _bits.lowest_bit(x), mask=ok)
        tl.store(high_ptr + offs, _bits.highest_bit(x), mask=ok)
except ImportError:  # no triton: the Triton tests skip
    pass


class TestMaskNmsTriton:
    """The Triton path's pieces: every GPU launch configuration, passes of bounded size, the pair list."""

    @pytest.fixture(autouse=True)
    def _needs_triton(self):
        reason = _backend_reason_cpu(_MASK_NMS)
        if reason:
            pytest.skip(reason)

    @pytest.mark.parametrize("family", ["mask_nms.area", "mask_nms.pair_count", "mask_nms.pair_emit",
                                        "mask_nms.pair_popcount"])
    def test_every_configuration(self, family):
        from litesam_kernels.triton import _configs, mask_nms as triton_mask_nms  # noqa: F401  (declares them)

        # 1500-pixel-wide masks: 47 words per row, more than every configured BLOCK_W.
        masks, scores = with_duplicates(blob_masks(12, 9, 1500, generator=_gen(61)), torch.rand(12, generator=_gen(62)))
        idxs = torch.randint(0, 2, (12,), generator=_gen(63))
        packed = pack_masks(masks)
        expected_iou = mask_nms_module._mask_iou_reference(packed, packed[:7], 1500)
        expected_keep = mask_nms_module._mask_nms_reference(packed, scores, 0.3, idxs, 1500)
        for index in range(len(_configs.families()[family])):
            with _configs.force_config(family, index), lk.use_backend("triton"):
                assert torch.equal(lk.ops.mask_iou(packed, packed[:7], width=1500), expected_iou)
                assert torch.equal(lk.ops.mask_nms(packed, scores, 0.3, idxs=idxs, width=1500), expected_keep)

    def test_passes_of_bounded_size(self, monkeypatch):
        from litesam_kernels.triton import mask_nms as triton_mask_nms

        masks, scores = with_duplicates(blob_masks(70, 21, 40, generator=_gen(64)), torch.rand(70, generator=_gen(65)))
        packed = pack_masks(masks)
        expected_iou = mask_nms_module._mask_iou_reference(packed, packed, 40)
        expected_keep = mask_nms_module._mask_nms_reference(packed, scores, 0.5, None, 40)
        per_tile_row = torch.tensor([[600, 900], [500, 800], [0, 0], [300, 300]])
        for pairs, items in ((1, 10**9), (10**9, 50)):  # one tile row per pass: by pairs, by items
            monkeypatch.setattr(triton_mask_nms, "MAX_PAIRS_PER_PASS", pairs)
            monkeypatch.setattr(triton_mask_nms, "MAX_ITEMS_PER_PASS", items)
            assert list(triton_mask_nms._pass_tile_rows(per_tile_row)) == [(0, 1), (1, 2), (2, 4)]
            with lk.use_backend("triton"):
                assert torch.equal(lk.ops.mask_iou(masks, masks), expected_iou)
                assert torch.equal(lk.ops.mask_nms(masks, scores, 0.5), expected_keep)

    def test_pair_list_is_the_box_overlapping_pairs(self):
        """Listed pairs = pairs whose boxes intersect (j > i, same group), each once, with the exact
        intersection; every other pair has no common pixel."""
        from litesam_kernels.triton.mask_nms import overlapping_pair_intersections

        masks = blob_masks(45, 29, 97, generator=_gen(66), empty=(3,))
        packed = pack_masks(masks)
        boxes = mask_nms_module.packed_mask_boxes(packed, 97)
        windows = mask_nms_module._windows(boxes, 29, packed.shape[2])
        groups = torch.randint(0, 3, (45,), generator=_gen(67))
        listed = {}
        for first, second, inter in overlapping_pair_intersections(packed, windows, packed, windows, True, groups):
            for i, j, k in zip(first.tolist(), second.tolist(), inter.tolist()):
                assert (i, j) not in listed
                listed[(i, j)] = k
        flat = masks.flatten(1).long()
        dense = flat @ flat.T
        x0, y0, x1, y1 = windows.long().unbind(1)
        for i in range(45):
            for j in range(i + 1, 45):
                boxes_meet = (bool(max(x0[i], x0[j]) <= min(x1[i], x1[j]))
                              and bool(max(y0[i], y0[j]) <= min(y1[i], y1[j])))
                assert ((i, j) in listed) == (boxes_meet and bool(groups[i] == groups[j]))
                if (i, j) in listed:
                    assert listed[(i, j)] == dense[i, j]
                elif not boxes_meet:
                    assert dense[i, j] == 0

    def test_bit_helpers(self):
        values = torch.tensor([1, 2, 3, 0x80000000, 0xFFFFFFFF, 0x7FFFFFFF, 0x00010000, 0x80000001, 0x0F0F0000, 6],
                              dtype=torch.int64)
        values = torch.cat([values, torch.randint(1, 2**32, (200,), generator=_gen(68))])
        words = torch.where(values >= 2**31, values - 2**32, values).to(torch.int32)
        popc, low, high = (torch.empty_like(words) for _ in range(3))
        _bits_probe_kernel[(1,)](words, popc, low, high, words.numel(), BLOCK=256)
        as_bits = [[(v >> b) & 1 for b in range(32)] for v in values.tolist()]
        assert popc.tolist() == [sum(b) for b in as_bits]
        assert low.tolist() == [b.index(1) for b in as_bits]
        assert high.tolist() == [31 - b[::-1].index(1) for b in as_bits]


def _backend_reason_cpu(op):
    return _backend.why_not("triton", op, torch.device("cpu"))


@pytest.mark.gpu
class TestMaskNmsGpu:
    """CUDA and Triton on the device vs the reference, at sizes with many 64 x 64 tiles and groups."""

    @pytest.fixture(scope="class")
    def inputs(self):
        # 400 masks: 7 x 7 tiles of 64; small enough for compute-sanitizer runs of the gpu tests.
        masks, scores = with_duplicates(blob_masks(400, 67, 250, generator=_gen(31), empty=(0, 99)),
                                        torch.rand(400, generator=_gen(32)))
        masks[300:380] = masks[100:180]  # many exact copies with other scores
        idxs = torch.randint(0, 3, (400,), generator=_gen(33))
        return masks.cuda(), scores.cuda(), idxs.cuda()

    @pytest.mark.parametrize("backend", ["cuda", "triton"])
    def test_mask_nms_and_iou(self, backend, inputs):
        masks, scores, idxs = inputs
        reason = _backend_reason(backend, _MASK_NMS)
        if reason:
            pytest.skip(reason)
        packed = pack_masks(masks)
        iou_expected = mask_nms_module._mask_iou_reference(packed, packed[:300], 250)
        with lk.use_backend(backend):
            assert torch.equal(lk.ops.mask_iou(masks, masks[:300]), iou_expected)
            for threshold, groups in ((0.5, None), (0.7, idxs), (0.0, idxs)):
                expected = mask_nms_module._mask_nms_reference(packed, scores, threshold, groups, 250)
                assert torch.equal(lk.ops.mask_nms(masks, scores, threshold, idxs=groups), expected)
                assert torch.equal(lk.ops.mask_nms(packed, scores, threshold, idxs=groups, width=250), expected)
        with lk.use_backend("cpu"):
            on_cpu = lk.ops.mask_nms(masks.cpu(), scores.cpu(), 0.5)
        assert torch.equal(on_cpu, mask_nms_module._mask_nms_reference(packed, scores, 0.5, None, 250).cpu())

    @pytest.mark.parametrize("backend", ["cuda", "triton"])
    def test_matrix_nms(self, backend, inputs):
        masks, scores, idxs = inputs
        reason = _backend_reason(backend, _MATRIX_NMS)
        if reason:
            pytest.skip(reason)
        for kernel in ("gaussian", "linear"):
            with lk.use_backend("reference"):
                expected = lk.ops.matrix_nms(masks, scores, idxs=idxs, kernel=kernel)
            with lk.use_backend(backend):
                got = lk.ops.matrix_nms(masks, scores, idxs=idxs, kernel=kernel)
            assert torch.equal(got, expected)


def _backend_reason(backend, op):
    from litesam_kernels import _backend

    return _backend.why_not(backend, op, torch.device("cuda"))


def test_mask_iou_op_checks_both_stacks_itself():
    """Regression (issue 14): ``torch.ops.litesam.mask_iou`` checked only ``width``; its kernels build both
    stacks' windows from ``packed_a``'s height (wrong IoUs, an out-of-bounds read on a GPU) and a stack on
    another device could reach them. The wrappers' non-tensor arguments raise TypeError (call_op)."""
    a = pack_masks(torch.ones(2, 10, 40, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"masks_a and masks_b must have the same \(H, W\)"):
        torch.ops.litesam.mask_iou(a, pack_masks(torch.ones(3, 9, 40, dtype=torch.bool)), 40)
    with pytest.raises(ValueError, match="masks_b must be on the device of masks_a"):
        torch.ops.litesam.mask_iou(a, a.to("meta"), 40)
    masks, scores = torch.ones(2, 10, 40, dtype=torch.bool), torch.rand(2)
    with pytest.raises(TypeError, match="scores must be a torch.Tensor"):
        lk.ops.mask_nms(masks, scores.numpy(), 0.5)
    with pytest.raises(TypeError, match="kernel must be a str"):
        lk.ops.matrix_nms(masks, scores, kernel=1)
