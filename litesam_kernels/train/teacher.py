"""A SAM or SAM 2 teacher behind one interface: image embeddings, automatic masks, decoder weights.

- :meth:`Teacher.embed`: the 256 x 64 x 64 (at 1024^2) image embedding the teacher's mask decoder consumes,
  for a batch of rendered views (:mod:`litesam_kernels.train.views`). The teacher sees exactly the student's
  input: the longest side resized to the input size and zero-padded bottom-right after normalisation (SAM 1's
  preprocessing; SAM 2's own predictor squashes the image to a square instead, which would misalign its
  embedding with Lite-SAM's input). SAM 1: ``image_encoder(x)``. SAM 2: ``forward_image`` ->
  ``_prepare_backbone_features`` -> the lowest-resolution map plus ``no_mem_embed``, as
  ``SAM2ImagePredictor.set_image`` builds its ``image_embed``.
- :meth:`Teacher.mask_generator`: the teacher's automatic mask generator, through our drop-ins
  (:class:`litesam_kernels.amg.FastSamAutomaticMaskGenerator`,
  :class:`litesam_kernels.sam2_amg.FastSAM2AutomaticMaskGenerator`), on the original images.
- :meth:`Teacher.decoder_state_dicts`: SAM 1's prompt encoder / mask decoder weights (SAM 2's decoder has
  another architecture: None), which load into a Lite-SAM of the same widths.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch

from litesam_kernels.train import sources
from litesam_kernels.train.views import normalize

FAMILIES = ("sam", "sam2")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# SAM 2's normalisation (SAM2Transforms: ImageNet mean/std of [0, 1] pixels), in 0..255 units like SAM 1's.
SAM2_PIXEL_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
SAM2_PIXEL_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass(frozen=True)
class TeacherSpec:
    """How to build a teacher. ``family``: "sam" (``model_type``: a segment_anything registry name or a
    builder ``module:function``) or "sam2" (``config``: a sam2 config name). ``precision``: autocast dtype of
    its forward ("fp32": none)."""

    family: str
    checkpoint: str
    model_type: str = "vit_h"
    config: Optional[str] = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"--teacher must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--teacher-precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not self.checkpoint:
            raise ValueError("--teacher-checkpoint is required (the teacher's weights, as its project ships them)")
        if not os.path.isfile(self.checkpoint):
            raise ValueError(f"--teacher-checkpoint {self.checkpoint!r} is not a file")
        if self.family == "sam2" and not self.config:
            raise ValueError("--teacher sam2 needs --teacher-config (e.g. configs/sam2.1/sam2.1_hiera_l.yaml)")

    def identity(self) -> Dict[str, object]:
        """What makes two teachers' outputs the same (a cache is valid for its teacher only). The checkpoint
        is named by file name and size: hashing a 2.5 GB file per run would cost more than it protects."""
        identity = asdict(self)
        identity["checkpoint"] = os.path.basename(self.checkpoint)
        identity["checkpoint_bytes"] = os.path.getsize(self.checkpoint)
        if self.family == "sam":
            identity.pop("config")
        else:
            identity.pop("model_type")
        return identity


class Teacher:
    """A built teacher on ``device``. ``image_size``: for SAM 2, the input size to run at (SAM 1's is fixed
    by its position embeddings)."""

    def __init__(self, spec: TeacherSpec, device, image_size: Optional[int] = None) -> None:
        self.spec = spec
        self.device = torch.device(device)
        if spec.family == "sam":
            self.model = sources.build_sam(spec.model_type, spec.checkpoint).to(self.device)
            self.image_size = int(self.model.image_encoder.img_size)
            self.pixel_mean, self.pixel_std = self.model.pixel_mean.flatten(), self.model.pixel_std.flatten()
        else:
            self.model = sources.build_sam2(spec.config, spec.checkpoint, image_size).to(self.device)
            self.image_size = int(self.model.image_size)
            self.pixel_mean, self.pixel_std = torch.tensor(SAM2_PIXEL_MEAN), torch.tensor(SAM2_PIXEL_STD)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def _autocast(self):
        dtype = PRECISIONS[self.spec.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.no_grad()
    def embed(self, pixels: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 rendered views and their (B, 2) sizes -> (B, C, S/16, S/16) float32 embeddings."""
        pixels, sizes = pixels.to(self.device), sizes.to(self.device)
        x = normalize(pixels, sizes, self.pixel_mean, self.pixel_std)
        with self._autocast():
            if self.spec.family == "sam":
                embedding = self.model.image_encoder(x)
            else:
                embedding = self._sam2_image_embedding(x)
        return embedding.float()

    def _sam2_image_embedding(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        _, vision_feats, _, feat_sizes = model._prepare_backbone_features(model.forward_image(x))
        lowest = vision_feats[-1]  # (hw, B, C)
        if model.directly_add_no_mem_embed:
            lowest = lowest + model.no_mem_embed
        h, w = feat_sizes[-1]
        return lowest.permute(1, 2, 0).reshape(x.shape[0], -1, h, w)

    def mask_generator(self, **options):
        """The teacher's automatic mask generator (our drop-in) with ``options`` (its keyword arguments)."""
        if self.spec.family == "sam":
            from litesam_kernels.amg import FastSamAutomaticMaskGenerator

            return FastSamAutomaticMaskGenerator(self.model, **options)
        from litesam_kernels.sam2_amg import FastSAM2AutomaticMaskGenerator

        return FastSAM2AutomaticMaskGenerator(self.model, **options)

    @contextlib.contextmanager
    def generating(self):
        """Run the mask generator under the teacher's autocast precision."""
        with torch.no_grad(), self._autocast():
            yield

    def decoder_state_dicts(self) -> Optional[Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]]:
        """(prompt_encoder, mask_decoder) state dicts for SAM 1 (Lite-SAM uses its architecture and key
        names); None for SAM 2."""
        if self.spec.family != "sam":
            return None
        return self.model.prompt_encoder.state_dict(), self.model.mask_decoder.state_dict()
