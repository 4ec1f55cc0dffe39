"""The training loop shared by the stages: ``run(TrainOptions(...))`` (what ``litesam-train`` calls).

- model: ``--config`` (a named config or a JSON file of ``LiteSAMConfig`` fields) with seeded random weights,
  or ``--init`` (an earlier stage's checkpoint), or the run's own checkpoint with ``--resume``; the encoder
  on the fused channels-last kernels (``LiteViT(fused=True)``, forward and backward) unless ``--encoder eager``;
- optimisation: AdamW (weight decay on matrices and conv kernels only), linear warm-up then cosine decay to
  ``min_lr_ratio * lr`` (per optimizer step), gradient accumulation, gradient-norm clipping, autocast
  (bf16 by default on CUDA; fp16 with a GradScaler), optional ``torch.compile`` of the objective;
- torchrun: one process per GPU (CPU: gloo), DistributedDataParallel, ``--batch-size`` per process, disjoint
  samples per rank (``data.StepBatches``), rank 0 logs and checkpoints; with ``--bn sync`` (distillation's
  default) BatchNorm normalises by the statistics of all ranks' micro-batches together, so N processes take
  the steps of one process with N times the batch size (``--bn train``: each rank's own statistics);
- checkpoints: ``RUN_DIR/checkpoint.pt`` every ``--save-every`` steps, at the end and when stopped (SIGTERM
  or ``--stop-after``), written atomically. It is a ``LiteSAM.save`` checkpoint (``LiteSAM.load`` reads it)
  with one more entry, ``LiteSAM.save(file, extra={"training": ...})``: step, options, optimizer,
  scheduler, grad scaler and RNG states. The data position is the step itself (``data``), so ``--resume``
  continues exactly: the resumed run's parameters equal the uninterrupted run's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from litesam_kernels.model import LiteSAM, LiteSAMConfig, build_litesam, get_config, load_state_dict_checked
from litesam_kernels.train.data import ImageFolder, StepBatches
from litesam_kernels.train.dist import Distributed
from litesam_kernels.train.prepare import TeacherLoader
from litesam_kernels.train.runlog import Progress, RunLog
from litesam_kernels.train.stages import BN_MODES, STAGES, StageContext, copy_teacher_decoder, synchronise_batch_norms
from litesam_kernels.train.teacher import PRECISIONS, TeacherSpec
from litesam_kernels.writers import atomic_write

CHECKPOINT = "checkpoint.pt"
# Options that define the run's trajectory: a resumed run must use the same ones.
TRAJECTORY = ("stage", "steps", "batch_size", "accum_steps", "lr", "warmup_steps", "min_lr_ratio", "weight_decay",
              "clip_grad", "seed", "views", "augment", "prompts_per_image", "bn", "precision", "encoder", "max_masks",
              "points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh", "box_nms_thresh",
              "min_mask_region_area")


class TrainError(ValueError):
    """A run that cannot start as asked (the message says why and what to change)."""


@dataclass
class TrainOptions:
    """Every option of ``litesam-train`` (see ``litesam-train --help`` for each one's meaning)."""

    stage: str
    images: str
    out: str
    steps: int
    teacher: Optional[str] = None
    teacher_type: str = "vit_h"
    teacher_config: Optional[str] = None
    teacher_checkpoint: Optional[str] = None
    teacher_precision: str = "auto"
    resume: bool = False
    init: Optional[str] = None
    config: Optional[str] = None
    batch_size: int = 8
    lr: Optional[float] = None
    accum_steps: int = 1
    warmup_steps: Optional[int] = None
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    precision: str = "auto"
    encoder: str = "fused"
    compile: bool = False
    compile_backend: str = "inductor"
    bn: Optional[str] = None
    save_every: int = 500
    log_every: int = 10
    stop_after: Optional[int] = None
    device: str = "auto"
    num_workers: int = 4
    seed: int = 0
    cache_dir: Optional[str] = None
    shard_size: int = 64
    teacher_batch_size: int = 8
    views: int = 1
    augment: bool = True
    prompts_per_image: int = 16
    max_masks: int = 100
    points_per_side: Optional[int] = None
    points_per_batch: Optional[int] = None
    pred_iou_thresh: Optional[float] = None
    stability_score_thresh: Optional[float] = None
    box_nms_thresh: Optional[float] = None
    min_mask_region_area: Optional[int] = None
    progress: bool = True

    def resolved(self, device: torch.device) -> "TrainOptions":
        """Stage defaults and device-dependent ``auto`` values filled in."""
        if self.stage not in STAGES:
            raise TrainError(f"unknown stage {self.stage!r}: one of {', '.join(STAGES)}")
        stage = STAGES[self.stage]
        auto = "bf16" if device.type == "cuda" else "fp32"
        return dataclasses.replace(
            self, lr=stage.default_lr if self.lr is None else self.lr, bn=self.bn or stage.default_bn,
            warmup_steps=min(1000, self.steps // 20) if self.warmup_steps is None else self.warmup_steps,
            precision=auto if self.precision == "auto" else self.precision,
            teacher_precision=auto if self.teacher_precision == "auto" else self.teacher_precision)

    def check(self) -> None:
        positive = ("steps", "batch_size", "accum_steps", "save_every", "log_every", "shard_size",
                    "teacher_batch_size", "views", "prompts_per_image", "max_masks")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.stop_after is not None and self.stop_after < 1:
            raise TrainError(f"--stop-after must be a positive integer, got {self.stop_after!r}")
        for name, low in (("lr", 0.0), ("weight_decay", 0.0), ("clip_grad", 0.0), ("min_lr_ratio", 0.0)):
            value = getattr(self, name)
            if not math.isfinite(value) or value < low or (name == "lr" and value == 0):
                raise TrainError(f"--{name.replace('_', '-')} must be a finite number > {low}, got {value!r}")
        if self.min_lr_ratio > 1:
            raise TrainError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0:
            raise TrainError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        for name, allowed in (("precision", PRECISIONS), ("bn", BN_MODES), ("encoder", ("fused", "eager"))):
            if getattr(self, name) not in allowed:
                raise TrainError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.num_workers < 0:
            raise TrainError(f"--num-workers must be >= 0, got {self.num_workers}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def run(options: TrainOptions) -> Path:
    """Train one stage; returns the path of the final checkpoint (``RUN_DIR/checkpoint.pt``)."""
    dist = Distributed.from_environment()
    device = dist.device(options.device)
    dist.join(device)
    try:
        trainer = Trainer(options, dist, device)
        path = trainer.fit()
        dist.barrier()  # every rank is done with its collectives before any leaves the group
        # DDP's reducer (and any gloo work it still references) goes now: left to the interpreter's exit,
        # destroying it after the process group aborts the process (SIGABRT, seen under torchrun on CPU).
        del trainer
        gc.collect()
        return path
    finally:
        dist.stop()


class WarmupCosine:
    """LR multiplier of optimizer step ``s`` (0-based): linear warm-up over ``warmup`` steps, then cosine
    from 1 to ``min_ratio`` at the last step (a picklable object: the scheduler's state keeps it)."""

    def __init__(self, total: int, warmup: int, min_ratio: float) -> None:
        self.total, self.warmup, self.min_ratio = int(total), int(warmup), float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - 1 - self.warmup)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def load_config(config: str) -> LiteSAMConfig:
    """A named config, or a JSON file of ``LiteSAMConfig`` fields (``LiteSAMConfig.to_dict()``)."""
    if config.endswith(".json") or os.path.isfile(config):
        try:
            return get_config(json.loads(Path(config).read_text()))
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as exc:
            raise TrainError(f"--config {config!r}: cannot read a LiteSAMConfig from it: {exc}") from exc
    try:
        return get_config(config)
    except ValueError as exc:
        raise TrainError(f"--config: {exc} (or a JSON file of LiteSAMConfig fields)") from exc


def _rng_state() -> Dict[str, Any]:
    """This process's RNG states as bytes and plain numbers (they cross all_gather_object and
    ``torch.load(weights_only=True)``)."""
    name, keys, *rest = np.random.get_state()
    state = {"torch": torch.get_rng_state().numpy().tobytes(), "python": random.getstate(),
             "numpy": [name, keys.astype(np.uint32).tobytes(), *rest]}
    if torch.cuda.is_available():
        state["cuda"] = [s.numpy().tobytes() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    as_tensor = lambda raw: torch.frombuffer(bytearray(raw), dtype=torch.uint8)  # noqa: E731
    torch.set_rng_state(as_tensor(state["torch"]))
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.frombuffer(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([as_tensor(raw) for raw in state["cuda"]])


class Trainer:
    def __init__(self, options: TrainOptions, dist: Distributed, device: torch.device) -> None:
        self.dist, self.device = dist, device
        self.options = options = options.resolved(device)
        options.check()
        if options.bn == "sync" and options.encoder == "eager" and dist.active and device.type != "cuda":
            raise TrainError("--bn sync with --encoder eager needs CUDA (nn.SyncBatchNorm's own forward is GPU-only): "
                             "use the fused encoder (the default) or --bn train")
        self.stage = STAGES[options.stage]
        self.out = Path(options.out)
        self.checkpoint_path = self.out / CHECKPOINT
        resume_state = self._resume_state()
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        self.images = ImageFolder.discover(options.images)
        self.model = self._build_model(resume_state).to(device)
        self.model.image_encoder.fused = options.encoder == "fused"
        if options.bn == "sync":
            synchronise_batch_norms(self.model)
        teacher = TeacherLoader(self._teacher_spec(), device, self.model.config.image_size)
        if resume_state is None and options.init is None:
            if options.stage != "distill" and dist.is_main:
                print(f"WARNING: {options.stage} without --init starts from a random encoder (pass --init "
                      f"DISTILL_RUN/{CHECKPOINT})", file=sys.stderr)
            if options.teacher is not None:
                copy_teacher_decoder(self.model, teacher, dist)
        context = StageContext(options, dist, device, self.images, self.model, teacher)
        self.samples = self.stage.samples(context)
        teacher.release()
        self.parameters = self.stage.parameters(self.model)
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(options.steps, options.warmup_steps, options.min_lr_ratio))
        self.scaler = torch.amp.GradScaler(device.type, enabled=options.precision == "fp16")
        self.step = 0
        if resume_state is not None:
            self._restore(resume_state)
        self.objective = self._objective()

    # ------------------------------------------------------------------------------------ setup
    def _teacher_spec(self) -> Optional[TeacherSpec]:
        o = self.options
        if o.teacher is None:
            return None
        try:
            return TeacherSpec(o.teacher, o.teacher_checkpoint, o.teacher_type, o.teacher_config, o.teacher_precision)
        except ValueError as exc:
            raise TrainError(str(exc)) from exc

    def _resume_state(self) -> Optional[Dict[str, Any]]:
        exists = self.checkpoint_path.exists()
        if not self.options.resume:
            if exists:
                raise TrainError(f"{str(self.out)!r} already holds a run ({CHECKPOINT}): pass --resume to "
                                 f"continue it, or choose another --out")
            return None
        if not exists:
            raise TrainError(f"--resume: there is no {CHECKPOINT} in {str(self.out)!r} to resume from")
        checkpoint = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        training = checkpoint.get("training")
        if training is None:
            raise TrainError(f"{str(self.checkpoint_path)!r} holds no training state (not written by litesam-train)")
        saved = training["options"]
        current = self.options.to_dict()
        changed = [f"--{k.replace('_', '-')} (run: {saved.get(k)!r}, now: {current[k]!r})"
                   for k in TRAJECTORY if saved.get(k) != current[k]]
        if training["world_size"] != self.dist.world_size:
            changed.append(f"the number of processes (run: {training['world_size']}, now: {self.dist.world_size})")
        if changed:
            raise TrainError("--resume continues the run exactly, so these must not change: " + "; ".join(changed))
        return checkpoint

    def _build_model(self, resume_state: Optional[Dict[str, Any]]) -> LiteSAM:
        o = self.options
        if resume_state is not None:
            model = LiteSAM(LiteSAMConfig.from_dict(resume_state["config"]))
            load_state_dict_checked(model, resume_state["state_dict"], source=str(self.checkpoint_path))
            return model
        requested = load_config(o.config or "litesam")
        if o.init is not None:
            if not os.path.isfile(o.init):
                raise TrainError(f"--init {o.init!r} is not a file")
            model = LiteSAM.load(o.init)
            if o.config is not None and model.config != requested:
                raise TrainError(f"--init {o.init!r} holds a model of another config than --config {o.config!r} "
                                 f"(leave --config out to take the checkpoint's)")
            return model
        torch.manual_seed(o.seed)
        return build_litesam(requested)

    def _optimizer(self) -> torch.optim.Optimizer:
        decay = [p for p in self.parameters if p.dim() >= 2]
        no_decay = [p for p in self.parameters if p.dim() < 2]  # norms, biases, embeddings of one row
        groups = [{"params": decay, "weight_decay": self.options.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=self.options.lr)

    def _objective(self):
        objective = self.stage.objective(self.model)
        if self.dist.active:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            objective = torch.nn.parallel.DistributedDataParallel(objective, device_ids=device_ids)
        self._ddp = objective if self.dist.active else None
        if self.options.compile:
            objective = torch.compile(objective, backend=self.options.compile_backend)
        return objective

    def _restore(self, checkpoint: Dict[str, Any]) -> None:
        training = checkpoint["training"]
        self.step = int(training["step"])
        self.optimizer.load_state_dict(training["optimizer"])
        self.scheduler.load_state_dict(training["scheduler"])
        self.scaler.load_state_dict(training["scaler"])
        _set_rng_state(training["rng"][self.dist.rank])

    # ------------------------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        rng = self.dist.all_gather(_rng_state())
        if self.dist.is_main:
            training = {"stage": self.stage.name, "step": self.step, "options": self.options.to_dict(),
                        "world_size": self.dist.world_size, "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng}
            atomic_write(self.checkpoint_path, lambda file: self.model.save(file, extra={"training": training}))
        self.dist.barrier()

    # ------------------------------------------------------------------------------------ loop
    def _loader(self) -> DataLoader:
        o = self.options
        batches = StepBatches(self.step, o.steps, o.batch_size, o.accum_steps, self.dist.rank, self.dist.world_size)
        extra = {"prefetch_factor": 4, "persistent_workers": False} if o.num_workers else {}
        return DataLoader(self.samples, batch_sampler=batches, num_workers=o.num_workers,
                          pin_memory=self.device.type == "cuda", **extra)

    def _autocast(self):
        dtype = PRECISIONS[self.options.precision]
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def fit(self) -> Path:
        o = self.options
        if self.dist.is_main:
            (self.out / f"options_{o.stage}.json").write_text(json.dumps(o.to_dict(), indent=1))
        columns = ["step", "loss", *self.stage.parts, "lr", "grad_norm", "images_per_s", "seconds"]
        log = RunLog(self.out, columns, self.step if o.resume else None, enabled=self.dist.is_main)
        progress = Progress(o.steps, self.step, o.progress and self.dist.is_main, f"litesam-train {o.stage}")
        stop = _StopRequest()
        global_batch = o.batch_size * o.accum_steps * self.dist.world_size
        names = ["loss", *self.stage.parts]
        window_sum = torch.zeros(len(names), device=self.device)
        window_steps, window_start, started, steps_this_run = 0, time.perf_counter(), time.perf_counter(), 0
        grad_norm = torch.zeros((), device=self.device)
        batches = iter(self._loader())
        self.model.train()
        self.stage.set_modes(self.model, o.bn)
        try:
            while self.step < o.steps:
                for micro in range(o.accum_steps):
                    batch = {k: v.to(self.device, non_blocking=True) for k, v in next(batches).items()}
                    sync = self._ddp.no_sync() if self._ddp is not None and micro < o.accum_steps - 1 \
                        else contextlib.nullcontext()
                    with sync:
                        with self._autocast():
                            out = self.objective(**batch)
                        self.scaler.scale(out["loss"] / o.accum_steps).backward()
                    window_sum += torch.stack([out[n].detach().float() for n in names]) / o.accum_steps
                self.scaler.unscale_(self.optimizer)
                if o.clip_grad > 0:
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, o.clip_grad)
                lr = self.scheduler.get_last_lr()[0]
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.step += 1
                steps_this_run += 1
                window_steps += 1
                finished = self.step == o.steps
                status = None
                if self.step % o.log_every == 0 or finished:
                    means = (self.dist.mean(window_sum) / window_steps).tolist()
                    elapsed = time.perf_counter() - window_start
                    row = {"step": self.step, **dict(zip(names, means)), "lr": lr, "grad_norm": float(grad_norm),
                           "images_per_s": window_steps * global_batch / max(elapsed, 1e-9),
                           "seconds": time.perf_counter() - started}
                    log.write(row)
                    status = {"loss": f"{row['loss']:.4g}", "lr": f"{lr:.2e}", "img/s": f"{row['images_per_s']:.1f}"}
                    window_sum.zero_()
                    window_steps, window_start = 0, time.perf_counter()
                progress.update(status, self.step)
                stopping = self.dist.any(stop.requested or (o.stop_after is not None and steps_this_run >= o.stop_after),
                                         self.device)
                if finished or stopping or self.step % o.save_every == 0:
                    self.save()
                if stopping and not finished:
                    if self.dist.is_main:
                        print(f"stopped at step {self.step} of {o.steps}; continue with --resume", file=sys.stderr)
                    break
        finally:
            stop.restore()
            progress.close()
            log.close()
        return self.checkpoint_path


class _StopRequest:
    """SIGTERM (a preempted or timed-out job) asks the loop to checkpoint and stop at the next step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def training_state(path) -> Optional[Dict[str, Any]]:
    """The ``training`` entry of a litesam-train checkpoint (None for a plain ``LiteSAM.save`` file)."""
    return torch.load(path, map_location="cpu", weights_only=True).get("training")


__all__ = ["TrainError", "TrainOptions", "Trainer", "WarmupCosine", "load_config", "run", "training_state"]
