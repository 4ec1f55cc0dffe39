"""Training targets from the teacher's masks of one view: AutoPPN heatmaps and boxes, decoder prompts.

Everything starts from the masks rendered on the decoder's low-res grid (``views.render_masks``: cell
coverage in [0, 1], 4 input pixels per cell); a mask is the cells with coverage >= 1/2. Per mask:
- box: its cells' extent in input pixels, XYXY with exclusive ends (what ``ppn_decode`` regresses);
- centre: the centroid of its cells, or, when the centroid falls outside the mask (rings, crescents), the
  centre of the mask's cell nearest to it, so a point prompt at the peak always lands on the object.
AutoPPN (CenterNet style, on the ``image_size / 16`` heatmap grid):
- heatmap target: the max over masks of a Gaussian at the mask's centre cell, sigma = (2r + 1) / 6 with r
  CenterNet's ``gaussian_radius`` of the box (in cells, min overlap 0.7); the centre cells are the positives;
- box target at the positives: the (left, top, right, bottom) distances from the cell centre to the box, in
  stride units (``AutoPPN``'s output convention); a cell that is the centre of several masks regresses the
  smallest (FCOS's rule);
- valid cells: those whose centre lies inside the rendered image (``ppn_decode``'s rule); the rest is padding.
Decoder prompts (fine-tuning, as SAM trains): ``slots`` masks per image, the first ``round(slots *
box_fraction)`` prompted by their box with Gaussian noise (std 10% of the side, at most 20 px at 1024^2),
the others by one positive point drawn uniformly from the mask's cells; when an image has fewer masks than
slots, masks repeat and the repeats carry no weight.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np
import torch

from litesam_kernels.train.views import MASK_STRIDE

PPN_STRIDE = 16  # LiteViT's output stride: input pixels per heatmap cell
MIN_OVERLAP = 0.7  # CenterNet's gaussian_radius setting
BOX_NOISE = 0.1  # SAM: box noise std as a fraction of the box side ...
MAX_BOX_NOISE_AT_1024 = 20.0  # ... at most 20 pixels of a 1024^2 input


def mask_geometry(coverage: torch.Tensor) -> Dict[str, torch.Tensor]:
    """From (N, G, G) coverage: the non-empty masks' ``cells`` (n, G, G) bool, ``boxes`` (n, 4) XYXY and
    ``centres`` (n, 2) (x, y) in input pixels, ``areas`` (n,) in cells, and ``index`` (n,) into the N masks."""
    cells = coverage >= 0.5
    index = torch.nonzero(cells.flatten(1).any(1)).flatten()
    cells = cells[index]
    n, grid = cells.shape[0], coverage.shape[-1]
    if n == 0:
        empty = torch.zeros(0, 4)
        return {"cells": cells, "boxes": empty, "centres": empty[:, :2], "areas": torch.zeros(0), "index": index}
    positions = torch.arange(grid, dtype=torch.float32)
    rows_any, cols_any = cells.any(2), cells.any(1)
    big = float(grid)
    x0 = torch.where(cols_any, positions, big).amin(1)
    x1 = torch.where(cols_any, positions, -1.0).amax(1) + 1
    y0 = torch.where(rows_any, positions, big).amin(1)
    y1 = torch.where(rows_any, positions, -1.0).amax(1) + 1
    boxes = torch.stack([x0, y0, x1, y1], 1) * MASK_STRIDE
    weights = cells.float()
    areas = weights.sum((1, 2))
    cy = (weights.sum(2) * positions).sum(1) / areas
    cx = (weights.sum(1) * positions).sum(1) / areas
    centres = _nearest_mask_cell(cells, cx, cy)
    return {"cells": cells, "boxes": boxes, "centres": (centres + 0.5) * MASK_STRIDE, "areas": areas, "index": index}


def _nearest_mask_cell(cells: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """(n, 2) cell coordinates (x, y): the centroid's cell if it is in the mask, else the nearest mask cell."""
    grid = cells.shape[-1]
    col, row = cx.round().long().clamp(0, grid - 1), cy.round().long().clamp(0, grid - 1)
    inside = cells[torch.arange(cells.shape[0]), row, col]
    centres = torch.stack([cx, cy], 1)
    for i in torch.nonzero(~inside).flatten().tolist():
        ys, xs = torch.nonzero(cells[i], as_tuple=True)
        nearest = ((xs - cx[i]) ** 2 + (ys - cy[i]) ** 2).argmin()
        centres[i] = torch.stack([xs[nearest], ys[nearest]]).float()
    return centres


def gaussian_radius(height: float, width: float, min_overlap: float = MIN_OVERLAP) -> float:
    """CenterNet's ``gaussian_radius`` (as in its code): the radius within which a box corner may move
    while the box keeps IoU >= ``min_overlap`` with the original, for a (height, width) box."""
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(max(b1 ** 2 - 4 * c1, 0.0))) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(max(b2 ** 2 - 16 * c2, 0.0))) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(max(b3 ** 2 - 4 * a3 * c3, 0.0))) / 2
    return min(r1, r2, r3)


