"""Box NMS: every backend against the slow reference and against torchvision."""
import math

import pytest
import torch

import litesam_kernels as lk
from litesam_kernels import _backend
from litesam_kernels.ops import batched_nms, nms
from litesam_kernels.ops.nms import _batched_nms_reference, _nms_reference
from tests.helpers import random_boxes, runnable_backends

torchvision = pytest.importorskip("torchvision")

OP = _backend.implementations("batched_nms")
BACKENDS = runnable_backends(OP)
THRESHOLDS = [0.0, 0.3, 0.5, 0.7, 1.0]


def distinct_scores(n, dtype=torch.float32):
    return (torch.randperm(n).to(torch.float64) / max(n, 1)).to(dtype)


def run_nms(backend, *args):
    with lk.use_backend(backend):
        return nms(*args)


def run_batched(backend, *args):
    with lk.use_backend(backend):
        return batched_nms(*args)


class TestNMS:
    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("n", [0, 1, 2, 65, 300])
    def test_matches_reference_and_torchvision(self, backend, n):
        boxes, scores = random_boxes(n, max_size=300), distinct_scores(n)
        for threshold in THRESHOLDS:
            got = run_nms(backend, boxes, scores, threshold)
            assert got.dtype == torch.int64 and got.device == boxes.device
            assert torch.equal(got, _nms_reference(boxes, scores, threshold))
            assert torch.equal(got, torchvision.ops.nms(boxes, scores, threshold))

    @pytest.mark.parametrize("backend", [b for b in BACKENDS if b.values[0] != "triton"])
    def test_large_n_crosses_many_words(self, backend):
        boxes, scores = random_boxes(4097, max_size=120), distinct_scores(4097)
        got = run_nms(backend, boxes, scores, 0.5)
        assert torch.equal(got, torchvision.ops.nms(boxes, scores, 0.5))

    def test_triton_crosses_word_boundaries(self):
        if _backend.why_not("triton", OP, torch.device("cpu")):
            pytest.skip("triton cannot run here")
        boxes, scores = random_boxes(700, max_size=400), distinct_scores(700)
        assert torch.equal(run_nms("triton", boxes, scores, 0.4), torchvision.ops.nms(boxes, scores, 0.4))

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_heavy_ties_match_torchvision_cpu(self, backend):
        """torchvision 0.26's CPU NMS sorts stably (ties by increasing index), as ours: equal keep lists on
        boxes of 3 distinct scores on a 20 x 20 grid of cells (most boxes overlap several others)."""
        g = torch.Generator().manual_seed(0)
        for n in (7, 200, 600):
            xy = torch.randint(0, 20, (n, 2), generator=g).float()
            boxes = torch.cat([xy, xy + torch.randint(1, 6, (n, 2), generator=g)], 1)
            scores = torch.randint(0, 3, (n,), generator=g).float()
            idxs = torch.randint(0, 3, (n,), generator=g)
            assert torch.equal(run_nms(backend, boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
            assert torch.equal(run_batched(backend, boxes, scores, idxs, 0.5),
                               torchvision.ops.batched_nms(boxes, scores, idxs, 0.5))

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_ties_keep_lower_index(self, backend):
        # Five copies of one box with one score: the first copy wins, whatever the sort.
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(5, 1)
        scores = torch.ones(5)
        assert run_nms(backend, boxes, scores, 0.5).tolist() == [0]
        # Tied scores on disjoint boxes come out by increasing index.
        boxes = torch.stack([torch.tensor([20.0 * i, 0.0, 20.0 * i + 10, 10.0]) for i in range(70)])
        scores = torch.tensor([1.0, 2.0] * 35)
        expected = list(range(1, 70, 2)) + list(range(0, 70, 2))
        assert run_nms(backend, boxes, scores, 0.5).tolist() == expected

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_heavy_ties_match_reference(self, backend):
        boxes = random_boxes(200, max_size=400)
        scores = torch.randint(0, 4, (200,)).float()
        assert torch.equal(run_nms(backend, boxes, scores, 0.3), _nms_reference(boxes, scores, 0.3))

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_iou_exactly_at_threshold_is_kept(self, backend):
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])  # IoU = 0.5 exactly
        scores = torch.tensor([0.9, 0.8])
        assert run_nms(backend, boxes, scores, 0.5).tolist() == [0, 1]
        assert run_nms(backend, boxes, scores, math.nextafter(0.5, 0.0)).tolist() == [0]

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_degenerate_boxes_never_suppress(self, backend):
        boxes = torch.tensor([
            [5.0, 5.0, 5.0, 5.0],    # a point
            [5.0, 5.0, 5.0, 5.0],    # the same point
            [0.0, 0.0, 10.0, 0.0],   # zero height
            [10.0, 10.0, 0.0, 0.0],  # inverted
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 10.0],  # duplicate of 4: suppressed
        ])
        scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
        assert run_nms(backend, boxes, scores, 0.0).tolist() == [0, 1, 2, 3, 4]

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_nan_and_inf(self, backend):
        boxes = torch.tensor([
            [0.0, 0.0, 10.0, 10.0],
            [float("nan"), 0.0, 10.0, 10.0],  # NaN coordinate: never suppressed, suppresses nothing
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, float("inf"), 10.0],   # infinite area: IoU 100/inf = 0 with box 0
            [0.0, 0.0, float("inf"), 10.0],   # inf/inf = NaN with box 3: kept
        ])
        scores = torch.tensor([0.9, 0.8, 0.7, float("nan"), 0.5])
        got = run_nms(backend, boxes, scores, 0.5)
        assert got.tolist() == [3, 0, 1, 4]  # NaN score sorts first, box 2 duplicates box 0
        assert torch.equal(got, _nms_reference(boxes, scores, 0.5))

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
    def test_dtypes(self, backend, dtype):
        """Half boxes: IoU in float32 of the exactly upcast coordinates (torchvision's CUDA kernel computes in
        its accumulation type, float32, too), so the keep list equals torchvision's on the upcast boxes;
        scores sort in their own dtype (distinct here, so the order is the upcast order)."""
        boxes, scores = random_boxes(150, max_size=300, dtype=dtype), distinct_scores(150, dtype)
        for threshold in (0.3, 0.5, 0.7):
            got = run_nms(backend, boxes, scores, threshold)
            assert torch.equal(got, _nms_reference(boxes, scores, threshold))
            compute = torch.float64 if dtype == torch.float64 else torch.float32
            assert torch.equal(got, torchvision.ops.nms(boxes.to(compute), scores.to(compute), threshold))

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_ties_and_groups(self, backend, dtype):
        """bf16 has 8 mantissa bits: many scores tie after rounding; ties go by index on every backend."""
        boxes, scores = random_boxes(200, max_size=300, dtype=dtype), torch.rand(200).to(dtype)
        idxs = torch.randint(0, 5, (200,))
        assert torch.equal(run_batched(backend, boxes, scores, idxs, 0.5),
                           _batched_nms_reference(boxes, scores, idxs, 0.5))

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_non_contiguous(self, backend):
        wide = random_boxes(128, max_size=300).repeat_interleave(2, dim=1)  # (N, 8)
        boxes, scores = wide[::2, ::2], distinct_scores(256)[::4]
        assert not boxes.is_contiguous() and not scores.is_contiguous()
        assert torch.equal(run_nms(backend, boxes, scores, 0.5), torchvision.ops.nms(boxes.contiguous(), scores.contiguous(), 0.5))


