"""Train Lite-SAM from any SAM / SAM 2 teacher: ``litesam-train distill|ppn|finetune`` and ``litesam-eval``.

No trained Lite-SAM weights exist (the paper's are not public); this package is the recipe:
1. ``distill``: the LiteViT encoder regresses the teacher's image embeddings (MSE, MobileSAM's decoupled
   distillation), cached once on disk as float16 shards;
2. ``ppn``: AutoPPN learns point and box prompts from the teacher's own automatic masks (from our fast
   drop-in generators): a Gaussian heatmap at each mask's centre (focal loss), ltrb boxes (L1 + GIoU);
3. ``finetune``: encoder + AutoPPN + mask decoder end to end against the teacher's masks (SAM's focal +
   dice + IoU-prediction loss).
From Python: ``run(TrainOptions(stage=..., images=..., out=..., steps=..., teacher=..., ...))``;
``evaluate(...)`` for a checkpoint's mask recall / mean IoU against the teacher, or COCO ``segm`` metrics.
"""
from litesam_kernels.train.trainer import TrainError, TrainOptions, run

__all__ = ["TrainError", "TrainOptions", "run"]
