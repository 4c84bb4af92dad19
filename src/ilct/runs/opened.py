"""A finished run opened again for sampling, held to the rules `ilct train --resume` keeps: the run's own
checkpoint (the newest that loads), its architecture, and the autoencoder it was trained with.

The run folder's layout and rules live in ilct.runs.folder; checkpoints in ilct.runs.checkpoint.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ilct.autoencoders import Autoencoder
from ilct.config import Config, config_from_yaml_file
from ilct.errors import IlctError
from ilct.latents import LatentStats
from ilct.models import build_model, resolve_device, run_autoencoder
from ilct.runs.checkpoint import latest_checkpoint, list_checkpoints, load_weights, read_state, whole
from ilct.runs.folder import CONFIG_FILE, STATS_FILE


@dataclass
class OpenedRun:
    cfg: Config
    model: nn.Module  # EMA weights, eval mode
    autoencoder: Autoencoder
    stats: LatentStats
    checkpoint: Path
    step: int


def run_config(run_dir: str | Path) -> Config:
    """A run's saved config (read and validated; nothing heavy is built)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise IlctError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    return config_from_yaml_file(run_dir / CONFIG_FILE)


def own_checkpoint(run_dir: Path, checkpoint: str | Path, allow_other: bool) -> Path:
    """A checkpoint folder given with --checkpoint: one of the run's own (directly in RUN/checkpoints, no link
    leading out), unless the user says it is not with --allow-other-checkpoint; whole either way."""
    ckpt = Path(checkpoint)
    if not ckpt.is_dir():
        raise IlctError(f"checkpoint not found: {ckpt}")
    if not allow_other and ckpt.resolve() not in [p.resolve() for p in list_checkpoints(run_dir)]:
        raise IlctError(f"--checkpoint {ckpt} is not a checkpoint of {run_dir} (its checkpoints/step_NNNNNNNNN "
                        "folders): pass --allow-other-checkpoint to sample it with this run's config, statistics "
                        "and autoencoder")
    problem = whole(ckpt)
    if problem:
        raise IlctError(f"{ckpt} is not a whole checkpoint: {problem}")
    return ckpt


def check_arch(ckpt: Path, cfg: Config) -> dict:
    """The checkpoint's state.json, whose architecture (where recorded) must be the config's."""
    state = read_state(ckpt)
    arch = state.get("arch", cfg.model.arch)
    if arch != cfg.model.arch:
        raise IlctError(f"{ckpt} holds a {str(arch)[:40]!r} model, the run's config a {cfg.model.arch}")
    return state


def check_run_autoencoder(stats: LatentStats, ae: Autoencoder, run_dir: Path, allow_other: bool) -> None:
    """The autoencoder that decodes a run's samples is the one it was trained with (fingerprint in its statistics)."""
    if stats.fingerprint and stats.fingerprint != ae.fingerprint() and not allow_other:
        raise IlctError(f"{run_dir} was trained with another autoencoder (fingerprint {stats.fingerprint}, this one is "
                        f"{ae.fingerprint()}: its folder changed since): pass --allow-other-autoencoder to decode "
                        "through it anyway")


def _load_ema(model: nn.Module, run_dir: Path, cfg: Config, candidates: list[Path]) -> tuple[Path, int]:
    """The EMA weights of the first candidate that loads (a damaged newer one is passed over with one note)."""
    problem = None
    for ckpt in candidates:
        try:
            state = check_arch(ckpt, cfg)
            load_weights(model, ckpt / "ema.safetensors", f"model {cfg.model.arch} of {run_dir}")
        except IlctError as e:
            if len(candidates) == 1:
                raise
            problem = problem or str(e)
            continue
        if ckpt != candidates[0]:
            print(f"note: {candidates[0].name} cannot be loaded ({problem}); using {ckpt.name}", file=sys.stderr)
        return ckpt, state["step"]
    raise IlctError(f"no checkpoint of {run_dir} can be loaded: {problem}")


def open_run(run_dir: str | Path, checkpoint: str | Path | None = None, device: str = "auto",
             allow_other_autoencoder: bool = False, allow_other_checkpoint: bool = False) -> OpenedRun:
    """The EMA model, autoencoder and statistics of a run, for sampling (clip runs: the autoencoder takes clips).

    Held to the rules `ilct train --resume` keeps: the checkpoint is the run's own (the latest whole one, or an
    older whole one with a note when it does not load) unless allow_other_checkpoint, its architecture and shapes
    are the config's, and the autoencoder is the one the run was trained with unless allow_other_autoencoder."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    if checkpoint:
        candidates = [own_checkpoint(run_dir, checkpoint, allow_other_checkpoint)]
    else:
        first = latest_checkpoint(run_dir)
        if first is None:
            raise IlctError(f"{run_dir} has no whole checkpoint yet")
        older = [p for p in reversed(list_checkpoints(run_dir)) if p.name < first.name and whole(p) is None]
        candidates = [first, *older]
    dev = resolve_device(device)
    model = build_model(cfg)
    ckpt, step = _load_ema(model, run_dir, cfg, candidates)
    stats = LatentStats.load(run_dir / STATS_FILE)
    ae = run_autoencoder(cfg, bool(cfg.model.frames))  # the saved config's resolved shape: clips frame by frame
    check_run_autoencoder(stats, ae, run_dir, allow_other_autoencoder)
    return OpenedRun(cfg, model.to(dev).eval(), ae.to(dev).eval(), stats, ckpt, step)
