"""Launch plans of the CUDA kernels (csrc/common/launch_plans.h), checked on CPU at their boundaries.

Every grid dimension, chunk, shared-memory size and scratch size of the CUDA kernels comes from one of
these plans, computed from the sizes and the device limits; the CUDA code launches exactly what the plan
says. So the limits that no CPU test could otherwise reach (N > 65535 masks, a bitset above the opt-in
shared memory, a 99 KB device, 40 GB of scratch) are tested here without a GPU."""
import pytest
import torch

from litesam_kernels import _backend

pytestmark = pytest.mark.skipif(
    _backend.extension() is None or not hasattr(torch.ops.litesam, "_launch_plan"),
    reason="the compiled extension (with its launch plans) is not built",
)

GIB = 2**30
MAX_X = 2**31 - 1
# [max_grid_x, max_grid_y, max_grid_z, shared_optin_bytes, scratch_budget_bytes]
HOPPER = [MAX_X, 65535, 65535, 227 * 1024, GIB]   # H100/H200: cudaDevAttrMaxSharedMemoryPerBlockOptin
A100 = [MAX_X, 65535, 65535, 163 * 1024, GIB]
AMPERE_ADA = [MAX_X, 65535, 65535, 99 * 1024, GIB]  # sm_86 / sm_89

TILES = ("grid_x", "grid_y", "area_blocks")
WALK = ("col_blocks", "walkers", "threads", "static_shared_bytes", "dynamic_shared_bytes", "global_removed",
        "scratch_words")
RLE = ("vector", "strip_columns", "strips", "y_blocks", "pass1_masks_per_launch", "chunk_masks", "chunks",
       "pass2_masks_per_launch", "bitmap_bytes")
REGIONS = ("chunk_masks", "chunks", "grid_x", "grid_y", "scratch_bytes")
FIELDS = {"pair_tiles": TILES, "nms_walk": WALK, "rle": RLE, "small_regions": REGIONS}


def plan(kernel, sizes, limits=HOPPER):
    values = torch.ops.litesam._launch_plan(kernel, sizes, limits)
    assert len(values) == len(FIELDS[kernel])
    return dict(zip(FIELDS[kernel], values))


def with_limit(limits, index, value):
    limits = list(limits)
    limits[index] = value
    return limits


class TestPairTiles:
    def test_grid_of_64x64_tiles(self):
        assert plan("pair_tiles", [1, 1]) == {"grid_x": 1, "grid_y": 1, "area_blocks": 1}
        assert plan("pair_tiles", [65, 130]) == {"grid_x": 3, "grid_y": 2, "area_blocks": 130}
        assert plan("pair_tiles", [64_000, 64_000])["grid_y"] == 1000

    def test_grid_y_boundary(self):
        largest = 65535 * 64
        assert plan("pair_tiles", [largest, largest])["grid_y"] == 65535
        with pytest.raises(ValueError, match="items per side"):
            plan("pair_tiles", [largest + 1, 10])
        with pytest.raises(ValueError, match="items per side"):
            plan("pair_tiles", [10, 64 * 100 + 1], with_limit(HOPPER, 0, 100))

    def test_area_kernel_grid(self):
        with pytest.raises(ValueError, match="masks"):
            plan("pair_tiles", [1000, 10], with_limit(HOPPER, 0, 999))


