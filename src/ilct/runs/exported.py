"""An exported model folder (`ilct export`), read back: what makes a folder one, its checked description, and the
model, autoencoder and statistics it holds, opened for sampling as a run is (ilct.runs.opened).

    DIR/config.json                                   the export's description (FORMAT): the run's config, step,
                                                      EMA, sampler defaults, autoencoder and text encoder
    DIR/README.md                                     the model card
    DIR/model_index.json                              the diffusers pipeline's index (ilct.sharing.pipeline)
    DIR/network/config.json                           the network's diffusers config (the same run config)
    DIR/network/diffusion_pytorch_model.safetensors   the EMA weights ("model." + the checkpoint's ema keys) and
                                                      the latent statistics ("latent_mean", "latent_std")
    DIR/autoencoder/                                  the autoencoder's files (built-in, TAESD family: copied, with
                                                      their licence) or only AUTOENCODER_FILE (a diffusers id or folder)
    DIR/scheduler/scheduler_config.json               consistency models: diffusers' CMStochasticIterativeScheduler

One copy of every tensor: ilct and the diffusers pipeline read the same files.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ilct.autoencoders import Autoencoder, for_clips, load_autoencoder
from ilct.config import Config, from_dict
from ilct.errors import IlctError
from ilct.io.files import read_json, read_tensors
from ilct.latents import LatentStats
from ilct.models import build_model, resolve_device
from ilct.runs.checkpoint import load_state
from ilct.runs.opened import OpenedRun, check_run_autoencoder

FORMAT = "ilct-export-1"
META_FILE = "config.json"
CARD_FILE = "README.md"
INDEX_FILE = "model_index.json"
NETWORK_DIR = "network"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
AUTOENCODER_DIR = "autoencoder"
AUTOENCODER_FILE = "ilct_autoencoder.json"  # kind, path (relative to its folder when copied), fingerprint
SCHEDULER_DIR = "scheduler"
PREFIX = "model."  # the network's weights file: PREFIX + the EMA checkpoint's keys
STATS_KEYS = ("latent_mean", "latent_std")


@dataclass
class Exported:
    """An export's checked description."""

    folder: Path
    meta: dict[str, Any]
    cfg: Config  # the run's config; autoencoder.path is the export's own (its folder, or the diffusers reference)
    step: int


def is_export(folder: str | Path) -> bool:
    """Whether `folder` holds an export (its config.json names FORMAT)."""
    path = Path(folder) / META_FILE
    try:
        with open(path, "rb") as f:
            return f'"format": "{FORMAT}"'.encode() in f.read(1 << 12)
    except OSError:
        return False


def _field(meta: dict, key: str, kind: type, where: Path) -> Any:
    value = meta.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise IlctError(f"{where}: '{key}' is missing or not a {kind.__name__}: not an ilct export, or a damaged one")
    return value


def autoencoder_ref(folder: Path) -> dict[str, Any]:
    """DIR/autoencoder/AUTOENCODER_FILE, checked: its kind, the path it loads from (resolved), the fingerprint
    (`frames-...` for an image autoencoder applied to clips frame by frame) and whether it decodes clips."""
    where = folder / AUTOENCODER_DIR / AUTOENCODER_FILE
    ref = read_json(where)
    if not isinstance(ref, dict):
        raise IlctError(f"{where} must hold a JSON object")
    kind, path, fingerprint = (_field(ref, k, str, where) for k in ("kind", "path", "fingerprint"))
    if ref.get("copied") is True:  # the files lie beside it: a path inside the export, never outside
        inside = (where.parent / path).resolve()
        if where.parent.resolve() not in (inside, *inside.parents):
            raise IlctError(f"{where}: a copied autoencoder's path must stay inside {where.parent}, got {path!r}")
        path = str(inside)
    return {"kind": kind, "path": path, "fingerprint": fingerprint, "clips": ref.get("clips") is True}


def read_export(folder: str | Path) -> Exported:
    """An export's description, checked (format, the run config, step), read before anything heavy is built."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IlctError(f"model folder not found: {folder}")
    if not is_export(folder):
        raise IlctError(f"{folder} is not an exported model (no {META_FILE} of format {FORMAT}: make one with "
                        "`ilct export --run RUN --out DIR`)")
    where = folder / META_FILE
    meta = read_json(where)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IlctError(f"{where} is not an ilct export description ({FORMAT})")
    raw, step = _field(meta, "config", dict, where), _field(meta, "step", int, where)
    if step < 0:
        raise IlctError(f"{where}: step must be >= 0, got {step}")
    try:
        cfg = from_dict(raw)
    except IlctError as e:
        raise IlctError(f"{where}: {e}") from None
    ref = autoencoder_ref(folder)
    cfg = replace(cfg, autoencoder=replace(cfg.autoencoder, kind=ref["kind"], path=ref["path"]))
    return Exported(folder, meta, cfg, step)


def network_state(folder: Path) -> tuple[dict[str, torch.Tensor], LatentStats]:
    """(the EMA state dict with the checkpoint's keys, the latent statistics) from the network's weights file."""
    path = folder / NETWORK_DIR / WEIGHTS_FILE
    tensors = read_tensors(path)
    if any(k not in tensors for k in STATS_KEYS):
        raise IlctError(f"{path} holds no latent statistics ({', '.join(STATS_KEYS)})")
    m, s = (tensors.pop(k) for k in STATS_KEYS)
    if m.shape != s.shape or m.dtype != torch.float32 or not (torch.isfinite(m).all() and (s > 0).all()):
        raise IlctError(f"{path}: the latent statistics must be float32 of one shape, finite, with std > 0")
    state = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
    if len(state) != len(tensors):
        raise IlctError(f"{path}: every weight's name must start with {PREFIX!r}")
    ref = autoencoder_ref(folder)
    return state, LatentStats(m, s, ref["fingerprint"])


def export_autoencoder(exp: Exported) -> Autoencoder:
    """The export's autoencoder (clips: frame by frame, or the video VAE itself)."""
    return reference_autoencoder(autoencoder_ref(exp.folder))


def reference_autoencoder(ref: dict[str, Any]) -> Autoencoder:
    """The autoencoder an AUTOENCODER_FILE names (clips: `for_clips` of it), as the export was made with."""
    ae = load_autoencoder(ref["kind"], ref["path"])
    return for_clips(ae) if ref["clips"] else ae


def open_export(folder: str | Path, device: str = "auto", allow_other_autoencoder: bool = False) -> OpenedRun:
    """The EMA model, autoencoder and statistics of an export, for sampling (as ilct.runs.opened.open_run)."""
    exp = read_export(folder)
    model = build_model(exp.cfg)
    state, stats = network_state(exp.folder)
    load_state(model, state, exp.folder / NETWORK_DIR / WEIGHTS_FILE, f"model {exp.cfg.model.arch} of {exp.folder}")
    ae = export_autoencoder(exp)
    check_run_autoencoder(stats, ae, exp.folder, allow_other_autoencoder)
    dev = resolve_device(device)
    return OpenedRun(exp.cfg, model.to(dev).eval(), ae.to(dev).eval(), stats, exp.folder, exp.step)
