"""One process or several under `torchrun`: the same training loop either way.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; then the process group uses NCCL
on GPUs and gloo on CPUs, each rank drives cuda:LOCAL_RANK (or the CPU), and
only rank 0 has side effects (progress bar, log, checkpoints, sample grids).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the torchrun job if there is one; returns the rank layout and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def any_rank(d: Dist, flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any (a collective: call it on all ranks)."""
    if not d.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_strings(d: Dist, value: str) -> list[str]:
    """Every rank's `value`, in rank order (a collective)."""
    if not d.active:
        return [value]
    out: list = [None] * d.world
    dist.all_gather_object(out, value)
    return out


def shutdown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()