class TestNmsWalk:
    def test_one_walker_without_groups_one_per_block_with(self):
        assert plan("nms_walk", [64_000, 0])["walkers"] == 1
        walk = plan("nms_walk", [64_000, 1])
        assert walk["walkers"] == walk["col_blocks"] == 1000

    @pytest.mark.parametrize("n,threads", [(1, 128), (64 * 16, 128), (64 * 16 + 1, 256), (64 * 32, 256),
                                           (64 * 32 + 1, 512), (64_000, 512), (10**6, 512)])
    def test_threads(self, n, threads):
        walk = plan("nms_walk", [n, 0])
        assert walk["threads"] == threads and walk["threads"] % 64 == 0  # threads 0..63 stage a block

    def test_64k_boxes_use_8_kb_of_shared_memory(self):
        walk = plan("nms_walk", [64_000, 1])
        assert walk["dynamic_shared_bytes"] == 8000 and not walk["global_removed"]
        # The static part is the NmsWalkShared struct: double-buffered diagonal, starts, kept rows.
        assert 1024 < walk["static_shared_bytes"] < 4096

    @pytest.mark.parametrize("limits", [HOPPER, A100, AMPERE_ADA], ids=["227KB", "163KB", "99KB"])
    def test_bitset_falls_back_to_global_memory_above_the_opt_in_limit(self, limits):
        static = plan("nms_walk", [1, 0], limits)["static_shared_bytes"]
        most_blocks = (limits[3] - static) // 8  # the largest bitset that fits next to the static part
        fits = plan("nms_walk", [most_blocks * 64, 1], limits)
        assert not fits["global_removed"] and fits["dynamic_shared_bytes"] == most_blocks * 8
        assert static + fits["dynamic_shared_bytes"] <= limits[3]
        above = plan("nms_walk", [most_blocks * 64 + 1, 1], limits)
        assert above["global_removed"] == 1 and above["dynamic_shared_bytes"] == 0
        assert above["scratch_words"] == most_blocks + 1

    def test_99kb_device_holds_fewer_boxes_in_shared_memory_than_hopper(self):
        n = 1_000_000  # 15625 words: 125 KB
        assert plan("nms_walk", [n, 0], HOPPER)["global_removed"] == 0
        assert plan("nms_walk", [n, 0], AMPERE_ADA)["global_removed"] == 1

    def test_rejects(self):
        with pytest.raises(ValueError, match="n must be >= 1"):
            plan("nms_walk", [0, 0])
        with pytest.raises(ValueError, match="shared memory per block"):
            plan("nms_walk", [10, 0], with_limit(HOPPER, 3, 1000))  # below the static part
        with pytest.raises(ValueError, match="items"):
            plan("nms_walk", [64 * 11, 1], with_limit(HOPPER, 0, 10))  # more walkers than grid.x
        with pytest.raises(ValueError, match="items"):
            plan("nms_walk", [2**31, 0])  # row offsets t * col_blocks must stay int32


