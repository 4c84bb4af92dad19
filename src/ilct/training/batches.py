"""What one training step consumes, drawn ahead of time off the critical path.

Every random draw of step k comes from generators seeded by (seed, k): the data
indices, the noise z, and the objective's per-sample draw (the levels i of
consistency training, the log-normal draws u of EDM, MeanFlow's times:
`Objective.draw`). So any step's batch can be made anywhere and in advance, and a
resumed run draws exactly what an uninterrupted one would.

The global batch of B samples is drawn in `train.draw_groups` = G groups of B / G
samples, group g from its own generator (seed, k, g) (`group_seed`; with G = 1 the
one generator of (seed, k), as before groups existed). A rank of a `torchrun` job
draws only the groups that overlap its slice of the global batch, so with G a
multiple of the world size W each rank draws B / W samples, not B, and the global
batch is the same at any W that divides G (ilct.training.loop resolves G = 0 to W).

The exact OT coupling (METHOD.md section 4, technique 3) runs here too, on the
host, on each rank's local batch: with several ranks the assignment is solved
per rank (B / world samples), not over the global batch.

`Prefetcher` makes the batches of the next steps in a DataLoader worker process
(on CUDA), in pinned memory, while the device works on the current step; `get(k)`
copies batch k to the device without blocking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ilct.errors import IlctError
from ilct.objectives.consistency.coupling import ot_couple
from ilct.training.readers import MemoryReader, Reader, draw_slice

_MIX = 0x9E3779B97F4A7C15  # odd constant (2^64 / golden ratio) that spreads (seed, step) over 63 bits


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed for step `step` of a run seeded `seed` (stream 0: batches, 1: dropout, 1 + g: group g >= 1 of
    the batch, `group_seed`)."""
    h = (seed * _MIX + step * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB) & (2**64 - 1)
    h ^= h >> 31
    h = (h * 0xD6E8FEB86659FD93) & (2**64 - 1)
    h ^= h >> 32
    return h & (2**63 - 1)


def group_seed(seed: int, step: int, group: int) -> int:
    """The seed of group `group` of step `step`'s batch: group 0 draws from (seed, step) as an undivided batch
    does, group g >= 1 from its own stream."""
    return step_seed(seed, step) if group == 0 else step_seed(seed, step, 1 + group)


@dataclass
class Batch:
    x: torch.Tensor  # (b, C, H, W) normalized data latents; (b, C, T, H, W) for clips
    z: torch.Tensor  # (b, C, H, W) noise, reordered by the OT coupling when it is on
    draw: torch.Tensor  # (b, ...) the objective's per-sample draw (consistency: level indices i; EDM: u ~ N(0, 1);
    #                    MeanFlow: (b, 3) times r, t and the label-dropout uniform)
    y: torch.Tensor | None  # (b,) class labels (or caption embeddings), when the model is conditional

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        mv = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(mv(self.x), mv(self.z), mv(self.draw), mv(self.y))

    def pin_memory(self) -> "Batch":
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return Batch(pin(self.x), pin(self.z), pin(self.draw), pin(self.y))


class BatchMaker:
    """make(k) -> this rank's Batch of step k (CPU tensors): per group of the global batch, the data from the
    reader (ilct.training.readers: memory draws indices with the group's generator (seed, k, g), the stream reads
    the group's own shards), then noise and the objective's draw from that generator; the OT coupling of data and
    noise when it is on (on this rank's samples)."""

    def __init__(
        self,
        gather: Callable[[torch.Tensor], torch.Tensor] | None,  # indices -> normalized latents (CPU)
        n_data: int,
        shape: tuple[int, ...],
        labels: torch.Tensor | None,
        batch_size: int,  # global
        seed: int,
        draw: Callable[[int, int, torch.Generator], torch.Tensor],  # (k, batch size, g) -> per-sample draw
        ot: bool,
        rank: int = 0,
        world: int = 1,
        groups: int = 1,  # draw groups of the global batch (train.draw_groups, resolved)
        reader: Reader | None = None,  # None: the memory reader of gather, n_data and labels
    ):
        self.lo, self.hi, self.n, self.groups = draw_slice(batch_size, world, groups, rank)
        self.reader = reader if reader is not None else MemoryReader(gather, n_data, labels)
        self.shape, self.B, self.seed, self.draw, self.ot = shape, batch_size, seed, draw, ot

    def _group(self, k: int, group: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(data, conditions, noise, the objective's draw) of this rank's part a .. b-1 of one group of step k's
        global batch."""
        a, b = max(self.lo, group * self.n) - group * self.n, min(self.hi, (group + 1) * self.n) - group * self.n
        g = torch.Generator().manual_seed(group_seed(self.seed, k, group))
        x, y = self.reader.take(k, group, self.n, g, a, b)
        z = torch.randn((self.n, *self.shape), generator=g)
        return x, y, z[a:b], self.draw(k, self.n, g)[a:b]

    def make(self, k: int) -> Batch:
        parts = [self._group(k, group) for group in self.groups]
        x, y, z, d = (p[0] if len(p) == 1 or p[0] is None else torch.cat(p) for p in zip(*parts))
        if self.ot:
            z = ot_couple(x, z)
        return Batch(x.contiguous(), z.contiguous(), d, y)


class _Steps(torch.utils.data.Dataset):
    """Item j is the batch of step start + j (for a DataLoader worker)."""

    def __init__(self, maker: BatchMaker, start: int, stop: int):
        self.maker, self.start, self.stop = maker, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, j: int) -> Batch:
        return self.maker.make(self.start + j)


class Prefetcher:
    """Batches of steps start, start+1, ..., made ahead of the step that uses them.

    With `workers` > 0 (the default on CUDA: 1) a DataLoader worker process draws
    them and solves the OT pairing, `depth` steps ahead, into pinned memory, so
    neither the host work nor the GIL holds up the process that drives the GPU.
    With 0 (the default on a CPU, which has no core to spare: a thread or a
    worker there made a 2-core CPU run 1.5x slower) they are made inline.
    """

    def __init__(self, maker: BatchMaker, start: int, stop: int, device: torch.device, depth: int = 4,
                 workers: int | None = None):
        self.maker, self.device, self.next = maker, device, start
        workers = (1 if device.type == "cuda" else 0) if workers is None else workers
        self.pin = device.type == "cuda"
        self._it = None
        if workers > 0 and stop > start:
            loader = torch.utils.data.DataLoader(
                _Steps(maker, start, stop), batch_size=None, shuffle=False, num_workers=workers,
                pin_memory=self.pin, prefetch_factor=depth, persistent_workers=False)
            self._it = iter(loader)

    def get(self, k: int) -> Batch:
        if k != self.next:
            raise RuntimeError(f"prefetcher expected step {self.next}, asked for {k}")
        if self._it is None:
            b = self.maker.make(k)
        else:
            try:
                b = next(self._it)
            except IlctError as e:  # DataLoader re-raises a worker's error with the worker's traceback in its text
                raise IlctError(str(e).strip().splitlines()[-1].split("IlctError: ", 1)[-1]) from None
        self.next = k + 1
        return b.to(self.device, non_blocking=self.pin)

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
