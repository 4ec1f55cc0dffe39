"""Box NMS in Triton: the suppression bitmask (one program per 64 x 64 tile of the upper triangle) and the
greedy walk over it (one program, N/64 serial steps). Same algorithm and arithmetic as
``csrc/cuda/nms_kernel.cu``; the op layer (``ops/nms.py``) sorts the boxes into visit order and maps kept
positions back to indices.

Only tiles that can hold a suppression are launched: the grid is the upper triangle of row block <= column
block (row-major, the tile found from the program id in closed form), and a tile past its row block's group
end (``col_end``, batched NMS) returns before loading a box. Within a tile the 64 columns are processed
``BLOCK_COLS`` at a time, which bounds the live registers (float64 boxes included) and leaves the choice of
tile shape to the launch configurations; suppression bits accumulate per lane and are summed into the 64
words once (disjoint bits: the sum is their OR), not per step.
"""
import torch
import triton
import triton.language as tl

from litesam_kernels.triton import _mask_common as common
from litesam_kernels.triton._configs import LaunchConfig, LaunchConfigs
from litesam_kernels.triton._constants import device_constants

BOXES_PER_WORD = 64
MAX_TILES = 2**31 - 1  # one program per upper-triangle tile on grid axis 0

# At most 8 pairs per thread and step: float64 boxes spill at 16 (checked in the sm_90a AOT report).
MASK_CONFIGS = LaunchConfigs("nms.mask", [
    LaunchConfig({"BLOCK_COLS": 32}, num_warps=8),  # default: fewer interpreter steps than 16 columns
    LaunchConfig({"BLOCK_COLS": 16}, num_warps=4),
    LaunchConfig({"BLOCK_COLS": 8}, num_warps=4),
])
GATHER_CONFIGS = LaunchConfigs("nms.gather", [
    LaunchConfig({"BLOCK_COLS": 256}, num_warps=4),
    LaunchConfig({"BLOCK_COLS": 512}, num_warps=8),
    LaunchConfig({"BLOCK_COLS": 1024}, num_warps=16),
])


