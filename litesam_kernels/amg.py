"""``FastSamAutomaticMaskGenerator``: a drop-in for ``segment_anything.SamAutomaticMaskGenerator``.

Same constructor arguments, same ``generate(image)`` records (same order, identical RLEs, boxes, areas,
point coordinates and crop boxes, identical scores), for any segment_anything ``Sam`` model; a thin front
end over :mod:`litesam_kernels.engine` (SAM's point grids, the ``Sam`` adapter, SAM 1's semantics). What
changes is where the work happens:

- point batches can go through the prompt encoder and mask decoder several at a time
  (``batches_per_decoder_call``, default 1: SAM's own decoder batch, so the peak memory stays at or below
  segment_anything's);
- the low-res logits go through one fused pass (:func:`litesam_kernels.ops.postprocess_masks`: SAM's two
  bilinear resizes, threshold, stability score, box) straight to bit-packed masks, so full-resolution float
  logits are never stored (without a GPU or C++ kernel: the model's own resizes, one point batch at a time);
- filtering, boxes, stability scores and masks stay on the device; surviving masks are kept bit-packed
  (``litesam_kernels.ops.bitmask``, 32x smaller than bool) in their crop's frame; the host waits once per
  decoder call (to compact the survivors) and once per crop (the NMS keep list), never per point batch;
  ``generate_batch`` finishes each image as soon as its crops are done;
- ``min_mask_region_area`` (holes, then islands, SAM 1 semantics) runs on the device
  (:func:`litesam_kernels.ops.remove_small_regions`), in chunks of ``masks_per_chunk`` full-size masks;
- RLE run lengths are found on the device; one device-to-host copy per image.

Tie order: segment_anything calls ``torchvision.ops.batched_nms(boxes, scores, zeros, t)``, whose output
order on ties depends on its path (:func:`litesam_kernels.engine.sam_batched_nms` reproduces it).

Half precision: a ``Sam`` converted with ``.to(torch.bfloat16)`` / ``.half()`` (segment-anything-fast style)
works: images are cast to the encoder's dtype, prompts encoded under autocast, scores upcast to float32
before numpy; record fields stay Python ints/floats.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from litesam_kernels.engine import SamAdapter, sam_batched_nms
from litesam_kernels.engine.frontend import PointGridGenerator
from litesam_kernels.engine.records import OUTPUT_MODES
from litesam_kernels.engine.stages import postprocess_small_regions


class FastSamAutomaticMaskGenerator(PointGridGenerator):
    """Drop-in for ``segment_anything.SamAutomaticMaskGenerator`` (same arguments, same records).

    Extra keyword-only arguments (speed/memory knobs; see the README for which provably never change the
    output):
        batches_per_decoder_call: point batches (of ``points_per_batch`` points) decoded per model call.
            1 (the default) decodes as segment_anything does; n > 1 waits on the host n times less often but
            holds n times the decoder's activations (about 30 MB per prompt at SAM's 1024 input: 7.2 GB
            peak at n = 4 against segment_anything's 2.2 GB, measured on CPU).
        masks_per_chunk: full-image masks materialised at once for small-region removal and output.
        images_per_encoder_call: crop images encoded per image-encoder call in ``generate_batch``. 1 (the
            default) runs the encoder exactly as segment_anything does; larger batches are faster but on
            some devices the encoder's float results can differ in the last bits from batch size 1.
        fused_postprocess: True: masks, stability scores and boxes come from one fused pass over the
            low-res logits (:func:`litesam_kernels.ops.postprocess_masks`, bit-exact with torch's resizes
            where verified, see its docstring). False: the model's own ``postprocess_masks`` (full-resolution
            float logits of one point batch at a time), exact by construction. None (default): True when a
            compiled or Triton kernel runs that op on the model's device, else False.
    """

    def __init__(
        self,
        model,
        points_per_side: Optional[int] = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Optional[List[np.ndarray]] = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        batches_per_decoder_call: int = 1,
        masks_per_chunk: int = 64,
        images_per_encoder_call: int = 1,
        fused_postprocess: Optional[bool] = None,
    ) -> None:
        arguments = dict(locals())
        del arguments["self"], arguments["model"]
        self._setup(SamAdapter(model), **arguments)

    @property
    def predictor(self):
        """segment_anything's ``SamPredictor`` on the model, as upstream's generator has one (built on first
        access: the only place this module imports segment_anything; generate() never uses it)."""
        if getattr(self, "_predictor", None) is None:
            from segment_anything.predictor import SamPredictor

            self._predictor = SamPredictor(self.model)
        return self._predictor

    # segment_anything's static method, for code that calls it (generate() does this on the device).
    postprocess_small_regions = staticmethod(postprocess_small_regions)


__all__ = ["FastSamAutomaticMaskGenerator", "OUTPUT_MODES", "sam_batched_nms"]
