"""The training losses, each returned **per image** (shape (B,)) so that the batch loss is a plain mean over
images: the same number whether a global batch runs in one process or is split over torchrun ranks (DDP
averages the ranks' means) or over accumulation steps.

- distillation: MSE between the student's and the teacher's image embeddings (MobileSAM);
- AutoPPN (CenterNet / DETR style): the penalty-reduced focal loss on the heatmap (alpha 2, beta 4, summed
  over the valid cells and divided by the image's number of positives), and at the positives an L1 loss on
  the (l, t, r, b) distances in units of the image side plus a GIoU loss on the boxes they describe;
- masks (SAM): sigmoid focal loss (alpha 0.25, gamma 2) and dice loss on the low-res logits over the valid
  (unpadded) cells, 20:1, the minimum over a prompt's candidate masks; plus the MSE between the predicted
  IoU and the IoU of the thresholded logits with the target, for every candidate.
All math in float32 whatever the autocast dtype.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

FOCAL_ALPHA, FOCAL_BETA = 2.0, 4.0  # CenterNet
PPN_WEIGHTS = {"heatmap": 1.0, "l1": 5.0, "giou": 2.0}  # DETR's box weights beside a unit heatmap loss
MASK_FOCAL_WEIGHT, MASK_DICE_WEIGHT, IOU_WEIGHT = 20.0, 1.0, 1.0  # SAM
MASK_FOCAL_ALPHA, MASK_FOCAL_GAMMA = 0.25, 2.0


def distillation_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (student.float() - teacher.float()).square().flatten(1).mean(1)


def heatmap_focal_loss(logits: torch.Tensor, target: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor
                       ) -> torch.Tensor:
    """logits (B, 1, G, G); target (B, G, G) Gaussian heatmap; positive / valid (B, G, G) bool -> (B,)."""
    logits = logits.float()[:, 0]
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = log_p.exp()
    positive_term = -((1 - p) ** FOCAL_ALPHA) * log_p
    negative_term = -((1 - target) ** FOCAL_BETA) * (p ** FOCAL_ALPHA) * log_not_p
    per_cell = torch.where(positive, positive_term, negative_term) * valid
    return per_cell.flatten(1).sum(1) / positive.flatten(1).sum(1).clamp(min=1)


def box_losses(distances: torch.Tensor, target: torch.Tensor, positive: torch.Tensor) -> Dict[str, torch.Tensor]:
    """distances / target (B, 4, G, G) (l, t, r, b) in stride units; positive (B, G, G) -> ``l1``, ``giou`` (B,),
    each the mean over the image's positives (0 without any)."""
    from torchvision.ops import generalized_box_iou_loss

    grid = distances.shape[-1]
    weights = positive.flatten(1).float()
    count = weights.sum(1).clamp(min=1)
    pred = distances.float().flatten(2).transpose(1, 2)  # (B, G*G, 4)
    goal = target.float().flatten(2).transpose(1, 2)
    l1 = ((pred - goal).abs().sum(-1) / grid * weights).sum(1) / count  # distances in units of the image side
    # Boxes relative to the cell centre: the centre cancels out of the IoU.
    to_box = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=pred.device)
    giou = generalized_box_iou_loss(pred * to_box, goal * to_box, reduction="none")
    return {"l1": l1, "giou": (giou * weights).sum(1) / count}


def ppn_losses(heatmap_logits: torch.Tensor, distances: torch.Tensor, targets: Dict[str, torch.Tensor]
               ) -> Dict[str, torch.Tensor]:
    """AutoPPN's weighted parts (B,) and their sum ``ppn``; ``targets`` from ``targets.ppn_targets`` (batched)."""
    parts = {"heatmap": heatmap_focal_loss(heatmap_logits, targets["heatmap"], targets["positive"], targets["valid"])}
    parts.update(box_losses(distances, targets["box"], targets["positive"]))
    parts = {name: PPN_WEIGHTS[name] * value for name, value in parts.items()}
    parts["ppn"] = sum(parts.values())
    return parts


def mask_losses(logits: torch.Tensor, iou_predictions: torch.Tensor, targets: torch.Tensor, valid_cells: torch.Tensor,
                slot_valid: torch.Tensor) -> Dict[str, torch.Tensor]:
    """logits (B, K, M, g, g); iou_predictions (B, K, M); targets (B, K, g, g) bool; valid_cells (B, g, g)
    bool; slot_valid (B, K) bool -> ``focal``, ``dice``, ``iou`` (B,) (weighted) and their sum ``mask``,
    each the mean over the image's valid prompts."""
    from torchvision.ops import sigmoid_focal_loss

    logits = logits.float()
    goal = targets[:, :, None].float().expand_as(logits)
    cells = valid_cells[:, None, None].float()
    count = cells.flatten(3).sum(-1).clamp(min=1)  # (B, 1, 1)
    focal = (sigmoid_focal_loss(logits, goal, MASK_FOCAL_ALPHA, MASK_FOCAL_GAMMA, reduction="none") * cells
             ).flatten(3).sum(-1) / count
    probability = logits.sigmoid() * cells
    intersection = (probability * goal).flatten(3).sum(-1)
    dice = 1 - (2 * intersection + 1) / (probability.flatten(3).sum(-1) + (goal * cells).flatten(3).sum(-1) + 1)
    with torch.no_grad():
        predicted = (logits > 0) & (cells > 0)
        hit = goal > 0
        union = (predicted | hit).flatten(3).sum(-1)
        actual_iou = torch.where(union > 0, (predicted & hit).flatten(3).sum(-1) / union.clamp(min=1), 1.0)
    mask_term = MASK_FOCAL_WEIGHT * focal + MASK_DICE_WEIGHT * dice  # (B, K, M)
    best = mask_term.argmin(-1, keepdim=True)  # SAM: only the best of the candidates is trained
    iou_term = (iou_predictions.float() - actual_iou).square().mean(-1)
    weights = slot_valid.float()
    per_slot = {"focal": MASK_FOCAL_WEIGHT * focal.gather(-1, best)[..., 0],
                "dice": MASK_DICE_WEIGHT * dice.gather(-1, best)[..., 0], "iou": IOU_WEIGHT * iou_term}
    count_slots = weights.sum(1).clamp(min=1)
    parts = {name: (value * weights).sum(1) / count_slots for name, value in per_slot.items()}
    parts["mask"] = parts["focal"] + parts["dice"] + parts["iou"]
    return parts
