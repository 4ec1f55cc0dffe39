"""This process's place in a torchrun job, and the few collectives training needs.

Outside torchrun (no ``WORLD_SIZE`` in the environment) everything is a no-op on rank 0 of 1. Under
torchrun the process group is NCCL on CUDA, gloo on CPU, with a long timeout: ranks wait for each other
while the teacher caches are built, which can take hours on a large image set.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List

import torch

COLLECTIVE_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "Distributed":
        try:
            return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))
        except ValueError as exc:
            raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them): {exc}") from exc

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        """``auto``: this rank's GPU (LOCAL_RANK; 0 outside torchrun) if there is one, else the CPU; a bare
        ``cuda`` is this rank's GPU too."""
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        if requested == "cuda":  # an index, so that set_device and DDP's device_ids have one
            requested = f"cuda:{self.local_rank}"
        device = torch.device(requested)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device

    def start(self, device: torch.device) -> None:
        if self.active and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend, rank=self.rank, world_size=self.world_size,
                                                 timeout=COLLECTIVE_TIMEOUT)

    def stop(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over the ranks (in place on a copy)."""
        if not self.active:
            return values
        values = values.clone()
        torch.distributed.all_reduce(values)
        return values / self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if ``flag`` is True on some rank (stop decisions must be collective)."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, value: Any) -> List[Any]:
        """Every rank's picklable ``value``, in rank order."""
        if not self.active:
            return [value]
        out: List[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, value)
        return out