@triton.jit
def _nms_mask_kernel(boxes_ptr, groups_ptr, col_end_ptr, threshold_ptr, mask_ptr, n, col_blocks,
                     HAS_GROUPS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    row_block, col_block = common.upper_triangle_tile(tl.program_id(0), col_blocks)
    if col_block >= tl.load(col_end_ptr + row_block):
        return  # no group of this row block reaches that far: nothing to suppress, no word is read

    rows = row_block * 64 + tl.arange(0, 64)
    row_ok = rows < n
    rx1, ry1, rx2, ry2 = common.load_boxes(boxes_ptr, rows, row_ok)
    row_area = (rx2 - rx1) * (ry2 - ry1)
    threshold = tl.load(threshold_ptr)
    if HAS_GROUPS:
        row_groups = tl.load(groups_ptr + rows, mask=row_ok, other=0)
    # Bits accumulate per lane (disjoint across lanes and steps); one reduction makes the 64 words.
    words = tl.zeros([64, BLOCK_COLS], dtype=tl.int64)
    for sub in range(0, 64, BLOCK_COLS):
        lanes = sub + tl.arange(0, BLOCK_COLS)
        cols = col_block * 64 + lanes
        col_ok = cols < n
        cx1, cy1, cx2, cy2 = common.load_boxes(boxes_ptr, cols, col_ok)
        col_area = (cx2 - cx1) * (cy2 - cy1)
        width = tl.minimum(rx2[:, None], cx2[None, :]) - tl.maximum(rx1[:, None], cx1[None, :])
        height = tl.minimum(ry2[:, None], cy2[None, :]) - tl.maximum(ry1[:, None], cy1[None, :])
        inter = width * height
        union = (row_area[:, None] + col_area[None, :]) - inter
        # div_rn: Triton's plain fp32 `/` may lower to an approximate division; the CPU and CUDA kernels and
        # the reference divide with IEEE rounding, and one ulp decides pairs at the threshold (fp64 `/` is exact).
        if inter.dtype == tl.float32:
            iou = tl.math.div_rn(inter, union)
        else:
            iou = inter / union
        suppress = (width > 0) & (height > 0) & (iou.to(tl.float64) > threshold)
        suppress = suppress & (cols[None, :] > rows[:, None]) & row_ok[:, None] & col_ok[None, :]
        if HAS_GROUPS:
            col_groups = tl.load(groups_ptr + cols, mask=col_ok, other=0)
            suppress = suppress & (row_groups[:, None] == col_groups[None, :])
        words = words | tl.where(suppress, (tl.full([BLOCK_COLS], 1, tl.int64) << lanes.to(tl.int64))[None, :], 0)
    tl.store(mask_ptr + rows.to(tl.int64) * col_blocks + col_block, tl.sum(words, axis=1), mask=row_ok)


@triton.jit
def _nms_gather_kernel(mask_ptr, col_end_ptr, removed_ptr, keep_ptr, n, col_blocks, BLOCK_COLS: tl.constexpr):
    lanes = tl.arange(0, 64)
    one = tl.full([], 1, tl.int64)
    for r in range(0, col_blocks):
        row_start = r * 64
        suppressed = tl.load(removed_ptr + r)
        kept = suppressed * 0
        for t in tl.static_range(64):
            row = row_start + t
            in_range = row < n
            word = tl.load(mask_ptr + row.to(tl.int64) * col_blocks + r, mask=in_range, other=0)
            take = in_range & (((suppressed >> t) & 1) == 0)
            kept = tl.where(take, kept | (one << t), kept)
            suppressed = tl.where(take, suppressed | word, suppressed)
        rows = row_start + lanes
        tl.store(keep_ptr + rows, ((kept >> lanes.to(tl.int64)) & 1) != 0, mask=rows < n)
        end = tl.load(col_end_ptr + r)
        for col_start in range(r + 1, end, BLOCK_COLS):
            cols = col_start + tl.arange(0, BLOCK_COLS)
            col_ok = cols < end
            acc = tl.load(removed_ptr + cols, mask=col_ok, other=0)
            for t in tl.static_range(64):
                row_kept = ((kept >> t) & 1) != 0
                acc = acc | tl.load(mask_ptr + (row_start + t).to(tl.int64) * col_blocks + cols,
                                    mask=col_ok & row_kept, other=0)
            tl.store(removed_ptr + cols, acc, mask=col_ok)
        tl.debug_barrier()  # the next step reads words other threads just wrote


def upper_triangle_tiles(col_blocks: int) -> int:
    """Programs of the suppression-mask kernel: tiles with row block <= column block."""
    return col_blocks * (col_blocks + 1) // 2


def nms_keep_mask(boxes_sorted: torch.Tensor, groups_sorted, col_end: torch.Tensor,
                  iou_threshold: float) -> torch.Tensor:
    """Greedy keep flags (bool, one per box) for boxes already in visit order.

    boxes_sorted: (N, 4) float32/float64 contiguous; groups_sorted: (N,) int64 ascending or None;
    col_end: (ceil(N/64),) int64, the column block each row block's groups end before."""
    n = boxes_sorted.shape[0]
    col_blocks = triton.cdiv(n, BOXES_PER_WORD)
    tiles = upper_triangle_tiles(col_blocks)
    if tiles > MAX_TILES:
        raise ValueError(f"nms on the triton backend handles at most {64 * 65535} boxes, got {n}")
    device = boxes_sorted.device
    # Every word a tile can write is written (zeros included); the walk reads only those.
    mask = torch.empty(n * col_blocks, dtype=torch.int64, device=device)
    threshold = device_constants((iou_threshold,), torch.float64, device)
    groups = groups_sorted if groups_sorted is not None else col_end  # any int64 pointer; unused

    def run(config):
        _nms_mask_kernel[(tiles,)](boxes_sorted, groups, col_end, threshold, mask, n, col_blocks,
                                   HAS_GROUPS=groups_sorted is not None, enable_fp_fusion=False, **config.kwargs())

    MASK_CONFIGS.launch((boxes_sorted.dtype, groups_sorted is not None, col_blocks), run)
    return greedy_keep_from_mask(mask, col_end, n)


def greedy_keep_from_mask(mask: torch.Tensor, col_end: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy keep flags (bool, N) from a suppression bitmask in visit order: int64 (N * ceil(N/64)),
    bit j of word [i, c] set when item i suppresses item 64c + j (only c >= i // 64 and c < col_end[i // 64]
    are read). Shared by box NMS and mask NMS."""
    col_blocks = triton.cdiv(n, BOXES_PER_WORD)
    removed = torch.empty(col_blocks, dtype=torch.int64, device=mask.device)
    keep = torch.empty(n, dtype=torch.bool, device=mask.device)

    def run(config):
        _nms_gather_kernel[(1,)](mask, col_end, removed, keep, n, col_blocks, **config.kwargs())

    GATHER_CONFIGS.launch(col_blocks, run, reset=removed.zero_)
    return keep


_MASK_SIGNATURE = {"boxes_ptr": "*fp32", "groups_ptr": "*i64", "col_end_ptr": "*i64", "threshold_ptr": "*fp64",
                   "mask_ptr": "*i64", "n": "i32", "col_blocks": "i32", "HAS_GROUPS": "constexpr",
                   "BLOCK_COLS": "constexpr"}
# For the sm_90a AOT check in CI: (kernel, signature, constexprs, options), every launch configuration.
AOT_KERNELS = [
    entry
    for boxes, has_groups in (("*fp32", True), ("*fp32", False), ("*fp64", True), ("*fp64", False))
    for entry in MASK_CONFIGS.aot_entries(_nms_mask_kernel, dict(_MASK_SIGNATURE, boxes_ptr=boxes),
                                          {"HAS_GROUPS": has_groups}, {"enable_fp_fusion": False})
] + GATHER_CONFIGS.aot_entries(
    _nms_gather_kernel,
    {"mask_ptr": "*i64", "col_end_ptr": "*i64", "removed_ptr": "*i64", "keep_ptr": "*i1", "n": "i32",
     "col_blocks": "i32", "BLOCK_COLS": "constexpr"},
    {},
)
