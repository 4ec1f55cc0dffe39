"""The compiled kernels' paths: the logic the CUDA kernels share with the CPU kernels, and the CUDA paths.

CPU part (runs everywhere): the per-thread logic in csrc/common/*.h (the NMS walkers and block
resolution, the RLE change bits, transpose steps and run emission, the small-region unions and output
rule) is what the CPU kernels run, so they are driven here at the edges the device paths have (groups
that straddle, end on or fill 64-item blocks; 1 vs 2 threads, i.e. serial vs parallel walkers; 32-row
blocks; 4-column groups; dirty padding bits; bool bytes other than 0/1) against the pure references.

GPU part (`gpu` marker, skipped without a device): every CUDA path against the CPU kernel on the same
input, including the paths only the launch plans choose (global-memory NMS bitset, RLE launches split
over grid.x and bitmaps in chunks, small-region scratch in chunks), forced with
torch.ops.litesam._set_launch_limits_override. Sizes stay small enough for compute-sanitizer runs."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from litesam_kernels import _backend
from litesam_kernels.ops.bitmask import pack_masks
from litesam_kernels.ops.mask_nms import _mask_nms_reference, packed_mask_boxes
from litesam_kernels.ops.nms import _batched_nms_reference, _nms_reference
from litesam_kernels.ops.rle import _mask_to_rle_reference
from litesam_kernels.ops.small_regions import _connected_components_reference, _remove_small_regions_reference
from tests.helpers import random_boxes

pytestmark = pytest.mark.skipif(
    _backend.extension() is None or not hasattr(torch.ops.litesam, "_launch_plan"),
    reason="the compiled extension is not built",
)
K = torch.ops.litesam
LIMIT_NAMES = ("max_grid_x", "max_grid_y", "max_grid_z", "shared_optin_bytes", "scratch_budget_bytes")


# ------------------------------------------------------------------------------------------ inputs
def distinct_scores(n, dtype=torch.float32):
    return (torch.randperm(n).double() / max(n, 1)).to(dtype)


# Group layouts of batched NMS, as seen by the walkers once the visit order groups them.
GROUP_LAYOUTS = {
    "one": lambda n: torch.zeros(n, dtype=torch.long),
    "straddling": lambda n: torch.randint(0, 5, (n,)),           # boundaries anywhere inside blocks
    "block_aligned": lambda n: torch.randperm(n) // 128,         # every group exactly two blocks
    "singletons": lambda n: torch.randperm(n),                   # 64 groups start in every block
    "tiny": lambda n: torch.randperm(n) // 3,
    "huge_and_singletons": lambda n: torch.where(torch.rand(n) < 0.8, 0, torch.arange(1, n + 1)),
    "80_classes": lambda n: torch.randint(0, 80, (n,)),
}


def blob_masks(n, h, w, *, density=0.55, noise=0.3, seed=0):
    """Blob-like masks (low-res noise upsampled) with pixel noise: islands, holes, many runs."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, max(2, h // 6), max(2, w // 6), generator=g)
    field = F.interpolate(low, (h, w), mode="bilinear", align_corners=False)[:, 0]
    return field + noise * torch.rand(n, h, w, generator=g) > density


def rle_edge_masks(h, w):
    """Masks whose runs sit on the change bitmap's edges: first/last pixel, whole columns, a checkerboard."""
    masks = torch.zeros(6, h, w, dtype=torch.bool)
    masks[1] = True
    masks[2, 0, 0] = True
    masks[3, -1, -1] = True
    masks[4, :, ::2] = True
    masks[5] = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == 0
    return masks


def rle_of(counts_and_lengths):
    counts, lengths = (t.cpu() for t in counts_and_lengths)
    return counts.tolist(), lengths.tolist()


def dirty_padding(packed, width):
    """Packed masks with every padding bit of the last word set (a kernel must ignore them)."""
    used = width % 32
    if used == 0:
        return packed
    dirty = packed.clone()
    dirty[..., -1] |= torch.tensor(-(1 << used), dtype=torch.int32)  # bits used..31
    return dirty