class TestBatchedNMS:
    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("n,groups", [(0, 1), (1, 1), (130, 1), (300, 5), (300, 300), (257, 40)])
    def test_matches_reference_and_torchvision(self, backend, n, groups):
        boxes, scores = random_boxes(n, max_size=400), distinct_scores(n)
        idxs = torch.randint(0, groups, (n,))
        for threshold in (0.2, 0.5, 0.9):
            got = run_batched(backend, boxes, scores, idxs, threshold)
            assert torch.equal(got, _batched_nms_reference(boxes, scores, idxs, threshold))
            assert torch.equal(got, torchvision.ops.batched_nms(boxes, scores, idxs, threshold))

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_ties_across_groups_by_index(self, backend):
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(6, 1)
        scores = torch.ones(6)
        idxs = torch.tensor([2, 0, 2, 1, 0, 1], dtype=torch.int32)
        assert run_batched(backend, boxes, scores, idxs, 0.5).tolist() == [0, 1, 3]

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_large_coordinates_stay_exact(self, backend):
        # torchvision's coordinate trick adds idx * (max + 1) to the boxes: at 1e7 float32 spacing is 1,
        # so nearly-touching boxes of different offsets round into overlap. Grouping by comparison cannot.
        base = torch.tensor([[1.0e7, 1.0e7, 1.0e7 + 3.0, 1.0e7 + 3.0]])
        boxes = torch.cat([base, base + 0.5, base + 3.25])
        scores = torch.tensor([0.9, 0.8, 0.7])
        idxs = torch.tensor([0, 1, 0])
        got = run_batched(backend, boxes, scores, idxs, 0.3)
        assert torch.equal(got, _batched_nms_reference(boxes, scores, idxs, 0.3))
        assert got.tolist() == [0, 1, 2]

    def test_same_groups_equal_nms(self):
        boxes, scores = random_boxes(200, max_size=300), distinct_scores(200)
        assert torch.equal(batched_nms(boxes, scores, torch.zeros(200, dtype=torch.long), 0.5), nms(boxes, scores, 0.5))