def ppn_targets(geometry: Dict[str, torch.Tensor], input_size: Tuple[int, int], image_size: int
                ) -> Dict[str, torch.Tensor]:
    """AutoPPN targets on the (G, G) heatmap grid, G = image_size / 16: ``heatmap`` float, ``positive``
    bool, ``box`` (4, G, G) float distances in stride units (0 off the positives), ``valid`` bool."""
    grid = image_size // PPN_STRIDE
    h, w = input_size
    centres_of_cells = (torch.arange(grid, dtype=torch.float32) + 0.5) * PPN_STRIDE
    valid = (centres_of_cells < h)[:, None] & (centres_of_cells < w)[None, :]
    heatmap = torch.zeros(grid, grid)
    positive = torch.zeros(grid, grid, dtype=torch.bool)
    box = torch.zeros(4, grid, grid)
    boxes, centres = geometry["boxes"], geometry["centres"]
    if boxes.shape[0] == 0:
        return {"heatmap": heatmap, "positive": positive, "box": box, "valid": valid}
    cells = (centres / PPN_STRIDE).floor().long().clamp_(0, grid - 1)
    # Keep peaks inside the image: a centre in the last partial row/column belongs to the last valid cell.
    cells[:, 0] = cells[:, 0].clamp(max=max(int(valid[0].sum()) - 1, 0))
    cells[:, 1] = cells[:, 1].clamp(max=max(int(valid[:, 0].sum()) - 1, 0))
    sides = (boxes[:, 2:] - boxes[:, :2]) / PPN_STRIDE
    sigmas = torch.tensor([(2 * int(gaussian_radius(float(bh), float(bw))) + 1) / 6 for bw, bh in sides.tolist()])
    positions = torch.arange(grid, dtype=torch.float32)
    dx2 = (positions[None, :] - cells[:, 0, None].float()) ** 2
    dy2 = (positions[None, :] - cells[:, 1, None].float()) ** 2
    gaussians = torch.exp(-(dy2[:, :, None] + dx2[:, None, :]) / (2 * sigmas[:, None, None] ** 2))
    heatmap = gaussians.amax(0) * valid
    heatmap[cells[:, 1], cells[:, 0]] = 1.0
    positive[cells[:, 1], cells[:, 0]] = True
    cell_centres = (cells.float() + 0.5) * PPN_STRIDE
    distances = torch.cat([cell_centres - boxes[:, :2], boxes[:, 2:] - cell_centres], 1).clamp(min=0) / PPN_STRIDE
    order = torch.argsort(geometry["areas"], descending=True, stable=True)  # smaller masks written last win
    for i in order.tolist():
        box[:, cells[i, 1], cells[i, 0]] = distances[i]
    return {"heatmap": heatmap, "positive": positive, "box": box, "valid": valid}


def decoder_prompts(geometry: Dict[str, torch.Tensor], rng: np.random.Generator, slots: int, box_fraction: float,
                    input_size: Tuple[int, int], image_size: int) -> Dict[str, torch.Tensor]:
    """``slots`` prompted masks: ``mask_targets`` (slots, Gm, Gm) bool (box slots first), ``boxes``
    (Kb, 4) XYXY and ``points`` (Kp, 2) (x, y) in input pixels, ``slot_valid`` (slots,) bool."""
    cells = geometry["cells"]
    grid = cells.shape[-1]
    box_slots = int(round(slots * box_fraction))
    point_slots = slots - box_slots
    n = cells.shape[0]
    targets = torch.zeros(slots, grid, grid, dtype=torch.bool)
    boxes = torch.zeros(box_slots, 4)
    points = torch.zeros(point_slots, 2)
    slot_valid = torch.zeros(slots, dtype=torch.bool)
    if n == 0:
        return {"mask_targets": targets, "boxes": boxes, "points": points, "slot_valid": slot_valid}
    h, w = input_size
    max_noise = MAX_BOX_NOISE_AT_1024 * image_size / 1024
    for slot, mask in enumerate(_choose(rng, n, box_slots)):
        x0, y0, x1, y1 = geometry["boxes"][mask].tolist()
        side = np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0])
        noise = np.clip(rng.normal(0.0, 1.0, 4) * BOX_NOISE * side, -max_noise, max_noise)
        nx0, ny0, nx1, ny1 = np.array([x0, y0, x1, y1]) + noise
        nx0, nx1 = sorted((float(np.clip(nx0, 0, w)), float(np.clip(nx1, 0, w))))
        ny0, ny1 = sorted((float(np.clip(ny0, 0, h)), float(np.clip(ny1, 0, h))))
        boxes[slot] = torch.tensor([nx0, ny0, nx1, ny1])
        targets[slot] = cells[mask]
        slot_valid[slot] = slot < n
    for slot, mask in enumerate(_choose(rng, n, point_slots)):
        ys, xs = torch.nonzero(cells[mask], as_tuple=True)
        pick = int(rng.integers(0, xs.numel()))
        # The cell's centre in input pixels, as a pixel index (the prompt encoder adds 0.5).
        points[slot] = torch.tensor([xs[pick] * MASK_STRIDE + (MASK_STRIDE - 1) / 2,
                                     ys[pick] * MASK_STRIDE + (MASK_STRIDE - 1) / 2])
        targets[box_slots + slot] = cells[mask]
        slot_valid[box_slots + slot] = slot < n
    return {"mask_targets": targets, "boxes": boxes, "points": points, "slot_valid": slot_valid}


def _choose(rng: np.random.Generator, n: int, slots: int) -> np.ndarray:
    """``slots`` mask indices: a random permutation of the n masks, repeated as needed."""
    if slots == 0:
        return np.zeros(0, dtype=np.int64)
    return np.resize(rng.permutation(n), slots)
