"""Lite-SAM end to end: LiteViT forward and the whole SegEvery per image, at B = 1 and B = 8.

Baseline "eager-reference": ``SegmentEverything.eager_reference``, the same pipeline with every op on its
pure-torch reference (``use_backend("reference")``: ppn_decode's eager steps, SAM's two-resize
post-processing, SAM's ``mask_to_rle_pytorch``, box/mask NMS references) and SAM's per-prompt decoder path
that repeats the image embedding per prompt. "as-built": the default dispatch (Triton ppn_decode; fused
post-processing: Triton on GPU, C++ on CPU; ``mask_to_rle`` on the packed masks; compiled NMS) and the
batched decoder that broadcasts the embedding. Both produce the same records (checked before timing).
``segment_everything_mask_nms`` is the same comparison with ``nms="mask"`` (``ops.mask_nms`` on the
packed masks vs its reference), at the first batch size only. Half precision: "as-built" with the model in
bfloat16 / float16 (``model.to(dtype)``) against the float32 eager reference, records checked to be close
(``tests/_half.py``'s measure); on a GPU also "as-built+compiled" (``compile={"mode": "reduce-overhead"}``:
the fixed-size stages compiled, CUDA graphs). For LiteViT the "as-built" model is today
the same eager module (the fused blocks of issue 6 will replace it); the row is there so the speed-up
appears in the same table once they land.

GPU: 1024^2 inputs, the ``litesam`` config, K = 256 prompts per image. CPU: a smaller run (128^2 inputs,
same architecture with ``image_size=128``, K = 8, B = 1 and 2) so the suite stays under a minute; CPU
numbers say nothing about the GPU. Random weights with the thresholds opened (every prompt's mask goes
through post-processing, NMS and RLE), so the work per image is the worst case for K prompts.
The note of each row gives ms/image and images/s.
"""
from __future__ import annotations

import copy
from typing import List

import numpy as np
import torch

from benchmarks.bench_amg import HALF_DTYPES, records_close
from benchmarks.harness import Implementation, Row, compare
from litesam_kernels.model import build_litesam
from litesam_kernels.segment_everything import SegmentEverything

GPU = dict(image_size=1024, batches=(1, 8), k=256)
CPU = dict(image_size=128, batches=(1, 2), k=8)


def synthetic_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """Blob-like photos: smooth colour fields from upsampled noise, so masks have realistic structure."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, 8, 8, generator=generator) * 255
    images = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return images.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _same_records(got, expected) -> bool:
    if [len(r) for r in got] != [len(r) for r in expected]:
        return False
    ious_got = np.array([r["predicted_iou"] for rs in got for r in rs])
    ious_expected = np.array([r["predicted_iou"] for rs in expected for r in rs])
    return bool(np.allclose(ious_got, ious_expected, rtol=1e-3, atol=1e-4))


def _close_records(got, expected) -> bool:
    return len(got) == len(expected) and all(records_close(e, g) for e, g in zip(expected, got))


def _per_image_note(rows: List[Row], batch: int, extra: str) -> List[Row]:
    for row in rows:
        if row.median_ms:
            per_image = row.median_ms / batch
            row.note = f"{per_image:.2f} ms/image, {1000 / per_image:.1f} images/s; {extra}"
    return rows


def run(device: torch.device, quick: bool = False) -> List[Row]:
    setup = GPU if device.type == "cuda" else CPU
    batches = setup["batches"][:1] if quick else setup["batches"]
    torch.manual_seed(0)
    model = build_litesam("litesam", image_size=setup["image_size"]).to(device).eval()
    with torch.no_grad():
        # A random heatmap varies by less than bfloat16's resolution at its prior (-2.2): scaled up, its peaks
        # are real peaks in every dtype, so the half-precision rows decode the float32 run's prompts.
        model.ppn.heatmap.weight.mul_(100)
    size, k = setup["image_size"], setup["k"]
    # Every threshold opened, AutoPPN's and box NMS's too: all K prompts of every image go through to records
    # (the most work for K prompts), and no near-tie of random weights decides a record in one dtype only.
    opened = dict(points_per_image=k, prompts_per_batch=min(k, 64), ppn_score_threshold=0.0, pred_iou_thresh=-1e9,
                  stability_score_thresh=0.0, box_nms_thresh=1.0, output_mode="coco_rle")
    pipelines = {
        nms: (SegmentEverything.eager_reference(model, batch_size=max(batches), nms=nms, **opened),
              SegmentEverything(model, batch_size=max(batches), nms=nms, **opened))
        for nms in ("box", "mask")
    }
    half_pipelines = {dtype: SegmentEverything(copy.deepcopy(model).to(dtype), batch_size=max(batches), **opened)
                      for dtype in HALF_DTYPES}
    compiled = SegmentEverything(model, batch_size=max(batches), compile={"mode": "reduce-overhead"}, **opened)
    rows: List[Row] = []
    for batch in batches:
        images = synthetic_images(batch, size)
        pixels = torch.randn(batch, 3, size, size, device=device)

        def encode():
            with torch.inference_mode():
                return model.image_encoder(pixels)

        shape = f"B={batch}, {size}x{size}"
        rows += _per_image_note(compare(
            "litevit_forward", shape, torch.float32, device, Implementation("eager-reference", encode),
            [Implementation("as-built", encode)], matches=lambda a, b: torch.allclose(a, b, atol=1e-5),
        ), batch, "as-built = eager until the fused LiteViT blocks land")
        for dtype, half in half_pipelines.items():
            rows += _per_image_note(compare(
                "segment_everything", f"{shape}, K={k}", dtype, device,
                Implementation("eager-reference float32", lambda: pipelines["box"][0].generate(images)),
                [Implementation("as-built", lambda h=half: h.generate(images))], matches=_close_records,
            ), batch, f"K={k} prompts/image, thresholds opened, box NMS, coco_rle; model.to(dtype), records close to "
                      f"the float32 reference's")
        for nms, (reference, as_built) in pipelines.items():
            if nms == "mask" and batch != batches[0]:
                continue  # the reference mask NMS unpacks every mask to float64: one batch size is enough
            op = "segment_everything" if nms == "box" else "segment_everything_mask_nms"
            rows += _per_image_note(compare(
                op, f"{shape}, K={k}", torch.float32, device,
                Implementation("eager-reference", lambda r=reference: r.generate(images)),
                [Implementation("as-built", lambda b=as_built: b.generate(images))] +
                ([Implementation("as-built+compiled", lambda: compiled.generate(images))]
                 if nms == "box" and device.type == "cuda" else []), matches=_same_records,
            ), batch, f"K={k} prompts/image, thresholds opened, {nms} NMS, coco_rle")
    return rows