@contextlib.contextmanager
def threads(count):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ============================================================================== CPU: shared logic
class TestSharedWalkOnCpu:
    @pytest.mark.parametrize("thread_count", [1, 2], ids=["serial_walkers", "parallel_walkers"])
    @pytest.mark.parametrize("layout", list(GROUP_LAYOUTS))
    def test_box_nms_walkers(self, layout, thread_count):
        n = 700
        boxes, scores = random_boxes(n, max_size=300), distinct_scores(n)
        idxs = GROUP_LAYOUTS[layout](n)
        with threads(thread_count):
            for threshold in (0.0, 0.5):
                got = K._batched_nms_kernel(boxes, scores, idxs, threshold)
                assert torch.equal(got, _batched_nms_reference(boxes, scores, idxs, threshold))

    @pytest.mark.parametrize("n", [1, 63, 64, 65, 128, 129])
    def test_box_nms_block_edges(self, n):
        boxes, scores = random_boxes(n, max_size=500), distinct_scores(n)
        assert torch.equal(K._batched_nms_kernel(boxes, scores, None, 0.3), _nms_reference(boxes, scores, 0.3))
        idxs = torch.arange(n) % 2
        assert torch.equal(K._batched_nms_kernel(boxes, scores, idxs, 0.3),
                           _batched_nms_reference(boxes, scores, idxs, 0.3))

    @pytest.mark.parametrize("thread_count", [1, 2])
    @pytest.mark.parametrize("layout", ["one", "straddling", "singletons", "huge_and_singletons"])
    def test_mask_nms_lazy_walk(self, layout, thread_count):
        n, h, w = 150, 24, 40
        masks = blob_masks(n, h, w, density=0.6, noise=0.05, seed=3)
        masks[7] = masks[3]  # exact duplicates: IoU 1
        packed = pack_masks(masks)
        scores, idxs = distinct_scores(n), GROUP_LAYOUTS[layout](n)
        with threads(thread_count):
            for threshold in (0.2, 0.6):
                got = K._mask_nms_kernel(packed, packed_mask_boxes(packed, w), scores, idxs, threshold)
                assert torch.equal(got, _mask_nms_reference(packed, scores, threshold, idxs, w))


class TestSharedRleOnCpu:
    @pytest.mark.parametrize("height", [1, 2, 31, 32, 33, 65])
    @pytest.mark.parametrize("width", [1, 3, 4, 5, 31, 32, 33, 64, 65, 100])
    def test_change_bits_and_runs(self, height, width):
        masks = torch.cat([blob_masks(3, height, width, seed=height * 1000 + width), rle_edge_masks(height, width)])
        expected = rle_of(_mask_to_rle_reference(masks))
        assert rle_of(K._mask_to_rle_kernel(masks, width)) == expected
        packed = pack_masks(masks)
        assert rle_of(K._mask_to_rle_kernel(packed, width)) == expected
        assert rle_of(K._mask_to_rle_kernel(dirty_padding(packed, width), width)) == expected

    def test_bool_bytes_other_than_one(self):
        values = torch.tensor([0, 1, 2, 128, 255], dtype=torch.uint8)
        raw = values[torch.randint(0, 5, (4, 9, 13))]
        masks = raw.view(torch.bool)
        assert rle_of(K._mask_to_rle_kernel(masks, 13)) == rle_of(_mask_to_rle_reference(raw != 0))


class TestSharedRegionsOnCpu:
    @pytest.mark.parametrize("shape", [(3, 1, 1), (2, 1, 37), (2, 29, 1), (4, 33, 47), (2, 64, 65)])
    def test_unions_and_output_rule(self, shape):
        masks = blob_masks(*shape, seed=sum(shape))
        assert torch.equal(K._connected_components_kernel(masks), _connected_components_reference(masks))
        for holes in (True, False):
            for thresh in (0.0, 5.0, 40.0):
                got = K._remove_small_regions_kernel(masks, thresh, holes)
                expected = _remove_small_regions_reference(masks, thresh, holes)
                assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


# ============================================================================== GPU: every CUDA path
@contextlib.contextmanager
def launch_limits(**changes):
    """Replace some of the device's launch limits in every CUDA launch inside the block."""
    limits = list(K._launch_limits(torch.cuda.current_device()))
    for name, value in changes.items():
        limits[LIMIT_NAMES.index(name)] = value
    K._set_launch_limits_override(limits)
    try:
        yield limits
    finally:
        K._set_launch_limits_override([])