try:
    import triton
    import triton.language as tl

    from litesam_kernels.triton._mask_common import upper_triangle_tile as _upper_triangle_tile

    @triton.jit
    def _tile_probe_kernel(tiles_ptr, rows_ptr, cols_ptr, count, col_blocks, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        ok = offs < count
        rows, cols = _upper_triangle_tile(tl.load(tiles_ptr + offs, mask=ok, other=0), col_blocks)
        tl.store(rows_ptr + offs, rows, mask=ok)
        tl.store(cols_ptr + offs, cols, mask=ok)
except ImportError:  # no triton: the Triton tests skip
    pass


class TestNMSTritonLaunchConfigs:
    """Every GPU launch configuration of the Triton NMS kernels, run under the interpreter on small inputs."""

    @pytest.fixture(autouse=True)
    def _needs_triton(self):
        if _backend.why_not("triton", OP, torch.device("cpu")):
            pytest.skip("triton cannot run here")

    @pytest.mark.parametrize("family", ["nms.mask", "nms.gather"])
    def test_every_configuration(self, family):
        from litesam_kernels.triton import _configs, nms as triton_nms  # noqa: F401  (declares the families)

        boxes, scores = random_boxes(200, max_size=300, dtype=torch.float64), distinct_scores(200, torch.float64)
        idxs = torch.randint(0, 3, (200,))
        for index in range(len(_configs.families()[family])):
            with _configs.force_config(family, index):
                assert torch.equal(run_nms("triton", boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
                assert torch.equal(run_batched("triton", boxes.float(), scores.float(), idxs, 0.4),
                                   torchvision.ops.batched_nms(boxes.float(), scores.float(), idxs, 0.4))

    def test_upper_triangle_tile_mapping(self):
        """The closed-form tile -> (row block, column block) map at the largest supported grid, at every row
        start and its neighbours."""
        import triton

        from litesam_kernels.triton.nms import upper_triangle_tiles

        for col_blocks in (1, 2, 3, 7, 64, 1000, 65535):
            r = torch.unique(torch.cat([torch.arange(min(col_blocks, 50)), torch.randint(0, col_blocks, (200,)),
                                        torch.tensor([col_blocks - 1])]))
            starts = r * (2 * col_blocks - r + 1) // 2
            tiles = torch.cat([starts, starts + (col_blocks - r - 1)])  # first and last tile of each row
            tiles = torch.unique(tiles.clamp(0, upper_triangle_tiles(col_blocks) - 1))
            rows = torch.empty(tiles.shape, dtype=torch.int32)
            cols = torch.empty(tiles.shape, dtype=torch.int32)
            _tile_probe_kernel[(1,)](tiles, rows, cols, tiles.numel(), col_blocks,
                                     BLOCK=triton.next_power_of_2(tiles.numel()))
            rows64 = rows.long()
            assert torch.all((cols >= rows) & (cols < col_blocks))
            assert torch.equal(rows64 * (2 * col_blocks - rows64 + 1) // 2 + (cols.long() - rows64), tiles)


class TestNMSErrors:
    ENTRY_POINTS = {
        "ops": lambda b, s, i, t: batched_nms(b, s, i, t) if i is not None else nms(b, s, t),
        "torch.ops": lambda b, s, i, t: (torch.ops.litesam.batched_nms(b, s, i, t) if i is not None
                                         else torch.ops.litesam.nms(b, s, t)),
    }

    @pytest.fixture(params=sorted(ENTRY_POINTS))
    def call(self, request):
        return self.ENTRY_POINTS[request.param]

    def test_bad_shapes_and_types(self, call):
        boxes, scores = random_boxes(5), torch.rand(5)
        cases = [
            ((torch.rand(5, 3), scores, None, 0.5), ValueError, "boxes"),
            ((torch.rand(5), scores, None, 0.5), ValueError, "boxes"),
            ((boxes, torch.rand(4), None, 0.5), ValueError, "scores"),
            ((boxes, torch.rand(5, 1), None, 0.5), ValueError, "scores"),
            ((boxes.long(), scores.long(), None, 0.5), TypeError, "boxes"),
            ((boxes, scores.double(), None, 0.5), TypeError, "scores"),
            ((boxes, scores, None, 1.5), ValueError, "iou_threshold"),
            ((boxes, scores, None, -0.1), ValueError, "iou_threshold"),
            ((boxes, scores, None, float("nan")), ValueError, "iou_threshold"),
            ((boxes, scores, torch.zeros(4, dtype=torch.long), 0.5), ValueError, "idxs"),
            ((boxes, scores, torch.zeros(5), 0.5), TypeError, "idxs"),
            ((boxes, scores, torch.zeros(5, 1, dtype=torch.long), 0.5), ValueError, "idxs"),
            ((boxes, scores.to("meta"), None, 0.5), ValueError, "device"),
        ]
        for args, error, word in cases:
            with pytest.raises(error, match=word):
                call(*args)

    def test_threshold_type(self):
        with pytest.raises(TypeError, match="iou_threshold"):
            nms(random_boxes(3), torch.rand(3), "0.5")

    def test_compiled_kernel_checks(self):
        if _backend.extension() is None:
            pytest.skip("compiled extension not built")
        kernel = torch.ops.litesam._batched_nms_kernel
        with pytest.raises(ValueError, match="boxes"):
            kernel(torch.rand(5, 3), torch.rand(5), None, 0.5)
        with pytest.raises(TypeError, match="scores"):
            kernel(random_boxes(5), torch.rand(5).double(), None, 0.5)
        with pytest.raises(ValueError, match="iou_threshold"):
            kernel(random_boxes(5), torch.rand(5), None, 2.0)
        with pytest.raises(ValueError, match="idxs"):
            kernel(random_boxes(5), torch.rand(5), torch.zeros(3, dtype=torch.long), 0.5)


class TestNMSTorchLibrary:
    def test_opcheck(self):
        boxes, scores = random_boxes(40, max_size=300), distinct_scores(40)
        idxs = torch.randint(0, 3, (40,))
        torch.library.opcheck(torch.ops.litesam.nms.default, (boxes, scores, 0.5))
        torch.library.opcheck(torch.ops.litesam.batched_nms.default, (boxes, scores, idxs, 0.5))
        if _backend.extension() is not None:
            torch.library.opcheck(torch.ops.litesam._batched_nms_kernel.default, (boxes, scores, idxs, 0.5))
            torch.library.opcheck(torch.ops.litesam._batched_nms_kernel.default, (boxes, scores, None, 0.5))

    def test_compile_fullgraph(self):
        boxes, scores = random_boxes(64, max_size=300), distinct_scores(64)
        idxs = torch.randint(0, 4, (64,))

        def select(boxes, scores, idxs):
            keep = batched_nms(boxes * 1.0, scores, idxs, 0.5)
            return boxes[keep], nms(boxes, scores, 0.6)

        compiled = torch.compile(select, fullgraph=True)
        kept_boxes, kept = compiled(boxes, scores, idxs)
        assert torch.equal(kept_boxes, boxes[batched_nms(boxes, scores, idxs, 0.5)])
        assert torch.equal(kept, nms(boxes, scores, 0.6))


@pytest.mark.gpu
class TestNMSCuda:
    @pytest.mark.parametrize("backend", ["cuda", "triton"])
    def test_matches_torchvision_cuda(self, backend):
        for n in (1, 64, 1000, 4097, 20_000):
            boxes, scores = random_boxes(n, max_size=200).cuda(), distinct_scores(n).cuda()
            idxs = torch.randint(0, 80, (n,), device="cuda")
            assert torch.equal(run_nms(backend, boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
            assert torch.equal(run_batched(backend, boxes, scores, idxs, 0.5),
                               torchvision.ops.batched_nms(boxes, scores, idxs, 0.5))

    @pytest.mark.parametrize("backend", ["cuda", "triton"])
    def test_matches_cpu_kernel_with_ties_and_dtypes(self, backend):
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            boxes, scores = random_boxes(3000, max_size=300, dtype=dtype), torch.randint(0, 5, (3000,)).to(dtype)
            idxs = torch.randint(0, 7, (3000,))
            expected = run_batched("cpu", boxes, scores, idxs, 0.5)
            assert torch.equal(run_batched(backend, boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5).cpu(), expected)

    def test_100k_boxes(self):
        boxes, scores = random_boxes(100_000, image_size=4096, max_size=64).cuda(), distinct_scores(100_000).cuda()
        assert torch.equal(run_nms("cuda", boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
