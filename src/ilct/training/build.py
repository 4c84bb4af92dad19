"""Assembly apart from the loop: a Config becomes the parts of a run.

`build_data` reads and checks everything a run trains on (the autoencoder, its latents and their statistics,
the conditions) and builds the objective and the batch maker; `build_student` the model, its EMA and the
optimizer; `build_profiles` the power-function EMA's other profiles. `ilct train`, the benchmarks and the tests
use these; nothing imports pieces of the loop.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ilct.errors import IlctError
from ilct.latents import LatentStats
from ilct.models import build_model, clip_data, run_autoencoder
from ilct.objectives import Objective, make_objective
from ilct.runs.folder import STATS_FILE
from ilct.schema import Config
from ilct.training import distributed
from ilct.training.batches import BatchMaker
from ilct.training.data import load_latents
from ilct.training.readers import READERS, Reader
from ilct.training.sharding import Replicated, Sharding
from ilct.training.warmstart import warm_start

PATH_KEYS = (("autoencoder", "path"), ("data", "root"), ("data", "latents"), ("data", "cache_dir"), ("train", "init_from"))


def absolute_paths(cfg: Config) -> None:
    """Local paths in the config become absolute, so a run directory works from any folder."""
    for section, key in PATH_KEYS:
        value = getattr(getattr(cfg, section), key)
        if value and Path(value).exists():
            setattr(getattr(cfg, section), key, str(Path(value).resolve()))


def check_autoencoder(stats: LatentStats, ae, run_dir: Path, allow_other: bool, flag: str = "--resume") -> None:
    """A resumed (or branched) run trains on in the latent space it started in: the autoencoder must be the
    same one (its fingerprint, recorded with the run's statistics), unless the user asks for another explicitly
    (a resumed run only: a branch keeps its source's latent space)."""
    if stats.fingerprint and stats.fingerprint != ae.fingerprint() and not allow_other:
        how = ("pass --allow-other-autoencoder to train on in its latent space" if flag == "--resume" else
               "a branch trains in its source's latent space: give the source's autoencoder")
        raise IlctError(f"{flag}: {run_dir} was trained with another autoencoder (fingerprint {stats.fingerprint}, "
                        f"this one is {ae.fingerprint()}): {how}")


@dataclass
class RunData:
    """What a run trains on: the autoencoder, its latents (normalized on access), their statistics,
    the conditions (labels or caption embeddings) and the batch maker."""

    ae: torch.nn.Module
    stats: LatentStats
    shape: tuple[int, ...]  # (C, H, W), or (C, T, H, W) for clips
    maker: BatchMaker
    latent_set: str
    objective: Objective


def _latents_in_turn(cfg: Config, ae, device: torch.device, progress: bool, dist: distributed.Dist):
    """The latents, read (or encoded into the cache when missing) in three turns, so that no two processes encode
    into one folder and none waits on one that failed: global rank 0 first; then local rank 0 of every other node
    (a folder shared with node 0 is found whole; a node's own disk gets its own copy); then the other ranks.
    A rank that cannot read them stops every rank with one line (distributed.together)."""
    turn = 0 if dist.main else 1 if dist.local_rank == 0 else 2
    latent_set = None
    for now in range(3 if dist.active else 1):
        read = lambda: load_latents(cfg, ae, device, progress) if now == turn else latent_set  # noqa: E731
        latent_set = distributed.together(dist, read, "reading the latents")
    latent_set = distributed.together(dist, lambda: (latent_set.check_finite(), latent_set)[1], "reading the latents")
    return latent_set


def config_digest(cfg: Config) -> str:
    """A digest of the run's settings, paths left out (each node may keep its data, autoencoder and cache
    elsewhere; what they hold is compared by the latents' identity and the autoencoder's fingerprint)."""
    raw = cfg.to_dict()
    for section, key in PATH_KEYS:
        raw[section].pop(key, None)
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


def build_data(cfg: Config, run_dir: Path, resume: bool, allow_other_autoencoder: bool, progress: bool,
                  dist: distributed.Dist, device: torch.device, allow_other_latents: bool = False,
                  stats_from: Path | None = None) -> RunData:
    """Everything the run reads, checked (writes only to the latent cache; rank 0 encodes first).
    Fills in cfg's latent shape and class count. The latent statistics are the run's own when resumed, the
    source run's (`stats_from`) for a branch (ilct.training.branch), else measured on the latents."""
    main = dist.main
    clips = distributed.together(dist, lambda: clip_data(cfg), "reading the latents")  # (their shape)
    if cfg.train.fid_every and clips:
        raise IlctError("config: train.fid_every measures FID on images; this run trains on clips (set it to 0)")
    flag = "--branch-from" if stats_from else "--resume"
    stats_run = stats_from or (run_dir if resume else None)

    def autoencoder_and_stats():
        ae = run_autoencoder(cfg, clips).to(device)  # clips: frame by frame (for_clips), as the latents are encoded
        stats = LatentStats.load(stats_run / STATS_FILE) if stats_run else None
        if stats is not None:
            check_autoencoder(stats, ae, stats_run, allow_other_autoencoder and not stats_from, flag)
        return ae, stats

    ae, stats = distributed.together(dist, autoencoder_and_stats)  # every rank reads them: one line if any cannot
    latent_set = _latents_in_turn(cfg, ae, device, progress and main, dist)
    shape = tuple(latent_set.shape)  # (C, H, W) images, (C, T, H, W) clips of T latent frames
    if len(shape) not in (3, 4):
        raise IlctError(f"latents must be images (C, H, W) or clips (C, T, H, W), got {shape}")
    C, H, W, T = shape[0], shape[-2], shape[-1], (shape[1] if len(shape) == 4 else 0)
    dims = "x".join(map(str, shape))
    if H != W:
        raise IlctError(f"latents must be square, got {dims}")
    for name, have, want in (("in_channels", C, cfg.model.in_channels), ("input_size", H, cfg.model.input_size),
                             ("frames", T, cfg.model.frames)):
        if want is not None and want != have:
            raise IlctError(f"config: model.{name}={want} but the autoencoder gives {dims} latents")
    cfg.model.in_channels, cfg.model.input_size, cfg.model.frames = C, H, T
    if stats is None:
        stats = replace(latent_set.stats, fingerprint=ae.fingerprint(), latent_set=latent_set.identity)
    elif stats.latent_set and stats.latent_set != latent_set.identity and not allow_other_latents:
        raise IlctError(f"{flag}: {stats_run} was trained on other latents ({stats.latent_set}; these are "
                        f"{latent_set.identity}): pass --allow-other-latents to train on with them")
    elif tuple(stats.mean.shape) != shape:
        raise IlctError(f"{stats_run / STATS_FILE} holds statistics of {tuple(stats.mean.shape)} latents, the data gives {dims}")
    cfg.train.draw_groups = cfg.train.draw_groups or dist.world  # 0: the world size at the start, then recorded
    reader = distributed.together(dist, lambda: READERS[cfg.data.reader].make(cfg, latent_set, stats, dist.rank,
                                                                              dist.world, main), "reading the latents")
    objective = make_objective(cfg)
    distributed.same_everywhere(dist, {"run config": config_digest(cfg), "latents": f"{latent_set.identity}|{dims}",
                                       "autoencoder": ae.fingerprint()})
    try:
        maker = make_batch_maker(cfg, objective, reader.gather, reader.n_data, shape, reader.labels, dist.rank,
                                 dist.world, reader)
    except ValueError as e:
        raise IlctError(f"config: {e}") from None
    return RunData(ae, stats, shape, maker, latent_set.identity, objective)


def make_batch_maker(cfg: Config, objective: Objective, gather, n_data: int, shape: tuple[int, ...],
                     labels: torch.Tensor | None = None, rank: int = 0, world: int = 1,
                     reader: Reader | None = None) -> BatchMaker:
    """The BatchMaker of cfg's run: its seed and batch size, the objective's draw, OT where it applies; its data
    from `reader` (ilct.training.readers), or by default random access through gather, n_data and labels."""
    t = cfg.train
    return BatchMaker(gather, n_data, shape, labels, t.batch_size, t.seed, objective.draw,
                      cfg.method.ot_coupling and objective.couples_noise, rank, world, t.draw_groups or 1, reader)


def build_student(cfg: Config, device: torch.device, init: bool = True, quiet: bool = False,
                  sharding: Sharding | None = None) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    """The network in training mode, its EMA copy and the optimizer, laid out over the ranks by `sharding`
    (ilct.training.sharding; default: whole on this process, flat buffers with `train.fused_optimizer`, and with
    `train.compile` too the RAdam update is one compiled kernel). Seeded by the caller. With `train.init_from`
    (and `init`: the run starts at step 0, not from a checkpoint of its own) the backbone starts from that run's
    EMA weights (ilct.training.warmstart; one line printed unless `quiet`)."""
    model = build_model(cfg)
    if cfg.train.init_from and init:
        line = warm_start(model, cfg)
        if not quiet:
            print(line, flush=True)
    return (sharding or Replicated()).parts(model.train(), cfg, device)


def build_profiles(cfg: Config, ema: torch.nn.Module, sharding: Sharding | None = None) -> list[torch.nn.Module]:
    """train.ema=power: the profiles of train.ema_stds after the first (which is `ema`, the one sampled), copies
    of it laid out as it is (flat, or sharded: ilct.training.sharding); none for the constant EMA. Each is set by
    its first update."""
    if cfg.train.ema != "power":
        return []
    return [(sharding or Replicated()).copy(ema) for _ in cfg.train.ema_stds[1:]]
