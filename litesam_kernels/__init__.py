"""litesam_kernels: fused Triton and CUDA C++ kernels for Lite-SAM and SAM-family "segment everything".

Ops live in :mod:`litesam_kernels.ops` (also ``torch.ops.litesam.*``); :func:`backend_info` says which
implementations can run here, and :func:`use_backend` / ``LITESAM_BACKEND`` force one.
"""
from litesam_kernels._backend import BACKENDS, BackendUnavailableError, backend_info, use_backend
from litesam_kernels import ops

__version__ = "0.1.0"
__all__ = ["BACKENDS", "BackendUnavailableError", "backend_info", "ops", "use_backend", "__version__"]
