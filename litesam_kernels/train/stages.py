"""The three stages: what each trains, on which samples, against which loss.

- ``distill``: the LiteViT encoder regresses the teacher's image embeddings (MSE), BatchNorm in training
  mode; the samples are cached teacher embeddings of (augmented) views.
- ``ppn``: AutoPPN on the frozen encoder (eval mode, no gradients), against heatmap/box targets from the
  teacher's automatic masks, with fresh augmentations every epoch.
- ``finetune``: encoder + AutoPPN + prompt encoder + mask decoder end to end: the AutoPPN loss plus SAM's
  mask loss for prompts (noisy boxes, single points) of the teacher's masks. BatchNorm statistics stay frozen
  by default (``--bn frozen``: the distilled running statistics; affine parameters still train).
The prompt encoder's mask-prompt branch (``mask_downscaling``) is never used, so it never trains.

Each objective is an ``nn.Module`` whose forward takes a batch and returns the batch loss and its parts
(means over images of per-image losses), so it can run under DistributedDataParallel and torch.compile.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import nn

from litesam_kernels.model import CheckpointError, LiteSAM, load_state_dict_checked
from litesam_kernels.train import losses, prepare
from litesam_kernels.train.data import DistillSamples, ImageFolder, MaskSamples, RenderedViews, ViewPlan
from litesam_kernels.train.dist import Distributed
from litesam_kernels.train.views import Augmentation, normalize


def _means(parts: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {name: value.mean() for name, value in parts.items()}


class DistillObjective(nn.Module):
    def __init__(self, model: LiteSAM) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels, sizes, teacher) -> Dict[str, torch.Tensor]:
        images = normalize(pixels, sizes, self.model.pixel_mean, self.model.pixel_std)
        mse = losses.distillation_mse(self.model.image_encoder(images), teacher)
        return _means({"loss": mse, "mse": mse})


def _ppn_targets(batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {key: batch[key] for key in ("heatmap", "positive", "box", "valid")}


class PPNObjective(nn.Module):
    def __init__(self, model: LiteSAM) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels, sizes, **targets) -> Dict[str, torch.Tensor]:
        images = normalize(pixels, sizes, self.model.pixel_mean, self.model.pixel_std)
        with torch.no_grad():
            embeddings = self.model.image_encoder(images)
        parts = losses.ppn_losses(*self.model.ppn(embeddings), _ppn_targets(targets))
        return _means({"loss": parts["ppn"], **parts})


class FinetuneObjective(nn.Module):
    def __init__(self, model: LiteSAM) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels, sizes, boxes, points, mask_targets, slot_valid, mask_valid, **targets
                ) -> Dict[str, torch.Tensor]:
        model = self.model
        images = normalize(pixels, sizes, model.pixel_mean, model.pixel_std)
        embeddings, heatmap_logits, distances = model(images)
        ppn = losses.ppn_losses(heatmap_logits, distances, _ppn_targets(targets))
        encoder, decoder = model.prompt_encoder, model.mask_decoder
        image_pe, no_mask = encoder.get_dense_pe(), encoder.no_mask_embed.weight
        box_slots = boxes.shape[1]
        # Boxes: one mask each (the SegEvery default); points are ambiguous: three candidates (SAM).
        kinds = []
        if box_slots:
            kinds.append((encoder.embed_prompts(boxes=boxes), False, slice(0, box_slots)))
        if points.shape[1]:
            labels = torch.ones(points.shape[:2] + (1,), dtype=torch.int64, device=points.device)
            kinds.append((encoder.embed_prompts(points=(points[:, :, None], labels)), True, slice(box_slots, None)))
        per_kind = []
        for prompts, multimask, slots in kinds:
            logits, iou = decoder.forward_batched(embeddings, image_pe, prompts, no_mask, multimask)
            parts = losses.mask_losses(logits, iou, mask_targets[:, slots], mask_valid, slot_valid[:, slots])
            per_kind.append((parts, slot_valid[:, slots].float().sum(1)))
        mask = _prompt_weighted(per_kind)
        return _means({"loss": ppn["ppn"] + mask["mask"], **ppn, **mask})


def _prompt_weighted(per_kind) -> Dict[str, torch.Tensor]:
    """Per image, the mean over all its valid prompts of each kind's per-prompt means."""
    total = sum(count for _, count in per_kind).clamp(min=1)
    return {name: sum(parts[name] * count for parts, count in per_kind) / total for name in per_kind[0][0]}


# ---------------------------------------------------------------------------------------------- stages
@dataclass
class StageContext:
    """What a stage's preparation needs: the run's options and place, its images and model."""

    options: "object"  # trainer.TrainOptions
    dist: Distributed
    device: torch.device
    images: ImageFolder
    model: LiteSAM
    teacher: prepare.TeacherLoader

    @property
    def cache_root(self) -> Path:
        return Path(self.options.cache_dir) if self.options.cache_dir else Path(self.options.out) / "cache"


