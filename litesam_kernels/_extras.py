"""Optional dependencies: import them where they are needed, and say which extra installs them if absent."""
from __future__ import annotations

import importlib
from types import ModuleType

# module -> (pip distribution, extra of litesam_kernels that installs it)
OPTIONAL_MODULES = {
    "PIL": ("Pillow", "cli"),
    "pycocotools": ("pycocotools", "cli"),
    "tqdm": ("tqdm", "cli"),
    "segment_anything": ("segment-anything", "sam"),
    "sam2": ("sam2", "sam2"),
    "ray": ("ray[data]", "ray"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, purpose: str) -> ModuleType:
    """``import module`` (a dotted name whose top-level package is in ``OPTIONAL_MODULES``), or raise
    :class:`MissingExtraError` naming ``purpose``, the missing distribution and the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        missing = getattr(exc, "name", None) or top
        distribution, extra = OPTIONAL_MODULES[top]
        if missing.split(".")[0] != top:
            # The package is there but one of its own dependencies is not (segment_anything needs
            # torchvision, which no extra lists: pip would swap the installed torch build for another).
            raise MissingExtraError(
                f"{purpose} needs {distribution}, which failed to import because {missing!r} is missing: "
                f"install it (torchvision: the build that matches your torch)") from exc
        raise MissingExtraError(f"{purpose} needs {distribution}, which is not installed: "
                                f"pip install 'litesam_kernels[{extra}]'") from exc
