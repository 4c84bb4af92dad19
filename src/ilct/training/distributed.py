"""One process or several under `torchrun`: the same training loop either way.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; then the process group uses NCCL
on GPUs and gloo on CPUs, each rank drives cuda:LOCAL_RANK (or the CPU), and
only rank 0 has side effects (progress bar, log, checkpoints, sample grids).

Several nodes: nothing assumes a shared filesystem. A rank that cannot read what it
needs does not leave the others waiting in a collective: `together` runs a phase of
checks on every rank and exchanges the outcome, so every rank stops with the same
one line (which rank, on which host, and why); `same_everywhere` compares digests of
what each rank read (the config, the latents' metadata) across ranks.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from ilct.errors import IlctError

T = TypeVar("T")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    grouped: bool = False  # a process group of this one process (init's `group`: a sharded run needs one)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def _env_int(name: str, default: str | None, low: int) -> int:
    """The torchrun variable `name` as an integer >= `low` (`default` when unset; None: it must be set); IlctError
    (one line) for anything else."""
    text = os.environ.get(name, default)
    if text is None:
        raise IlctError(f"{name} is not set (torchrun sets RANK, LOCAL_RANK and WORLD_SIZE for every process)")
    try:
        value = int(text)
    except ValueError:
        raise IlctError(f"{name}={text!r} is not an integer (torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; "
                        f"unset them to run one process)") from None
    if value < low:
        raise IlctError(f"{name}={text!r} must be >= {low}")
    return value


def init(device: torch.device, group: bool = False) -> tuple[Dist, torch.device]:
    """Join the torchrun job if there is one; returns the rank layout and this rank's device. With `group`, one
    process without torchrun gets a process group of its own too (a sharded run's collectives need one).
    Raises IlctError for a WORLD_SIZE, RANK or LOCAL_RANK that is not a whole number in range."""
    world = _env_int("WORLD_SIZE", "1", 1)
    if world <= 1:
        if group and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                    world_size=1)
            return Dist(grouped=True), device
        return Dist(), device
    rank, local = _env_int("RANK", None, 0), _env_int("LOCAL_RANK", "0", 0)
    if rank >= world:
        raise IlctError(f"RANK={rank} must be below WORLD_SIZE={world}")
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


def together(d: Dist, phase: Callable[[], T], what: str = "") -> T:
    """phase() on every rank; when it raises IlctError on any rank, every rank raises one line naming the first
    rank that failed (its host, and what it said), instead of the others waiting for it in a collective."""
    result, problem = None, ""
    try:
        result = phase()
    except IlctError as e:
        if not d.active:
            raise
        problem = str(e)
    if d.active:
        problems = gather_strings(d, f"{socket.gethostname()}\0{problem}" if problem else "")
        first = next((r for r, p in enumerate(problems) if p), None)
        if first is not None:
            host, message = problems[first].split("\0", 1)
            raise IlctError(f"rank {first} of {d.world} (host {host}){' ' + what if what else ''}: {message}")
    return result


def same_everywhere(d: Dist, digests: dict[str, str]) -> None:
    """Every rank read the same things: `digests` (name -> digest of what this rank read) must agree with rank
    0's, else one line on every rank naming the first that differs."""
    if not d.active:
        return
    mine = "\0".join(f"{k}={v}" for k, v in sorted(digests.items()))
    everyone = gather_strings(d, f"{socket.gethostname()}\0\0{mine}")
    host0, reference = everyone[0].split("\0\0", 1)
    for r, item in enumerate(everyone[1:], start=1):
        host, theirs = item.split("\0\0", 1)
        if theirs != reference:
            ref, other = dict(x.split("=", 1) for x in reference.split("\0")), dict(x.split("=", 1) for x in theirs.split("\0"))
            differ = [k for k in ref if ref[k] != other.get(k)]
            raise IlctError(f"rank {r} (host {host}) reads another {' and '.join(differ)} than rank 0 (host {host0}): "
                            "every node must see the same run config and latents (a shared folder, or identical "
                            "copies)")


def shutdown(d: Dist, clean: bool = False) -> None:
    """Leave the process group. `clean` (every rank finished its work): wait for the others first, so that no
    rank tears down gloo or NCCL while another still has a collective in flight (that aborted a rank at exit
    with "terminate called without an active exception"). After an error the ranks do not wait: a rank that
    failed alone must not hang on one that will never arrive."""
    if (d.active or d.grouped) and dist.is_initialized():
        if clean and d.active:
            dist.barrier()
        dist.destroy_process_group()
