"""This process's place in a torchrun job, and the few collectives training needs.

:class:`Distributed` is ``litesam-segment``'s :class:`litesam_kernels.distributed.DistributedContext` (rank,
world size, local rank from torchrun's environment; joining and leaving the process group; gathering
picklable values) with what training adds: the process group is NCCL on CUDA, gloo on CPU, with a long
timeout (ranks wait for each other while the teacher caches are built, which can take hours on a large
image set); a bare ``cuda`` device is always this rank's indexed GPU; barriers, means and stop votes.
Outside torchrun (no ``WORLD_SIZE`` in the environment) everything is a no-op on rank 0 of 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch

from litesam_kernels.distributed import DistributedContext

COLLECTIVE_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Distributed(DistributedContext):
    def device(self, requested: str) -> torch.device:
        """``auto``: this rank's GPU (LOCAL_RANK; 0 outside torchrun) if there is one, else the CPU; a bare
        ``cuda`` is this rank's GPU too, with its index (``set_device`` and DDP's ``device_ids`` need one)."""
        device = torch.device(super().device(requested))
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device

    def join(self, device: torch.device) -> None:
        """Join the job's process group: NCCL for CUDA ``device``, else gloo."""
        self.start("nccl" if device.type == "cuda" else "gloo", COLLECTIVE_TIMEOUT)

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
