"""How a run's batches read its latents: the readers, chosen by name (`data.reader`, `READERS`).

A reader gives each draw group of a step its samples: `take(k, group, n, g, a, b)` -> (x, y), the normalized
latents and conditions of samples a .. b-1 of group `group`'s n at step k (ilct.training.batches), drawn from
the group's generator g or from an order of its own; `state(step)` is what a checkpoint records of it and
`resume(saved, step)` checks that record when a run resumes.

- memory: random access. Each group draws its n indices uniformly from the whole set with g (with
  replacement), gathered from host memory (sets up to IN_MEMORY_BYTES) or the memory map.
- stream (ilct.training.stream): each group reads its own shards, in a seeded order, a window of shards at a
  time, every sample once per pass over them; for sets larger than memory or than one node's disk.

A new reader is a factory (cfg, latents, stats, rank, world, main) -> reader, the class that opens its latent
directory, and one line in READERS (and its name in ilct.schema.CHOICES["data.reader"]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch

from ilct.errors import IlctError
from ilct.latents import LatentDir, LatentShards, LatentStats
from ilct.nets.text import caption_conditions, kept_indices
from ilct.schema import Config
from ilct.training import stream

IN_MEMORY_BYTES = 4 << 30  # memory reader: latent sets up to 4 GiB are loaded whole, larger ones memory-mapped


class Reader(Protocol):
    n_data: int  # samples in the set

    def take(self, k: int, group: int, n: int, g: torch.Generator, a: int, b: int
             ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def state(self, step: int) -> dict[str, Any]: ...

    def resume(self, saved: dict[str, Any] | None, step: int) -> None: ...


def draw_slice(batch_size: int, world: int, groups: int, rank: int) -> tuple[int, int, int, range]:
    """(lo, hi, n, its groups): rank `rank`'s slice lo .. hi-1 of the global batch, the n samples per draw group,
    and the groups the slice overlaps (the only ones the rank draws and reads)."""
    if batch_size % world:
        raise ValueError(f"train.batch_size={batch_size} does not split over {world} ranks")
    if groups < 1 or batch_size % groups:
        raise ValueError(f"train.batch_size={batch_size} does not split into {groups} draw groups")
    lo, hi, n = rank * batch_size // world, (rank + 1) * batch_size // world, batch_size // groups
    return lo, hi, n, range(lo // n, (hi - 1) // n + 1)


class MemoryReader:
    """Random access: group g's n indices drawn uniformly from all n_data samples with g, kept a .. b-1."""

    def __init__(self, gather: Callable[[torch.Tensor], torch.Tensor], n_data: int, labels: torch.Tensor | None):
        self.gather, self.n_data, self.labels = gather, n_data, labels  # gather: indices -> normalized latents (CPU)

    def take(self, k: int, group: int, n: int, g: torch.Generator, a: int, b: int):
        idx = torch.randint(0, self.n_data, (n,), generator=g)[a:b]
        return self.gather(idx), (self.labels[idx] if self.labels is not None else None)

    def state(self, step: int) -> dict[str, Any]:
        return {}  # a function of (seed, step) alone: nothing to record

    def resume(self, saved: dict[str, Any] | None, step: int) -> None:
        pass


