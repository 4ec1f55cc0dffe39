"""Build litesam_kernels._C.

CUDAExtension when torch was built with CUDA and nvcc is found, else a CPU-only CppExtension.
Environment:
  LITESAM_BUILD_CUDA=0|1   force the CPU-only or the CUDA build (1 fails loudly if CUDA is missing)
  TORCH_CUDA_ARCH_LIST     GPU archs (default: Ampere to Hopper, see DEFAULT_CUDA_ARCHS)
  CUDA_HOME                toolkit root (default /usr/local/cuda when it has bin/nvcc)
  MAX_JOBS                 parallel compile jobs (ninja)
Build with `pip install -e . --no-build-isolation` (or `python -m build --wheel --no-isolation`).
"""
import glob
import importlib.util
import os
import pathlib
import shutil

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = pathlib.Path(__file__).resolve().parent
# sm_90a is what CI compiles for (H100/H200); 9.0+PTX lets newer GPUs JIT the kernels.
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0a;9.0+PTX"


def _find_cuda_home():
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


def _want_cuda():
    forced = os.environ.get("LITESAM_BUILD_CUDA")
    cuda_home = _find_cuda_home()
    available = torch.version.cuda is not None and cuda_home is not None
    if forced == "0":
        return False, cuda_home
    if forced == "1" and not available:
        raise RuntimeError(
            "LITESAM_BUILD_CUDA=1 but a CUDA build is impossible: "
            f"torch.version.cuda={torch.version.cuda!r}, nvcc found under CUDA_HOME={cuda_home!r}"
        )
    return available, cuda_home


def _pip_cuda_include_dirs():
    # torch's pip CUDA wheels ship the cuBLAS/cuSPARSE/... headers that ATen's CUDA headers include;
    # an nvcc-only toolkit lacks them.
    spec = importlib.util.find_spec("nvidia")
    dirs = []
    for root in (spec.submodule_search_locations if spec else []):
        dirs += [str(d) for d in sorted(pathlib.Path(root).glob("cu*/include"))]
        dirs += [str(d) for d in sorted(pathlib.Path(root).glob("*/include")) if (d / "cusparse.h").exists()]
    return sorted(set(dirs))


def _relative(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def build_extension():
    use_cuda, cuda_home = _want_cuda()
    sources = _relative(glob.glob(str(ROOT / "csrc" / "cpu" / "*.cpp")) + glob.glob(str(ROOT / "python" / "*.cpp")))
    cxx_flags = ["-O2", "-g0", "-fopenmp", "-std=c++17"]
    define_macros = []
    include_dirs = [str(ROOT / "csrc")]
    if not use_cuda:
        return CppExtension(
            "litesam_kernels._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"],
        )
    os.environ["CUDA_HOME"] = cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    import torch.utils.cpp_extension as cpp_extension

    cpp_extension.CUDA_HOME = cuda_home  # it was resolved at import, possibly to a guess without headers
    sources += _relative(glob.glob(str(ROOT / "csrc" / "cuda" / "*.cu")))
    define_macros += [
        ("WITH_CUDA", None),
        ("LITESAM_CUDA_ARCHS", '"' + os.environ["TORCH_CUDA_ARCH_LIST"] + '"'),
    ]
    nvcc_flags = ["-O3", "-lineinfo", "-std=c++17", "--expt-relaxed-constexpr"]
    return CUDAExtension(
        "litesam_kernels._C", sources, include_dirs=include_dirs + _pip_cuda_include_dirs(),
        define_macros=define_macros, extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=["-fopenmp"],
    )


# Optional features; litesam_kernels._extras.OPTIONAL_MODULES names the extra in its "not installed" errors.
# torchvision (segment_anything imports it) is not listed for the same reason as torch.
EXTRAS = {
    "triton": ["triton"],
    "coco": ["pycocotools"],  # output_mode="coco_rle", as in segment_anything
    "cli": ["Pillow", "pycocotools", "tqdm"],  # litesam-segment: decoding, COCO RLE output, progress bar
    "sam": ["segment-anything"],  # --model sam, litesam_kernels.amg
    "sam2": ["sam2"],  # --model sam2 (install with SAM2_BUILD_CUDA=0 to skip building its optional CUDA op)
    "ray": ["ray[data]"],  # litesam-segment --ray, litesam_kernels.distributed's Ray Data stage
    # litesam-train / litesam-eval (torchvision too: the build that matches your torch, not listed here)
    "train": ["Pillow", "tqdm", "segment-anything", "pycocotools"],
    "test": ["pytest", "pytest-benchmark", "torchvision", "segment-anything", "opencv-python-headless", "pycocotools"],
}
EXTRAS["all"] = sorted({r for name in ("triton", "cli", "sam", "sam2", "ray") for r in EXTRAS[name]})

setup(
    name="litesam_kernels",
    version="0.1.0",
    description="Fused Triton and CUDA kernels for Lite-SAM and SAM-family 'segment everything'",
    packages=find_packages(include=["litesam_kernels", "litesam_kernels.*"]),
    python_requires=">=3.10",
    # torch is deliberately not listed: pip would replace the installed (CUDA) build with another one.
    install_requires=["numpy"],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["litesam-segment=litesam_kernels.cli:main",
                                      "litesam-train=litesam_kernels.train.cli:main",
                                      "litesam-eval=litesam_kernels.train.evaluate:main"]},
    ext_modules=[build_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)},
    zip_safe=False,
)
