import math

import pytest
import torch

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.ops import ppn_decode
from litesam_kernels.ops.ppn_decode import _ppn_decode_reference
from tests.helpers import runnable_backends

OP = _backend.implementations("ppn_decode")


def smooth_heatmap(b, h, w, peaks_scale=4.0):
    """Blob-like logits: low-res noise upsampled (a realistic heatmap with a handful of peaks per blob)."""
    low = torch.randn(b, 1, max(2, h // 4), max(2, w // 4)) * peaks_scale
    return torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False) - 1.0


def box_distances(b, h, w):
    return torch.rand(b, 4, h, w) * 4


def run(backend, *args, **kwargs):
    with lk.use_backend(backend):
        return ppn_decode(*args, **kwargs)


def assert_same(got, expected):
    assert torch.equal(got.indices, expected.indices)
    assert torch.equal(got.num_valid, expected.num_valid)
    torch.testing.assert_close(got.points, expected.points, rtol=0, atol=0)
    torch.testing.assert_close(got.boxes, expected.boxes, rtol=0, atol=0)
    torch.testing.assert_close(got.scores, expected.scores, rtol=1e-6, atol=1e-6)  # sigmoid: 1 ulp apart


class TestPPNDecode:
    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("b,h,w,k,threshold", [(1, 32, 32, 256, 0.1), (3, 13, 17, 20, 0.3), (2, 8, 8, 100, 0.0),
                                                    (2, 1, 1, 4, 0.1), (2, 5, 31, 1, 0.5)])
    def test_against_reference(self, backend, b, h, w, k, threshold):
        heat, dist = smooth_heatmap(b, h, w), box_distances(b, h, w)
        expected = _ppn_decode_reference(heat, dist, None, k, threshold, 16.0)
        assert_same(run(backend, heat, dist, k=k, score_threshold=threshold), type(run("reference", heat, dist, k=1))(*expected))

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_image_sizes_mask_padding_and_clamp_boxes(self, backend):
        heat, dist = torch.randn(2, 1, 16, 16), box_distances(2, 16, 16) * 3
        sizes = torch.tensor([[256, 160], [90, 256]])
        got = run(backend, heat, dist, k=64, score_threshold=0.0, image_sizes=sizes)
        assert_same(got, run("reference", heat, dist, k=64, score_threshold=0.0, image_sizes=sizes))
        for i, (h, w) in enumerate(sizes.tolist()):
            n = int(got.num_valid[i])
            assert n > 0
            assert (got.points[i, :n, 0] < w).all() and (got.points[i, :n, 1] < h).all()
            assert (got.boxes[i, :n, 0::2] <= w).all() and (got.boxes[i, :n, 1::2] <= h).all()
            assert (got.boxes[i, :n] >= 0).all()

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_ties_lower_index_first_and_plateaus(self, backend):
        heat = torch.full((1, 1, 6, 7), -5.0)
        heat[0, 0, 1, 1] = 2.0           # isolated peaks with equal logits: index order
        heat[0, 0, 4, 5] = 2.0
        heat[0, 0, 1, 4:6] = 2.0         # a 1x2 plateau: both cells are peaks
        heat[0, 0, 4, 1] = 3.0           # the best
        heat[0, 0, 3, 3] = -0.0          # -0.0 and +0.0 tie
        heat[0, 0, 5, 3] = 0.0
        dist = torch.ones(1, 4, 6, 7)
        got = run(backend, heat, dist, k=10, score_threshold=0.2)
        assert got.indices[0].tolist() == [4 * 7 + 1, 1 * 7 + 1, 1 * 7 + 4, 1 * 7 + 5, 4 * 7 + 5, 3 * 7 + 3, 5 * 7 + 3,
                                           -1, -1, -1]
        assert got.num_valid.tolist() == [7]
        assert_same(got, run("reference", heat, dist, k=10, score_threshold=0.2))
        # the point is the cell centre; the box is one stride each way, clamped at 0
        assert got.points[0, 0].tolist() == [24.0, 72.0]
        assert got.boxes[0, 0].tolist() == [8.0, 56.0, 40.0, 88.0]

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_k_larger_than_peaks_pads(self, backend):
        heat, dist = smooth_heatmap(2, 9, 9), box_distances(2, 9, 9)
        got = run(backend, heat, dist, k=200, score_threshold=0.05)
        assert_same(got, run("reference", heat, dist, k=200, score_threshold=0.05))
        for i in range(2):
            n = int(got.num_valid[i])
            assert 0 < n < 200
            assert (got.indices[i, n:] == -1).all() and (got.scores[i, n:] == 0).all() and (got.boxes[i, n:] == 0).all()
            assert (got.scores[i, :n] >= 0.05).all()
            assert (got.scores[i, :n - 1] >= got.scores[i, 1:n]).all()

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_nan_thresholds_and_dtypes(self, backend):
        heat = smooth_heatmap(2, 12, 10)
        heat[0, 0, 3, 3] = float("nan")
        heat[1] = -math.inf
        dist = box_distances(2, 12, 10)
        for threshold in (0.0, 1.0):
            assert_same(run(backend, heat, dist, k=16, score_threshold=threshold),
                        run("reference", heat, dist, k=16, score_threshold=threshold))
        assert run(backend, heat, dist, k=16, score_threshold=1.0).num_valid.tolist() == [0, 0]
        assert run(backend, heat, dist, k=16, score_threshold=0.0).num_valid[1].item() == 0
        half = run(backend, heat.half(), dist.half(), k=16)
        assert_same(half, run("reference", heat.half().float(), dist.half().float(), k=16))

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
    def test_every_dtype_matches_float32_of_the_same_values(self, backend, dtype):
        """Half/double maps are converted to float32 on load, exactly (float64 values are rounded once): the
        result equals the float32 decode of the converted values bit for bit, ties and padding included. bf16
        keeps 8 mantissa bits, so equal-logit plateaus are common; they are still ordered by index."""
        heat, dist = smooth_heatmap(3, 24, 20).to(dtype), box_distances(3, 24, 20).to(dtype)
        sizes = torch.tensor([[384, 320], [200, 320], [384, 150]])
        for k, threshold in ((64, 0.1), (500, 0.0)):
            got = run(backend, heat, dist, k=k, score_threshold=threshold, image_sizes=sizes)
            expected = run("reference", heat.float(), dist.float(), k=k, score_threshold=threshold, image_sizes=sizes)
            assert_same(got, expected)
            assert got.points.dtype == got.boxes.dtype == got.scores.dtype == torch.float32

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_non_contiguous_and_empty(self, backend):
        heat = smooth_heatmap(2, 10, 10).transpose(2, 3)
        dist = box_distances(2, 10, 10).transpose(2, 3)
        assert_same(run(backend, heat, dist, k=8), run("reference", heat.contiguous(), dist.contiguous(), k=8))
        empty = run(backend, torch.zeros(0, 1, 4, 4), torch.zeros(0, 4, 4, 4), k=5)
        assert empty.points.shape == (0, 5, 2) and empty.num_valid.shape == (0,)

    @pytest.mark.parametrize("backend", runnable_backends(OP))
    def test_threshold_boundary_is_exact(self, backend):
        import numpy as np

        boundary = math.log(0.3 / 0.7)  # sigmoid(x) >= 0.3 <=> x >= boundary
        below = float(np.float32(boundary)) if np.float32(boundary) < boundary else float(
            np.nextafter(np.float32(boundary), np.float32(-np.inf)))
        above = float(np.nextafter(np.float32(below), np.float32(np.inf)))
        heat = torch.full((1, 1, 5, 5), -9.0)
        heat[0, 0, 1, 1], heat[0, 0, 3, 3] = below, above
        got = run(backend, heat, torch.ones(1, 4, 5, 5), k=4, score_threshold=0.3)
        assert got.indices[0].tolist() == [18, -1, -1, -1]

    def test_peaks_are_local_maxima_and_above_threshold(self):
        heat, dist = smooth_heatmap(2, 32, 32), box_distances(2, 32, 32)
        got = run("reference", heat, dist, k=4096, score_threshold=0.2)
        pooled = torch.nn.functional.max_pool2d(heat, 3, 1, 1)
        expected = ((heat == pooled) & (torch.sigmoid(heat) >= 0.2)).flatten(1).sum(1)
        assert torch.equal(got.num_valid, expected)

    def test_bad_input(self):
        heat, dist = torch.randn(2, 1, 4, 4), torch.rand(2, 4, 4, 4)
        with pytest.raises(ValueError, match="heatmap_logits"):
            ppn_decode(torch.randn(2, 2, 4, 4), dist)
        with pytest.raises(ValueError, match="box_regression"):
            ppn_decode(heat, torch.rand(2, 4, 4, 5))
        with pytest.raises(TypeError, match="heatmap_logits"):
            ppn_decode(heat.long(), dist)
        with pytest.raises(ValueError, match="k must be"):
            ppn_decode(heat, dist, k=0)
        with pytest.raises(TypeError, match="k must be"):
            ppn_decode(heat, dist, k=2.0)
        with pytest.raises(ValueError, match="score_threshold"):
            ppn_decode(heat, dist, score_threshold=1.5)
        with pytest.raises(ValueError, match="stride"):
            ppn_decode(heat, dist, stride=0)
        with pytest.raises(ValueError, match="image_sizes"):
            ppn_decode(heat, dist, image_sizes=torch.tensor([[1, 2]]))
        with pytest.raises(TypeError, match="image_sizes"):
            ppn_decode(heat, dist, image_sizes=torch.rand(2, 2))

    def test_opcheck(self):
        heat, dist = smooth_heatmap(2, 8, 8), box_distances(2, 8, 8)
        torch.library.opcheck(torch.ops.litesam.ppn_decode.default, (heat, dist, None, 16, 0.1, 16.0))
        torch.library.opcheck(torch.ops.litesam.ppn_decode.default, (heat, dist, torch.tensor([[100, 128], [128, 64]]),
                                                                      4, 0.0, 16.0))
        with lk.use_backend("triton"):
            if _backend.why_not("triton", OP, heat.device) is None:
                torch.library.opcheck(torch.ops.litesam.ppn_decode.default, (heat, dist, None, 16, 0.1, 16.0))


@pytest.mark.gpu
class TestPPNDecodeGPU:
    @pytest.mark.parametrize("b,k", [(1, 256), (8, 256), (3, 5000)])
    def test_triton_matches_reference_on_cuda(self, b, k):
        heat, dist = smooth_heatmap(b, 64, 64).cuda(), box_distances(b, 64, 64).cuda()
        sizes = torch.tensor([[1024, 768 - 16 * i] for i in range(b)], device="cuda")
        got = run("triton", heat, dist, k=k, image_sizes=sizes)
        expected = run("reference", heat, dist, k=k, image_sizes=sizes)
        assert torch.equal(got.indices, expected.indices) and torch.equal(got.num_valid, expected.num_valid)
        torch.testing.assert_close(got.boxes, expected.boxes)
        torch.testing.assert_close(got.scores, expected.scores, rtol=1e-5, atol=1e-6)

    def test_bf16_and_compile(self):
        heat, dist = smooth_heatmap(2, 64, 64).cuda().bfloat16(), box_distances(2, 64, 64).cuda().bfloat16()
        compiled = torch.compile(lambda h, d: ppn_decode(h, d, k=64), fullgraph=True)
        got, expected = compiled(heat, dist), run("reference", heat, dist, k=64)
        assert torch.equal(got.indices, expected.indices)


def test_bad_types_and_huge_k_are_rejected_before_the_op():
    """Regression (issue 14): a numpy heatmap got the dispatcher's RuntimeError; k had no upper limit (2**40
    reached a 17 TB allocation; the Triton kernel takes k as int32)."""
    heat, regression = torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, 4)
    with pytest.raises(TypeError, match="heatmap_logits must be a torch.Tensor"):
        lk.ops.ppn_decode(heat.numpy(), regression)
    with pytest.raises(ValueError, match=r"k must be in \[1, 65536\]"):
        lk.ops.ppn_decode(heat, regression, k=2**40)
    with pytest.raises(ValueError, match=r"k must be in \[1, 65536\]"):
        torch.ops.litesam.ppn_decode(heat, regression, None, 2**40, 0.1, 16.0)
