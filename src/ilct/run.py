"""A run's pieces built from its config, and a finished run opened again for sampling.

The run folder's layout and rules live in ilct.runfolder; checkpoints in ilct.checkpoint.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ilct.autoencoders import Autoencoder, for_clips, load_autoencoder
from ilct.checkpoint import latest_checkpoint, list_checkpoints, load_weights, read_state, whole
from ilct.config import Config, backbone_kwargs, config_from_yaml_file, latent_shape
from ilct.data.clips import ClipDataset
from ilct.data.images import ImageDataset
from ilct.latents import LatentDir, LatentStats, cached_latents
from ilct.errors import IlctError
from ilct.nets import build_backbone
from ilct.objectives import make_objective
from ilct.runfolder import CONFIG_FILE, STATS_FILE


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise IlctError(f"train.device={name} but CUDA is not available on this machine (use cpu or auto)")
    return torch.device(name)


def build_model(cfg: Config) -> nn.Module:
    """The backbone named by cfg.model.arch, a DiT or an ADM UNet (ilct.nets.ARCHS; the latent shape must be
    resolved), wrapped in the objective's parameterization (f(x, sigma) for consistency training, D for EDM)."""
    m = cfg.model
    if m.in_channels is None or m.input_size is None:
        raise ValueError("model.in_channels / model.input_size are not resolved")
    try:
        net = build_backbone(m.arch, m.input_size, m.in_channels, m.frames or 0, **backbone_kwargs(cfg))
    except ValueError as e:
        dims = "x".join(map(str, latent_shape(cfg)))
        raise IlctError(f"config: model.arch {m.arch} does not fit {dims} latents: {e}") from None
    return make_objective(cfg).wrap(net)


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of the model in eval mode."""
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


def load_dataset(cfg: Config) -> ImageDataset | ClipDataset:
    """The images, or the clips (ilct.data.CLIP_DATASETS: data.frames frames data.frame_stride apart), of
    a run's config."""
    from ilct.data import load_dataset as load

    d = cfg.data
    return load(d.dataset, d.root, d.split, d.resolution, d.rgb, d.labels_from_subfolders, d.frames, d.frame_stride)


def clip_data(cfg: Config) -> bool:
    """Whether the data a run trains on are clips: model.frames > 0 where it is set; else the latent
    directory's shape is (C, T, H, W) (data.latents), or the dataset is a clip dataset."""
    from ilct.data import CLIP_DATASETS

    if cfg.model.frames is not None:
        return cfg.model.frames > 0
    if cfg.data.latents:
        return len(LatentDir(cfg.data.latents).shape) == 4
    return cfg.data.dataset in CLIP_DATASETS


def run_autoencoder(cfg: Config, clips: bool) -> Autoencoder:
    """The run's autoencoder: cfg.autoencoder, and for clips `for_clips` of it (an image autoencoder frame by
    frame, fingerprint `frames-...`; a video VAE as it is), the one the latents were encoded with."""
    ae = load_autoencoder(cfg.autoencoder.kind, cfg.autoencoder.path)
    return for_clips(ae) if clips else ae


def load_latents(cfg: Config, ae: Autoencoder, device: torch.device, progress: bool) -> LatentDir:
    """The run's latents: a given latent directory, or the cache (encoding on first use). Never a clip
    dataset's `heldout` split: it holds only the held-out (class, motion) pairs, never trained on."""
    if cfg.data.split == "heldout" and not cfg.data.latents:
        raise IlctError(f"data.split=heldout: {cfg.data.dataset}'s held-out (class, motion) pairs are never trained on "
                        "(train on split train; sample their captions with `ilct sample --prompt`)")
    if cfg.data.latents:
        latents = LatentDir(cfg.data.latents)
        latents.check_autoencoder(ae)
        if (latents.meta.get("data") or {}).get("split") == "heldout":
            raise IlctError(f"data.latents={latents.path} holds the held-out split of {latents.meta.get('dataset', '?')}: "
                            "its (class, motion) pairs are never trained on (encode split train)")
        return latents
    return cached_latents(ae, load_dataset(cfg), cfg.data.cache_dir or None, device=device, progress=progress)


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