def walk_plan(n, grouped, limits):
    keys = ("col_blocks", "walkers", "threads", "static_shared_bytes", "dynamic_shared_bytes", "global_removed",
            "scratch_words")
    return dict(zip(keys, K._launch_plan("nms_walk", [n, int(grouped)], limits)))


def rle_vector(masks, width):
    packed = masks.dtype == torch.int32
    alignment = masks.data_ptr() & -masks.data_ptr()
    return K._launch_plan("rle", [masks.shape[0], masks.shape[1], width, masks.shape[2], int(packed), min(alignment, 16)],
                          list(K._launch_limits(masks.device.index)))[0]


@pytest.mark.gpu
class TestCudaLaunchLimits:
    def test_limits_are_queried_from_the_device(self):
        limits = dict(zip(LIMIT_NAMES, K._launch_limits(torch.cuda.current_device())))
        assert limits["max_grid_x"] == 2**31 - 1 and limits["max_grid_y"] == limits["max_grid_z"] == 65535
        optin = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "shared_memory_per_block_optin", None)
        if optin is not None:
            assert limits["shared_optin_bytes"] == optin
        assert limits["scratch_budget_bytes"] == 2**30


@pytest.mark.gpu
class TestCudaBoxNms:
    @pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 4097])
    @pytest.mark.parametrize("layout", [None, "straddling", "block_aligned", "singletons", "huge_and_singletons",
                                        "80_classes"])
    def test_walk_matches_cpu_kernel(self, n, layout):
        boxes, scores = random_boxes(n, max_size=200), distinct_scores(n)
        idxs = None if layout is None else GROUP_LAYOUTS[layout](n)
        for threshold in (0.0, 0.5, 1.0):
            expected = K._batched_nms_kernel(boxes, scores, idxs, threshold)
            got = K._batched_nms_kernel(boxes.cuda(), scores.cuda(), None if idxs is None else idxs.cuda(), threshold)
            assert torch.equal(got.cpu(), expected)

    @pytest.mark.parametrize("layout", [None, "80_classes"])
    def test_20k_boxes_512_threads(self, layout):
        n = 20_000
        boxes, scores = random_boxes(n, max_size=200), distinct_scores(n)
        idxs = None if layout is None else GROUP_LAYOUTS[layout](n)
        assert walk_plan(n, idxs is not None, list(K._launch_limits(0)))["threads"] == 512
        expected = K._batched_nms_kernel(boxes, scores, idxs, 0.5)
        got = K._batched_nms_kernel(boxes.cuda(), scores.cuda(), None if idxs is None else idxs.cuda(), 0.5)
        assert torch.equal(got.cpu(), expected)

    @pytest.mark.parametrize("layout", [None, "straddling", "singletons"])
    def test_global_memory_bitset(self, layout):
        n = 4097  # 65 blocks
        boxes, scores = random_boxes(n, max_size=200), distinct_scores(n)
        idxs = None if layout is None else GROUP_LAYOUTS[layout](n)
        expected = K._batched_nms_kernel(boxes, scores, idxs, 0.5)
        static = walk_plan(1, False, list(K._launch_limits(0)))["static_shared_bytes"]
        with launch_limits(shared_optin_bytes=static + 8 * 10) as limits:
            assert walk_plan(n, idxs is not None, limits)["global_removed"] == 1
            got = K._batched_nms_kernel(boxes.cuda(), scores.cuda(), None if idxs is None else idxs.cuda(), 0.5)
        assert torch.equal(got.cpu(), expected)

    def test_dtypes_and_ties(self):
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            boxes, scores = random_boxes(3000, max_size=300, dtype=dtype), torch.randint(0, 5, (3000,)).to(dtype)
            idxs = torch.randint(0, 7, (3000,))
            expected = K._batched_nms_kernel(boxes, scores, idxs, 0.5)
            got = K._batched_nms_kernel(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5)
            assert torch.equal(got.cpu(), expected)

    def test_64k_boxes_match_torchvision(self):
        torchvision = pytest.importorskip("torchvision")
        n = 64_000
        boxes = random_boxes(n, image_size=1024, max_size=96).cuda()
        scores, classes = distinct_scores(n).cuda(), torch.randint(0, 80, (n,)).cuda()
        assert torch.equal(K._batched_nms_kernel(boxes, scores, None, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
        assert torch.equal(K._batched_nms_kernel(boxes, scores, classes, 0.5),
                           torchvision.ops.batched_nms(boxes, scores, classes, 0.5))


@pytest.mark.gpu
class TestCudaMaskNms:
    def inputs(self, n=400, h=48, w=70):
        masks = blob_masks(n, h, w, density=0.6, noise=0.05, seed=11)
        masks[5] = masks[2]
        return pack_masks(masks), distinct_scores(n), w

    @pytest.mark.parametrize("layout", [None, "straddling", "singletons", "huge_and_singletons"])
    def test_matches_cpu_kernel(self, layout):
        packed, scores, w = self.inputs()
        idxs = None if layout is None else GROUP_LAYOUTS[layout](packed.shape[0])
        boxes = packed_mask_boxes(packed, w)
        for threshold in (0.2, 0.7):
            expected = K._mask_nms_kernel(packed, boxes, scores, idxs, threshold)
            got = K._mask_nms_kernel(packed.cuda(), boxes.cuda(), scores.cuda(),
                                     None if idxs is None else idxs.cuda(), threshold)
            assert torch.equal(got.cpu(), expected)

    def test_caller_boxes_and_global_bitset(self):
        packed, scores, w = self.inputs()
        idxs = GROUP_LAYOUTS["straddling"](packed.shape[0])
        tight = packed_mask_boxes(packed, w)
        loose = (tight + torch.tensor([-3, -2, 5, 4])).clamp(min=0)  # enclosing boxes from a caller
        expected = K._mask_nms_kernel(packed, tight, scores, idxs, 0.5)
        static = walk_plan(1, False, list(K._launch_limits(0)))["static_shared_bytes"]
        with launch_limits(shared_optin_bytes=static + 8):
            got = K._mask_nms_kernel(packed.cuda(), loose.cuda(), scores.cuda(), idxs.cuda(), 0.5)
        assert torch.equal(got.cpu(), expected)


@pytest.mark.gpu
class TestCudaRle:
    @pytest.mark.parametrize("width,vector", [(1024, 16), (1000, 8), (1004, 4), (301, 1)])
    @pytest.mark.parametrize("height", [1, 31, 33, 100])
    def test_bool_vector_paths(self, height, width, vector):
        masks = torch.cat([blob_masks(3, height, width, seed=width), rle_edge_masks(height, width)])
        expected = rle_of(K._mask_to_rle_kernel(masks, width))
        device_masks = masks.cuda()
        assert rle_vector(device_masks, width) == vector
        assert rle_of(K._mask_to_rle_kernel(device_masks, width)) == expected

    @pytest.mark.parametrize("width,vector", [(1024, 4), (301, 2), (65, 1)])
    @pytest.mark.parametrize("height", [1, 32, 33, 100])
    def test_packed_vector_paths(self, height, width, vector):
        masks = torch.cat([blob_masks(3, height, width, seed=width), rle_edge_masks(height, width)])
        expected = rle_of(K._mask_to_rle_kernel(masks, width))
        packed = dirty_padding(pack_masks(masks), width).cuda()
        assert rle_vector(packed, width) == vector
        assert rle_of(K._mask_to_rle_kernel(packed, width)) == expected

    def test_misaligned_rows_take_the_narrow_path(self):
        masks = blob_masks(5, 33, 1024, seed=1)  # rows of 1024 bytes, but the base one byte off
        bools = torch.cat([torch.zeros(1, dtype=torch.bool), masks.flatten()]).cuda()[1:].view(5, 33, 1024)
        assert rle_vector(bools, 1024) == 1
        assert rle_of(K._mask_to_rle_kernel(bools, 1024)) == rle_of(K._mask_to_rle_kernel(masks, 1024))
        packed = pack_masks(masks)
        words = torch.cat([torch.zeros(1, dtype=torch.int32), packed.flatten()]).cuda()[1:].view(packed.shape)
        assert rle_vector(words, 1024) == 1
        assert rle_of(K._mask_to_rle_kernel(words, 1024)) == rle_of(K._mask_to_rle_kernel(masks, 1024))

    def test_more_than_65535_masks(self):
        masks = torch.rand(70_000, 3, 5) > 0.5
        expected = rle_of(K._mask_to_rle_kernel(masks, 5))
        assert rle_of(K._mask_to_rle_kernel(masks.cuda(), 5)) == expected
        assert rle_of(K._mask_to_rle_kernel(pack_masks(masks).cuda(), 5)) == expected

    @pytest.mark.parametrize("packed", [False, True])
    def test_split_launches_and_chunked_bitmaps(self, packed):
        masks = torch.cat([blob_masks(9, 40, 600, seed=2), rle_edge_masks(40, 600)])
        expected = rle_of(K._mask_to_rle_kernel(masks, 600))
        data = (pack_masks(masks) if packed else masks).cuda()
        with launch_limits(max_grid_x=3):  # pass 1 and pass 2 in many launches
            assert rle_of(K._mask_to_rle_kernel(data, 600)) == expected
        with launch_limits(scratch_budget_bytes=1):  # one mask's bitmap per chunk, counted first
            assert rle_of(K._mask_to_rle_kernel(data, 600)) == expected
        with launch_limits(scratch_budget_bytes=3 * 2 * 600 * 4, max_grid_x=4):
            assert rle_of(K._mask_to_rle_kernel(data, 600)) == expected

    def test_bool_bytes_other_than_one(self):
        raw = torch.tensor([0, 1, 2, 128, 255], dtype=torch.uint8)[torch.randint(0, 5, (4, 40, 64))]
        assert rle_of(K._mask_to_rle_kernel(raw.cuda().view(torch.bool), 64)) == rle_of(_mask_to_rle_reference(raw != 0))


@pytest.mark.gpu
class TestCudaSmallRegions:
    @pytest.mark.parametrize("shape", [(3, 1, 1), (2, 1, 70), (2, 33, 1), (7, 37, 45), (3, 64, 65), (2, 200, 301)])
    def test_matches_cpu_kernel(self, shape):
        masks = blob_masks(*shape, seed=sum(shape))
        assert torch.equal(K._connected_components_kernel(masks.cuda()).cpu(), K._connected_components_kernel(masks))
        for holes in (True, False):
            for thresh in (0.0, 5.0, 100.0):
                expected = K._remove_small_regions_kernel(masks, thresh, holes)
                got = K._remove_small_regions_kernel(masks.cuda(), thresh, holes)
                assert torch.equal(got[0].cpu(), expected[0]) and torch.equal(got[1].cpu(), expected[1])

    def test_big_background_component_holes(self):
        # One background component of ~all pixels: the warp-aggregated area count must be exact.
        masks = torch.zeros(2, 300, 517, dtype=torch.bool)
        masks[:, 100:140, 200:260] = True
        masks[:, 120, 230] = False  # a one-pixel hole
        expected = K._remove_small_regions_kernel(masks, 10.0, True)
        got = K._remove_small_regions_kernel(masks.cuda(), 10.0, True)
        assert torch.equal(got[0].cpu(), expected[0]) and got[1].tolist() == [True, True]

    @pytest.mark.parametrize("changes", [{"scratch_budget_bytes": 1}, {"max_grid_z": 2},
                                         {"scratch_budget_bytes": 3 * 4 * 19 * 23 * 8}])
    def test_chunked_scratch(self, changes):
        masks = blob_masks(7, 37, 45, seed=5)
        expected_ids = K._connected_components_kernel(masks)
        expected = {holes: K._remove_small_regions_kernel(masks, 20.0, holes) for holes in (True, False)}
        with launch_limits(**changes):
            assert torch.equal(K._connected_components_kernel(masks.cuda()).cpu(), expected_ids)
            for holes in (True, False):
                got = K._remove_small_regions_kernel(masks.cuda(), 20.0, holes)
                assert torch.equal(got[0].cpu(), expected[holes][0]) and torch.equal(got[1].cpu(), expected[holes][1])
