"""Fused ops, one module per op family. Each op is also a ``torch.ops.litesam.<name>`` custom op
(torch.compile-safe) that picks its backend per call (see ``litesam_kernels._backend``)."""
from litesam_kernels.ops.mask_nms import mask_iou, mask_nms, matrix_nms
from litesam_kernels.ops.nms import batched_nms, nms

__all__ = ["batched_nms", "mask_iou", "mask_nms", "matrix_nms", "nms"]