def conditions(cfg: Config, latent_set: LatentDir, main: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The labels (or caption conditions) the model is conditioned on, and the indices kept for training."""
    labels = None
    if cfg.model.num_classes != 0:  # class-conditional: labels stored with the latents
        if latent_set.labels is None or len(latent_set.labels) == 0:
            raise IlctError("config: model.num_classes is set but the latents carry no labels "
                            "(Fashion-MNIST, or an image folder with data.labels_from_subfolders)")
        if int(latent_set.labels.min()) < 0:
            raise IlctError(f"{latent_set.path}: the labels must be >= 0")
        if cfg.model.num_classes < 0:
            cfg.model.num_classes = int(latent_set.labels.max()) + 1
        if int(latent_set.labels.max()) >= cfg.model.num_classes:
            raise IlctError(f"config: model.num_classes={cfg.model.num_classes} but the labels go up to "
                            f"{int(latent_set.labels.max())}")
        labels = latent_set.labels
    kept = kept_latents(cfg, latent_set)  # (checked before the embeddings)
    if cfg.model.text_dim > 0:
        labels = text_conditions(cfg, latent_set)
    if kept is not None and main:
        print(f"caption_holdout {cfg.data.caption_holdout!r}: training on {len(kept)} of {len(latent_set)} latents", flush=True)
    return labels, kept


def kept_latents(cfg: Config, latent_set: LatentDir | LatentShards) -> torch.Tensor | None:
    """data.caption_holdout: the indices of the latents trained on (held-out prompts' images never are); None
    when nothing is held out."""
    if not cfg.data.caption_holdout:
        return None
    if not latent_set.captions:
        raise IlctError("config: data.caption_holdout is set but the latents carry no captions")
    return torch.tensor(kept_indices(latent_set.captions, cfg.data.caption_holdout), dtype=torch.long)


def text_conditions(cfg: Config, latent_set: LatentDir | LatentShards) -> torch.Tensor:
    """Every latent's caption condition, by latent index: (n, text_dim) pooled, or with model.text_tokens = L the
    packed (n, 1 + L, text_dim + 1) (ilct.nets.embedders), cached with the latents."""
    if not latent_set.captions:
        raise IlctError("config: model.text_dim is set but the latents carry no captions (emoji, moving_fmnist, "
                        "emoji_clips and captioned video folders have them)")
    table = caption_conditions(latent_set.path, latent_set.captions, cfg.model.text_tokens)
    dim = table.shape[-1] - (cfg.model.text_tokens > 0)
    if dim != cfg.model.text_dim:
        raise IlctError(f"config: model.text_dim={cfg.model.text_dim} but the text encoder gives {dim}-d embeddings")
    return table


def memory_reader(cfg: Config, latent_set: LatentDir, stats: LatentStats, rank: int, world: int,
                  main: bool) -> MemoryReader:
    """Small latent sets live in (host) memory; larger ones are gathered per batch from the memory map."""
    sigma_data = cfg.consistency.sigma_data
    if latent_set.nbytes <= IN_MEMORY_BYTES:
        gather = stats.normalize(latent_set.all(), sigma_data).__getitem__  # std sigma_d
    else:
        gather = lambda idx: stats.normalize(latent_set.gather(idx.numpy()), sigma_data)  # noqa: E731
    labels, kept = conditions(cfg, latent_set, main)
    n_data = len(latent_set)
    if kept is not None:
        base_gather, n_data = gather, len(kept)
        gather = lambda idx: base_gather(kept[idx])  # noqa: E731
        labels = labels[kept] if labels is not None else None
    return MemoryReader(gather, n_data, labels)


def stream_reader(cfg: Config, latent_set: LatentShards, stats: LatentStats, rank: int, world: int,
                  main: bool) -> stream.StreamReader:
    """The stream over this rank's draw groups' shards (ilct.training.stream), each of them checked now."""
    t = cfg.train
    kept = kept_latents(cfg, latent_set)
    table = text_conditions(cfg, latent_set) if cfg.model.text_dim > 0 else None
    try:
        _, _, n, mine = draw_slice(t.batch_size, world, t.draw_groups, rank)
    except ValueError as e:
        raise IlctError(f"config: {e}") from None
    keep = None
    if kept is not None:
        keep = np.zeros(len(latent_set), bool)
        keep[kept.numpy()] = True
        if main:
            print(f"caption_holdout {cfg.data.caption_holdout!r}: training on {len(kept)} of {len(latent_set)} latents",
                  flush=True)
    return stream.open_stream(latent_set, lambda raw: stats.normalize(raw, cfg.consistency.sigma_data), t.seed,
                              t.draw_groups, n, cfg.data.stream_window, mine, cfg.model.num_classes, table, keep)


@dataclass(frozen=True)
class ReaderKind:
    opens: Callable[[str], Any]  # a latent directory -> the latents as this reader reads them
    make: Callable[..., Reader]  # (cfg, latents, stats, rank, world, main) -> the reader


READERS: dict[str, ReaderKind] = {
    "memory": ReaderKind(LatentDir, memory_reader),
    "stream": ReaderKind(LatentShards, stream_reader),
}
