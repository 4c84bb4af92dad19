"""A run's network and frozen parts built from its config: the device, the backbone wrapped in its objective's
parameterization (and its EMA copy), and the autoencoder its latents live in (frame by frame for clips).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ilct.autoencoders import Autoencoder, for_clips, load_autoencoder
from ilct.config import backbone_kwargs
from ilct.schema import Config, latent_shape
from ilct.data import CLIP_DATASETS
from ilct.errors import IlctError
from ilct.latents import read_meta
from ilct.nets import build_backbone
from ilct.objectives import make_objective


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


def clip_data(cfg: Config) -> bool:
    """Whether the data a run trains on are clips: model.frames > 0 where it is set; else the latent
    directory's shape is (C, T, H, W) (data.latents; only its meta.json is read), or the dataset is a clip dataset."""
    if cfg.model.frames is not None:
        return cfg.model.frames > 0
    if cfg.data.latents:
        return len(read_meta(Path(cfg.data.latents))[1]) == 4
    return cfg.data.dataset in CLIP_DATASETS


def run_autoencoder(cfg: Config, clips: bool) -> Autoencoder:
    """The run's autoencoder: cfg.autoencoder, and for clips `for_clips` of it (an image autoencoder frame by
    frame, fingerprint `frames-...`; a video VAE as it is), the one the latents were encoded with."""
    ae = load_autoencoder(cfg.autoencoder.kind, cfg.autoencoder.path)
    return for_clips(ae) if clips else ae
