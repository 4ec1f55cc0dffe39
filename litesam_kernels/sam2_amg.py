"""``FastSAM2AutomaticMaskGenerator``: a drop-in for sam2 1.1.0's ``SAM2AutomaticMaskGenerator``.

Same constructor (``**kwargs`` accepted and ignored, as sam2 does), ``from_pretrained``, ``generate(image)``
and the same records (order, RLEs, boxes, areas, points, crop boxes; scores equal within float tolerance)
for any sam2 ``SAM2Base``; a thin front end over :mod:`litesam_kernels.engine` with SAM 2's semantics:

- preprocessing as ``SAM2Transforms``: ``ToTensor``, a square antialiased bilinear resize to
  ``model.image_size``, ImageNet normalisation, on the CPU like sam2 (``preprocess_on_device=True`` moves it
  to the model's device: faster, but the resize's float results may differ in the last bits);
- float32 point transforms (``transform_coords(normalize=True)``); ``multimask_output``;
- post-processing in float32 with **one** bilinear resize from the low-res logits to the crop size,
  stability and binarisation at the generator's ``mask_threshold``;
- ``use_m2m``: every mask re-decoded once with its own clamped low-res logits as mask prompt;
- ``min_mask_region_area`` as sam2 does it: holes and sprinkles of area <= a filled on the low-res logits
  (threshold 0, the predictor's), before upsampling, with our connected components on the device
  (:func:`litesam_kernels.ops.small_regions.fill_small_regions`); sam2 itself needs its CUDA extension
  ``sam2._C`` for this and silently skips it (with a warning) without;
- records typed as sam2's ``MaskData.to_numpy`` leaves them (float32 boxes, crop boxes and points).

The speed-ups of the SAM 1 drop-in carry over: several point batches per decoder call, one fused pass to
packed masks, RLE on the device, one host wait per decoder call and one device-to-host copy per image.
Half precision: a ``SAM2Base`` in bfloat16/float16 works (inputs cast to the encoder's dtype, prompts
encoded under autocast, post-processing in float32 as sam2, scores upcast before numpy).
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from litesam_kernels.engine import Sam2Adapter
from litesam_kernels.engine.frontend import PointGridGenerator
from litesam_kernels.engine.records import OUTPUT_MODES
from litesam_kernels.engine.stages import postprocess_small_regions


class FastSAM2AutomaticMaskGenerator(PointGridGenerator):
    """Drop-in for ``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator`` (sam2 1.1.0).

    Positional and keyword arguments are sam2's (see its docstring); unknown ``**kwargs`` are ignored, as
    sam2 ignores them (``from_pretrained`` passes the model builder's arguments on to the constructor).
    Argument errors raise ValueError where sam2 asserts.

    Extra keyword-only arguments: ``batches_per_decoder_call``, ``masks_per_chunk``,
    ``images_per_encoder_call``, ``fused_postprocess`` (as :class:`litesam_kernels.amg.FastSamAutomaticMaskGenerator`),
    and ``preprocess_on_device`` (the resize and normalisation on the model's device instead of sam2's CPU).
    """

    small_regions = "sam2"
    field_types = "sam2"

    def __init__(
        self,
        model,
        points_per_side: Optional[int] = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Optional[List[np.ndarray]] = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
        *,
        batches_per_decoder_call: int = 1,
        masks_per_chunk: int = 64,
        images_per_encoder_call: int = 1,
        fused_postprocess: Optional[bool] = None,
        preprocess_on_device: bool = False,
        **kwargs,
    ) -> None:
        arguments = dict(locals())
        del arguments["self"], arguments["model"], arguments["kwargs"], arguments["preprocess_on_device"]
        self._setup(Sam2Adapter(model, preprocess_on_device=preprocess_on_device), **arguments)

    @classmethod
    def from_pretrained(cls, model_id: str, **kwargs) -> "FastSAM2AutomaticMaskGenerator":
        """A generator for a Hugging Face hub SAM 2 (``sam2.build_sam.build_sam2_hf(model_id, **kwargs)``;
        needs sam2 and network access), as ``SAM2AutomaticMaskGenerator.from_pretrained``."""
        from sam2.build_sam import build_sam2_hf  # the model builder is sam2's; the engine never imports sam2

        return cls(build_sam2_hf(model_id, **kwargs), **kwargs)

    @property
    def predictor(self):
        """sam2's ``SAM2ImagePredictor`` on the model, configured as upstream's generator configures its own
        (built on first access: the only place besides ``from_pretrained`` this module imports sam2)."""
        if getattr(self, "_predictor", None) is None:
            from sam2.sam2_image_predictor import SAM2ImagePredictor

            self._predictor = SAM2ImagePredictor(self.model, max_hole_area=self.min_mask_region_area,
                                                 max_sprinkle_area=self.min_mask_region_area)
        return self._predictor

    # sam2 keeps SAM 1's static method (unused by its generate()); so do we.
    postprocess_small_regions = staticmethod(postprocess_small_regions)


__all__ = ["FastSAM2AutomaticMaskGenerator", "OUTPUT_MODES"]
