"""Full ``generate()``: litesam_kernels' FastSAM2AutomaticMaskGenerator vs sam2 1.1.0's
SAM2AutomaticMaskGenerator, same model, same image, same arguments, on the current device.

GPU: hiera-T and hiera-L (``sam2.1_hiera_{t,l}.yaml``, random weights rescaled as the tests' so masks
follow the prompt, ``tests/_sam2_oracle.py``) on a 1024x768 photo collage, 32x32 points, at permissive
thresholds (random weights give few confident masks; post-processing, NMS and RLE then carry real load),
float32 rows with identical records checked before timing; then bfloat16 and float16 rows: sam2 under
``torch.autocast`` (its documented half-precision mode; ``model.to(dtype)`` fails inside sam2) against ours
with the model converted (``model.to(dtype)``), records checked to be close (``tests/_half.py``). Quote the
half rows beside torchao's published SAM 2 AMG: 112 ms p50 (AOTInductor fp16, sam2.1_hiera_large, their card).
sam2 gets the OpenCV connected-components oracle so that ``min_mask_region_area`` rows do the same work.
CPU: hiera-T at 512 px (``image_size=512``; 1024 px in the full run), 4x4 points; CPU numbers say nothing
about the GPU.
"""
from __future__ import annotations

import copy
from typing import List

import torch

from benchmarks.bench_amg import HALF_DTYPES, generator_rows, records_close, records_equal
from benchmarks.harness import Row

PERMISSIVE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.5, box_nms_thresh=0.9)
TORCHAO_NOTE = "torchao (PyTorch blog, SAM 2): 112 ms p50 AMG hiera-L fp16 AOTInductor, another card"


def _cases(device: torch.device, quick: bool):
    from tests._sam2_oracle import photo

    if device.type == "cuda":
        models = [("hiera-T", "configs/sam2.1/sam2.1_hiera_t.yaml", 1024),
                  ("hiera-L", "configs/sam2.1/sam2.1_hiera_l.yaml", 1024)]
        image = photo((768, 1024))
        kwargs = dict(points_per_side=32, output_mode="uncompressed_rle")
        configs = [("permissive", PERMISSIVE), ("permissive+min_area", dict(PERMISSIVE, min_mask_region_area=100))]
    else:
        models = [("hiera-T 512px", "configs/sam2.1/sam2.1_hiera_t.yaml", 512)]
        if not quick:
            models.append(("hiera-T", "configs/sam2.1/sam2.1_hiera_t.yaml", 1024))
        image = photo((96, 128))
        kwargs = dict(points_per_side=4, points_per_batch=16, output_mode="uncompressed_rle")
        configs = [("permissive", PERMISSIVE)]
    if quick:
        models, configs = models[-1:] if device.type == "cuda" else models, configs[:1]
    return models, image, kwargs, configs


def run(device: torch.device, quick: bool = False) -> List[Row]:
    from tests._sam2_oracle import sam2_cpu_connected_components, sam2_generator, tiny_sam2

    from litesam_kernels.sam2_amg import FastSAM2AutomaticMaskGenerator

    models, image, kwargs, configs = _cases(device, quick)
    reps = 3 if quick or device.type != "cuda" else 5
    rows: List[Row] = []
    for model_name, config_file, image_size in models:
        model = tiny_sam2(config=config_file, image_size=image_size, device=str(device))
        note = (f"SAM 2 {model_name} random weights, {image.shape[1]}x{image.shape[0]} photo, "
                f"{kwargs['points_per_side']}^2 points")
        for name, config in configs:
            theirs = sam2_generator(model, **kwargs, **config)
            ours = FastSAM2AutomaticMaskGenerator(model, **kwargs, **config)

            def baseline(generator=theirs, dtype=None):
                with sam2_cpu_connected_components():
                    if dtype is None:
                        return generator.generate(image)
                    with torch.autocast(device.type, dtype=dtype):
                        return generator.generate(image)

            shape = f"{model_name}, {name}, {len(baseline())} records"
            rows += generator_rows("sam2_amg_generate", shape, "float32", device, "sam2", baseline,
                                   "litesam-FastSAM2AutomaticMaskGenerator", lambda: ours.generate(image),
                                   records_equal, note, reps)
            if name != "permissive" or device.type != "cuda":
                continue
            for dtype in HALF_DTYPES:
                half = FastSAM2AutomaticMaskGenerator(copy.deepcopy(model).to(dtype), **kwargs, **config)
                rows += generator_rows(
                    "sam2_amg_generate", shape, str(dtype).replace("torch.", ""), device, "sam2 (autocast)",
                    lambda d=dtype: baseline(dtype=d), "litesam-FastSAM2AutomaticMaskGenerator",
                    lambda h=half: h.generate(image), records_close,
                    f"{note}; ours model.to(dtype), sam2 under autocast; records close; {TORCHAO_NOTE}", reps)
    return rows
