"""Lite-SAM training: images/s of a distillation step, and the teacher-embedding cache's throughput.

``train_step``: one optimizer step of ``litesam-train distill`` (LiteViT forward + backward against a cached
teacher embedding, MSE, AdamW), the stage that costs the most GPU time. Baseline "eager": the encoder's eager
modules; "fused": ``LiteViT(fused=True)`` (the Triton kernels on a GPU, their torch references on a CPU);
"compiled-eager" / "compiled-fused": ``torch.compile`` of the objective (GPU only). Each implementation trains
its own copy of the same initial model on the same batch, so the first step's losses must agree (relative
1e-3 fp32, 3e-2 bf16) before anything is timed. GPU: 1024^2, the ``litesam`` config, B = 8 and 16, bf16
autocast (the training default); the floor is the step's matmul/conv FLOPs (3x the forward's, counted by
``torch.utils.flop_counter``) at the bf16 peak. The note gives images/s.

``distill_cache``: writing and reading back N teacher embeddings (256 x 64 x 64 fp16, 2 MiB each):
``EmbeddingCache`` shards (atomic ``.npy`` shards, memory-mapped reads) against one ``.npy`` file per image,
as a plain script would keep them; the note gives MB/s and embeddings/s (disk- and page-cache bound).

CPU (no GPU): the ``tiny`` config at 128^2, B = 2, fp32, no compile rows; 16 cached embeddings. These rows
show that the suite runs; they say nothing about the GPU.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Callable, List

import numpy as np
import torch

from benchmarks.harness import Floor, Implementation, Row, compare
from litesam_kernels.model import build_litesam
from litesam_kernels.train.cache import EmbeddingCache
from litesam_kernels.train.stages import DistillObjective

GPU = dict(config="litesam", batches=(8, 16), dtype=torch.bfloat16, cache_items=256)
CPU = dict(config="tiny", batches=(2,), dtype=torch.float32, cache_items=16)
REL_TOL = {torch.float32: 1e-3, torch.bfloat16: 3e-2}


def _batch(model, batch: int, device: torch.device):
    generator = torch.Generator().manual_seed(0)
    size, config = model.config.image_size, model.config
    low = torch.rand(batch, 3, 8, 8, generator=generator) * 255  # smooth "photos", not noise
    pixels = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic").clamp(0, 255).to(torch.uint8)
    teacher = torch.randn(batch, config.prompt_embed_dim, config.embedding_size, config.embedding_size,
                          generator=generator).half()
    sizes = torch.full((batch, 2), size, dtype=torch.int64)
    return {"pixels": pixels.to(device), "sizes": sizes.to(device), "teacher": teacher.to(device)}


def _step(model, batch, dtype, fused: bool, compiled: bool) -> Callable[[], torch.Tensor]:
    model = copy.deepcopy(model)
    model.image_encoder.fused = fused
    model.train()
    objective = DistillObjective(model)
    if compiled:
        objective = torch.compile(objective)
    optimizer = torch.optim.AdamW(model.image_encoder.parameters(), lr=1e-4)
    device_type = batch["pixels"].device.type

    def step():
        with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
            loss = objective(**batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach().float()

    return step


def _step_flops(model, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    encoder = copy.deepcopy(model.image_encoder).float()
    images = torch.randn(batch["pixels"].shape, device=batch["pixels"].device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(images)
    return 3.0 * counter.get_total_flops()  # backward ~ 2x forward


def _images_per_s(rows: List[Row], batch: int) -> List[Row]:
    for row in rows:
        if row.median_ms:
            row.note = f"{batch / row.median_ms * 1e3:.1f} images/s" + (f"; {row.note}" if row.note else "")
    return rows


def train_step_rows(device: torch.device, setup: dict, batch_size: int) -> List[Row]:
    torch.manual_seed(0)
    model = build_litesam(setup["config"]).to(device)
    batch = _batch(model, batch_size, device)
    dtype = setup["dtype"]
    on_gpu = device.type == "cuda"
    implementations = [Implementation("fused", _step(model, batch, dtype, True, False))]
    for name, fused in (("compiled-eager", False), ("compiled-fused", True)):
        if on_gpu:
            implementations.append(Implementation(name, _step(model, batch, dtype, fused, True)))
        else:
            implementations.append(Implementation(name, lambda: None, "GPU only (inductor on the CPU is not the target)"))
    tol = REL_TOL[dtype]
    floor = Floor(flops=_step_flops(model, batch), flops_dtype="bf16" if dtype == torch.bfloat16 else "fp32")
    size = model.config.image_size
    rows = compare("train_step (distill)", f"B={batch_size} {size}^2 {setup['config']}", dtype, device,
                   Implementation("eager", _step(model, batch, dtype, False, False)), implementations,
                   matches=lambda got, expected: abs(float(got) - float(expected)) <= tol * abs(float(expected)),
                   note="LiteViT fwd+bwd + MSE + AdamW", floor=floor)
    return _images_per_s(rows, batch_size)


def cache_rows(device: torch.device, items: int) -> List[Row]:
    shape = (256, 64, 64)
    embeddings = torch.randn(items, *shape, generator=torch.Generator().manual_seed(0)).half()
    megabytes = embeddings.numel() * 2 / 1e6
    rows: List[Row] = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)

        def write_files():
            for i in range(items):
                np.save(root / "files" / f"{i}.npy", embeddings[i].numpy())

        def read_files():
            return torch.stack([torch.from_numpy(np.load(root / "files" / f"{i}.npy")) for i in range(items)])

        def write_shards():
            cache = EmbeddingCache(root / "shards", {"images": items}, items, shard_size=64)
            for shard in range(cache.num_shards):
                cache.write_shard(shard, embeddings[cache.shard_items(shard).start:cache.shard_items(shard).stop])
            return cache

        def read_shards():
            cache = EmbeddingCache(root / "shards", {"images": items}, items, shard_size=64)
            return torch.stack([cache.read(i) for i in range(items)])

        (root / "files").mkdir()
        write_files()
        write_shards()
        same = lambda got, expected: torch.equal(got, expected)  # noqa: E731
        rows += compare("distill_cache write", f"{items} x 256x64x64", torch.float16, torch.device("cpu"),
                        Implementation("file-per-image", lambda: (write_files(), embeddings)[1]),
                        [Implementation("fp16 shards", lambda: (write_shards(), embeddings)[1])], matches=same)
        rows += compare("distill_cache read", f"{items} x 256x64x64", torch.float16, torch.device("cpu"),
                        Implementation("file-per-image", read_files), [Implementation("fp16 shards", read_shards)],
                        matches=same)
    for row in rows:
        if row.median_ms:
            row.note = f"{megabytes / row.median_ms * 1e3:.0f} MB/s, {items / row.median_ms * 1e3:.0f} embeddings/s"
    return rows


def run(device: torch.device, quick: bool = False) -> List[Row]:
    setup = GPU if device.type == "cuda" else CPU
    rows: List[Row] = []
    for batch_size in setup["batches"][:1] if quick else setup["batches"]:
        rows += train_step_rows(device, setup, batch_size)
    rows += cache_rows(device, setup["cache_items"] // (4 if quick else 1))
    return rows
