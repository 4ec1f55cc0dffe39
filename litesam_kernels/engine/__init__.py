"""One segment-everything engine behind SAM 1, SAM 2 and Lite-SAM (imports neither segment_anything nor sam2).

Layers (each module one job):

- :mod:`~litesam_kernels.engine.geometry`: SAM's point grids, crop boxes, crop-edge test, coordinate transforms;
- :mod:`~litesam_kernels.engine.prompts`: prompt sources (SAM's point grids per crop layer; AutoPPN);
- :mod:`~litesam_kernels.engine.adapters`: model adapters (segment_anything ``Sam``, sam2 ``SAM2Base``,
  ``LiteSAM``): encode a batch of crops, decode a batch of prompts, the resize plan of post-processing;
- :mod:`~litesam_kernels.engine.preprocess`: Lite-SAM's device preprocessing;
- :mod:`~litesam_kernels.engine.stages`: device stages (fused post-processing, filters, NMS within and across
  crops with torchvision's order, packed-mask uncropping, SAM 1's small-region pass);
- :mod:`~litesam_kernels.engine.records`: the one device-to-host copy per image and the SAM-AMG records;
- :mod:`~litesam_kernels.engine.pipeline`: :class:`Engine` ties them together per :class:`EngineOptions`.

Front ends: ``litesam_kernels.amg`` (segment_anything's generator), ``litesam_kernels.sam2_amg`` (sam2's) and
``litesam_kernels.segment_everything`` (Lite-SAM SegEvery).
"""
from litesam_kernels.engine.adapters import Encoded, LiteSamAdapter, Prompts, Sam2Adapter, SamAdapter, adapter_for
from litesam_kernels.engine.pipeline import CropMasks, Engine, EngineOptions
from litesam_kernels.engine.prompts import AutoPPNPrompts, PointGridPrompts
from litesam_kernels.engine.records import OUTPUT_MODES, segmentation_to_mask
from litesam_kernels.engine.stages import sam_batched_nms

__all__ = ["AutoPPNPrompts", "CropMasks", "Encoded", "Engine", "EngineOptions", "LiteSamAdapter", "OUTPUT_MODES",
           "PointGridPrompts", "Prompts", "Sam2Adapter", "SamAdapter", "adapter_for", "sam_batched_nms",
           "segmentation_to_mask"]