def rle_plan(n, height, width, packed, alignment=256, limits=HOPPER):
    row_len = -(-width // 32) if packed else width
    return plan("rle", [n, height, width, row_len, int(packed), alignment], limits)


class TestRle:
    def test_more_than_65535_masks_are_one_launch_of_a_1d_grid(self):
        rle = rle_plan(70_000, 256, 256, packed=True)
        assert rle["pass1_masks_per_launch"] == 70_000 and rle["pass2_masks_per_launch"] == 70_000
        assert rle["chunks"] == 1
        rle = rle_plan(1_000_000, 64, 64, packed=False)
        assert rle["pass1_masks_per_launch"] == 1_000_000 and rle["strips"] == 1
        # Pass 2 indexes a launch's columns (and its last block's idle threads) in int32.
        rle = rle_plan(100_000, 4, 65536, packed=True)
        assert rle["pass2_masks_per_launch"] == (2**31 - 1 - 256) // 65536 < 100_000

    @pytest.mark.parametrize("width,alignment,vector", [(1024, 256, 16), (1000, 256, 8), (1004, 256, 4),
                                                        (301, 256, 1), (1024, 8, 8), (1024, 4, 4), (1024, 1, 1),
                                                        (2, 256, 1)])
    def test_bool_vector_width(self, width, alignment, vector):
        rle = rle_plan(3, 40, width, packed=False, alignment=alignment)
        assert rle["vector"] == vector and rle["strip_columns"] == 32 * vector
        assert rle["strips"] == -(-width // (32 * vector))

    @pytest.mark.parametrize("width,alignment,vector", [(1024, 256, 4), (1000, 256, 4), (301, 256, 2),
                                                        (65, 256, 1), (33, 256, 2), (1024, 8, 2), (1024, 4, 1)])
    def test_packed_vector_width(self, width, alignment, vector):
        rle = rle_plan(3, 40, width, packed=True, alignment=alignment)
        assert rle["vector"] == vector
        # A strip never reads past the row: its words end at or before row_len.
        row_len = -(-width // 32)
        assert rle["strips"] * vector <= row_len and row_len % vector == 0

    def test_y_blocks(self):
        assert [rle_plan(1, h, 10, packed=True)["y_blocks"] for h in (1, 31, 32, 33, 64, 65)] == [1, 1, 1, 2, 2, 3]

    def test_grid_x_limit_splits_launches_over_whole_masks(self):
        limits = with_limit(HOPPER, 0, 7)
        rle = rle_plan(20, 64, 1024, packed=False, limits=limits)  # 2 strips of 512 columns per mask
        assert rle["strips"] == 2 and rle["pass1_masks_per_launch"] == 3
        assert rle["pass2_masks_per_launch"] == 1  # 7 * 256 columns per launch hold one mask of 1024
        with pytest.raises(ValueError, match="thread blocks"):
            rle_plan(1, 64, 64 * 32, packed=True, limits=with_limit(HOPPER, 0, 15))  # 16 strips > grid

    def test_bitmap_chunks_fit_the_scratch_budget(self):
        # 1500 masks of 1500 x 2250: one bitmap word per column per 32 rows, 423 KB per mask.
        rle = rle_plan(1500, 1500, 2250, packed=False)
        assert rle["y_blocks"] == 47 and rle["chunks"] == 1 and rle["bitmap_bytes"] == 1500 * 47 * 2250 * 4
        budget = 64 * 2**20
        rle = rle_plan(1500, 1500, 2250, packed=True, limits=with_limit(HOPPER, 4, budget))
        assert rle["chunk_masks"] == budget // (47 * 2250 * 4) and rle["bitmap_bytes"] <= budget
        assert rle["chunks"] == -(-1500 // rle["chunk_masks"])
        # A budget below one mask still processes one mask per chunk.
        rle = rle_plan(5, 64, 64, packed=True, limits=with_limit(HOPPER, 4, 1))
        assert rle["chunk_masks"] == 1 and rle["chunks"] == 5

    def test_rejects(self):
        with pytest.raises(ValueError, match="pixels per side"):
            rle_plan(1, 2**31, 4, packed=True)
        with pytest.raises(ValueError, match="row_len"):
            plan("rle", [1, 4, 64, 3, 1, 256])
        with pytest.raises(ValueError, match="sizes must be >= 1"):
            rle_plan(0, 4, 4, packed=True)
        with pytest.raises(ValueError, match="wider than"):  # 4 strips fit grid.x, 2048 columns not 7 * 256
            rle_plan(1, 4, 2048, packed=False, limits=with_limit(HOPPER, 0, 7))


class TestSmallRegions:
    def test_1500_masks_of_1500x2250_fit_the_budget_in_chunks(self):
        # Was 40 GB of parent + area scratch at once; now chunks of the 1 GiB budget.
        regions = plan("small_regions", [1500, 1500, 2250])
        bytes_per_mask = 4 * 750 * 1125 * 8  # codes * (parent + area) int32
        assert regions["chunk_masks"] == GIB // bytes_per_mask == 39
        assert regions["chunks"] == 39 and regions["scratch_bytes"] == 39 * bytes_per_mask <= GIB
        assert (regions["grid_x"], regions["grid_y"]) == (71, 188)

    def test_chunk_bounds(self):
        assert plan("small_regions", [3, 16, 16])["chunk_masks"] == 3
        assert plan("small_regions", [10, 16, 16], with_limit(HOPPER, 4, 1))["chunk_masks"] == 1
        assert plan("small_regions", [10, 16, 16], with_limit(HOPPER, 2, 4)) == {
            "chunk_masks": 4, "chunks": 3, "grid_x": 1, "grid_y": 2, "scratch_bytes": 4 * 256 * 8}

    def test_rejects_masks_taller_than_the_grid(self):
        assert plan("small_regions", [1, 65535 * 8, 1])["grid_y"] == 65535
        with pytest.raises(ValueError, match="exceed the grid"):
            plan("small_regions", [1, 65535 * 8 + 1, 1])


class TestPlanInputs:
    def test_bad_limits_and_names(self):
        with pytest.raises(ValueError, match="limits must be"):
            plan("nms_walk", [10, 0], [1, 2, 3])
        with pytest.raises(ValueError, match=">= 1"):
            plan("nms_walk", [10, 0], with_limit(HOPPER, 1, 0))
        with pytest.raises(ValueError, match="unknown launch plan"):
            torch.ops.litesam._launch_plan("nms", [1], HOPPER)
        with pytest.raises(ValueError, match="sizes of the 'rle' plan"):
            plan("rle", [1, 2])

    def test_override_round_trip(self):
        # The override replaces the device limits in every CUDA launch (the gpu tests force paths with it).
        forced = [100, 3, 2, 4096, 12345]
        torch.ops.litesam._set_launch_limits_override(forced)
        try:
            assert list(torch.ops.litesam._launch_limits(0)) == forced
        finally:
            torch.ops.litesam._set_launch_limits_override([])
        with pytest.raises(ValueError, match="limits must be"):
            torch.ops.litesam._set_launch_limits_override([1, 2])
