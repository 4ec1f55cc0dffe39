"""Box NMS in Triton: the suppression bitmask (one program per 64 x 64 tile) and the greedy walk over it
(one program, N/64 serial steps). Same algorithm and arithmetic as ``csrc/cuda/nms_kernel.cu``; the op
layer (``ops/nms.py``) sorts the boxes into visit order and maps kept positions back to indices."""
import torch
import triton
import triton.language as tl

BOXES_PER_WORD = 64
GATHER_BLOCK_COLS = 256


@triton.jit
def _nms_mask_kernel(boxes_ptr, groups_ptr, col_end_ptr, threshold_ptr, mask_ptr, n, col_blocks,
                     HAS_GROUPS: tl.constexpr):
    row_block = tl.program_id(1)
    col_block = tl.program_id(0)
    lanes = tl.arange(0, 64)
    rows = row_block * 64 + lanes
    cols = col_block * 64 + lanes
    row_ok = rows < n
    col_ok = cols < n
    tile_ok = (col_block >= row_block) & (col_block < tl.load(col_end_ptr + row_block))

    rx1 = tl.load(boxes_ptr + rows * 4 + 0, mask=row_ok, other=0.0)
    ry1 = tl.load(boxes_ptr + rows * 4 + 1, mask=row_ok, other=0.0)
    rx2 = tl.load(boxes_ptr + rows * 4 + 2, mask=row_ok, other=0.0)
    ry2 = tl.load(boxes_ptr + rows * 4 + 3, mask=row_ok, other=0.0)
    cx1 = tl.load(boxes_ptr + cols * 4 + 0, mask=col_ok, other=0.0)
    cy1 = tl.load(boxes_ptr + cols * 4 + 1, mask=col_ok, other=0.0)
    cx2 = tl.load(boxes_ptr + cols * 4 + 2, mask=col_ok, other=0.0)
    cy2 = tl.load(boxes_ptr + cols * 4 + 3, mask=col_ok, other=0.0)
    row_area = (rx2 - rx1) * (ry2 - ry1)
    col_area = (cx2 - cx1) * (cy2 - cy1)

    left = tl.maximum(rx1[:, None], cx1[None, :])
    top = tl.maximum(ry1[:, None], cy1[None, :])
    right = tl.minimum(rx2[:, None], cx2[None, :])
    bottom = tl.minimum(ry2[:, None], cy2[None, :])
    width = right - left
    height = bottom - top
    inter = width * height
    iou = inter / ((row_area[:, None] + col_area[None, :]) - inter)
    threshold = tl.load(threshold_ptr)
    suppress = (width > 0) & (height > 0) & (iou.to(tl.float64) > threshold)
    suppress = suppress & (cols[None, :] > rows[:, None]) & row_ok[:, None] & col_ok[None, :]
    if HAS_GROUPS:
        row_groups = tl.load(groups_ptr + rows, mask=row_ok, other=0)
        col_groups = tl.load(groups_ptr + cols, mask=col_ok, other=0)
        suppress = suppress & (row_groups[:, None] == col_groups[None, :])
    one = tl.full([64], 1, tl.int64)
    bits = tl.where(suppress, (one << lanes.to(tl.int64))[None, :], 0)
    words = tl.sum(bits, axis=1)  # disjoint bits: the sum is their OR
    tl.store(mask_ptr + rows.to(tl.int64) * col_blocks + col_block, words, mask=row_ok & tile_ok)


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


def nms_keep_mask(boxes_sorted: torch.Tensor, groups_sorted, col_end: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy keep flags (bool, one per box) for boxes already in visit order.

    boxes_sorted: (N, 4) float32/float64 contiguous; groups_sorted: (N,) int64 ascending or None;
    col_end: (ceil(N/64),) int64, the column block each row block's groups end before."""
    n = boxes_sorted.shape[0]
    col_blocks = triton.cdiv(n, BOXES_PER_WORD)
    device = boxes_sorted.device
    mask = torch.empty(n * col_blocks, dtype=torch.int64, device=device)
    threshold = torch.tensor([iou_threshold], dtype=torch.float64, device=device)
    groups = groups_sorted if groups_sorted is not None else col_end  # any int64 pointer; unused
    _nms_mask_kernel[(col_blocks, col_blocks)](
        boxes_sorted, groups, col_end, threshold, mask, n, col_blocks,
        HAS_GROUPS=groups_sorted is not None, num_warps=4, enable_fp_fusion=False,
    )
    return greedy_keep_from_mask(mask, col_end, n)


def greedy_keep_from_mask(mask: torch.Tensor, col_end: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy keep flags (bool, N) from a suppression bitmask in visit order: int64 (N * ceil(N/64)),
    bit j of word [i, c] set when item i suppresses item 64c + j (only c >= i // 64 and c < col_end[i // 64]
    are read). Shared by box NMS and mask NMS."""
    col_blocks = triton.cdiv(n, BOXES_PER_WORD)
    removed = torch.zeros(col_blocks, dtype=torch.int64, device=mask.device)
    keep = torch.empty(n, dtype=torch.bool, device=mask.device)
    _nms_gather_kernel[(1,)](mask, col_end, removed, keep, n, col_blocks, BLOCK_COLS=GATHER_BLOCK_COLS, num_warps=4)
    return keep


# For the sm_90a AOT check in CI: (kernel, signature, constexprs, options).
AOT_KERNELS = [
    (_nms_mask_kernel,
     {"boxes_ptr": "*fp32", "groups_ptr": "*i64", "col_end_ptr": "*i64", "threshold_ptr": "*fp64",
      "mask_ptr": "*i64", "n": "i32", "col_blocks": "i32", "HAS_GROUPS": "constexpr"},
     {"HAS_GROUPS": True}, {"num_warps": 4, "enable_fp_fusion": False}),
    (_nms_mask_kernel,
     {"boxes_ptr": "*fp64", "groups_ptr": "*i64", "col_end_ptr": "*i64", "threshold_ptr": "*fp64",
      "mask_ptr": "*i64", "n": "i32", "col_blocks": "i32", "HAS_GROUPS": "constexpr"},
     {"HAS_GROUPS": False}, {"num_warps": 4, "enable_fp_fusion": False}),
    (_nms_gather_kernel,
     {"mask_ptr": "*i64", "col_end_ptr": "*i64", "removed_ptr": "*i64", "keep_ptr": "*i1", "n": "i32",
      "col_blocks": "i32", "BLOCK_COLS": "constexpr"},
     {"BLOCK_COLS": GATHER_BLOCK_COLS}, {"num_warps": 4}),
]