class Stage:
    name = ""
    parts: Tuple[str, ...] = ()
    default_lr = 1e-3
    default_bn = "train"

    def trainable(self, model: LiteSAM) -> List[nn.Module]:
        raise NotImplementedError

    def objective(self, model: LiteSAM) -> nn.Module:
        raise NotImplementedError

    def samples(self, context: StageContext):
        raise NotImplementedError

    def parameters(self, model: LiteSAM) -> List[nn.Parameter]:
        """Freeze the model, then unfreeze (and return) what this stage trains."""
        model.requires_grad_(False)
        trained = []
        for part in self.trainable(model):
            part.requires_grad_(True)
            trained += list(part.parameters())
        model.prompt_encoder.mask_downscaling.requires_grad_(False)
        return [p for p in trained if p.requires_grad]

    def set_modes(self, model: LiteSAM, bn: str) -> None:
        """Train/eval modes after ``model.train()``: frozen parts in eval, BatchNorm per ``bn``."""
        if bn == "frozen":
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()


class DistillStage(Stage):
    name = "distill"
    parts = ("mse",)

    def trainable(self, model):
        return [model.image_encoder]

    def objective(self, model):
        return DistillObjective(model)

    def samples(self, context: StageContext):
        options, config = context.options, context.model.config
        plan = ViewPlan(options.views, Augmentation() if options.views > 1 else None, options.seed)
        views = RenderedViews(context.images, plan, config.image_size)
        shape = (config.prompt_embed_dim, config.embedding_size, config.embedding_size)
        cache = prepare.embedding_cache(context.cache_root / "embeddings", context.images, plan, config.image_size,
                                        context.teacher, shape, options.shard_size)
        prepare.build_embeddings(cache, views, context.teacher, context.dist, options.teacher_batch_size,
                                 options.num_workers)
        return DistillSamples(views, cache, options.seed)


class _MaskStage(Stage):
    prompt_slots = 0

    def samples(self, context: StageContext):
        options, config = context.options, context.model.config
        cache = prepare.mask_cache(context.cache_root / "masks", context.images, context.teacher,
                                   generator_options(options), config.image_size // 2, options.max_masks,
                                   options.shard_size)
        prepare.build_masks(cache, context.images, context.teacher, context.dist)
        augmentation = Augmentation() if options.augment else None
        return MaskSamples(context.images, cache, config.image_size, options.seed, augmentation,
                           self.prompt_slots and options.prompts_per_image)


class PPNStage(_MaskStage):
    name = "ppn"
    parts = ("ppn", "heatmap", "l1", "giou")

    def trainable(self, model):
        return [model.ppn]

    def objective(self, model):
        return PPNObjective(model)

    def set_modes(self, model, bn):
        model.image_encoder.eval()


class FinetuneStage(_MaskStage):
    name = "finetune"
    parts = ("ppn", "heatmap", "l1", "giou", "mask", "focal", "dice", "iou")
    default_lr = 1e-4
    default_bn = "frozen"
    prompt_slots = 1  # the count comes from --prompts-per-image

    def trainable(self, model):
        return [model.image_encoder, model.ppn, model.prompt_encoder, model.mask_decoder]

    def objective(self, model):
        return FinetuneObjective(model)


STAGES = {stage.name: stage for stage in (DistillStage(), PPNStage(), FinetuneStage())}


def generator_options(options) -> Dict[str, object]:
    """The teacher's automatic-mask-generator arguments the run sets (the rest are the generator's defaults)."""
    names = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh", "box_nms_thresh",
             "min_mask_region_area")
    return {name: getattr(options, name) for name in names if getattr(options, name) is not None}


def copy_teacher_decoder(model: LiteSAM, teacher: prepare.TeacherLoader, dist: Distributed) -> None:
    """Start the prompt encoder and mask decoder from a SAM 1 teacher's when their widths match."""
    state = teacher.get().decoder_state_dicts()
    if state is None:
        message = "the decoder starts from random weights (a SAM 2 teacher's decoder has another architecture)"
    else:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            load_state_dict_checked(model.prompt_encoder, state[0], source="the teacher's prompt encoder")
            load_state_dict_checked(model.mask_decoder, state[1], source="the teacher's mask decoder")
            message = "prompt encoder and mask decoder start from the teacher's weights"
        except CheckpointError as exc:
            model.load_state_dict(before)  # both or neither
            message = f"the decoder starts from random weights: it does not fit the teacher's ({exc})"
    if dist.is_main:
        print(message, file=sys.stderr, flush=True)
