"""Warm start (`train.init_from: RUN`): a new run begins from another run's EMA backbone weights, or an exported
model's (`ilct export`: a model someone shared).

Every objective wraps the same backbone F as its `.net` (f = c_skip x + c_out F for consistency training,
EDM's D, MeanFlow's u), so the source run's backbone goes into the new run's wrapper whatever either
objective is. The source must be a run with a whole checkpoint (its latest, EMA weights) and the same
model.arch; every tensor both backbones have must have the same shape. Tensors only the new backbone has
(MeanFlow's second time embedder, a label embedder) keep their initial values; tensors only the source has
are left out. Both lists go into the one line `warm_start` returns.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ilct.runs.checkpoint import latest_checkpoint
from ilct.config import Config, config_from_yaml_file
from ilct.errors import IlctError
from ilct.io.files import read_tensors
from ilct.runs.exported import is_export, network_state, read_export
from ilct.runs.folder import CONFIG_FILE, is_run


def _modules(keys: list[str]) -> str:
    """`['t2_embedder.mlp.0.weight', 't2_embedder.mlp.0.bias', 'blocks.3.attn.q_norm.weight']` ->
    't2_embedder (2 tensors), blocks.*.attn (1 tensor)'."""
    counts: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        name = f"{parts[0]}.*.{parts[2]}" if len(parts) > 3 and parts[1].isdigit() else parts[0]
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{m} ({n} tensor{'s' if n > 1 else ''})" for m, n in counts.items()) or "none"


def exported_backbone(folder: Path, cfg: Config) -> tuple[Path, dict[str, torch.Tensor]]:
    """(the export, its backbone tensors) of an exported model (`ilct export`), checked against cfg's model.arch."""
    exp = read_export(folder)
    if exp.cfg.model.arch != cfg.model.arch:
        raise IlctError(f"train.init_from: {folder} holds a {exp.cfg.model.arch}, this run trains a {cfg.model.arch}: "
                        "the backbones do not fit")
    state, _ = network_state(folder)
    return folder, {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}


def source_backbone(run: Path, cfg: Config) -> tuple[Path, dict[str, torch.Tensor]]:
    """(the checkpoint, the backbone tensors of its EMA) of the source run or export, checked against cfg's
    model.arch."""
    where = f"train.init_from: {run}"
    if is_export(run):
        return exported_backbone(run, cfg)
    if not is_run(run):
        raise IlctError(f"{where} is neither a run folder (no {CONFIG_FILE} with its latent statistics) nor an "
                        "exported model (`ilct export`)")
    source = config_from_yaml_file(run / CONFIG_FILE)
    if source.model.arch != cfg.model.arch:
        raise IlctError(f"{where} trained a {source.model.arch}, this run a {cfg.model.arch}: the backbones do not fit")
    ckpt = latest_checkpoint(run, quiet=True)
    if ckpt is None:
        raise IlctError(f"{where} has no whole checkpoint to start from")
    ema = read_tensors(ckpt / "ema.safetensors")
    return ckpt, {k[len("net."):]: v for k, v in ema.items() if k.startswith("net.")}


def warm_start(model: nn.Module, cfg: Config) -> str:
    """Load the backbone weights of run cfg.train.init_from into model.net; returns what was loaded, in one line."""
    run = Path(cfg.train.init_from)
    ckpt, state = source_backbone(run, cfg)
    own = model.net.state_dict()
    for k in sorted(own.keys() & state.keys()):
        if state[k].shape != own[k].shape:
            raise IlctError(f"train.init_from: {run}'s backbone does not fit this run's: '{k}' has shape "
                            f"{tuple(state[k].shape)}, here {tuple(own[k].shape)}")
        if state[k].is_floating_point() and not torch.isfinite(state[k]).all():
            raise IlctError(f"train.init_from: {ckpt}: '{k}' holds values that are not finite")
    loaded = {k: state[k].to(own[k].dtype) for k in own if k in state}
    if not loaded:
        raise IlctError(f"train.init_from: {ckpt} holds no backbone weights of this model")
    model.net.load_state_dict(loaded, strict=False)
    missing = [k for k in own if k not in state]
    unused = [k for k in state if k not in own]
    return (f"warm start from {ckpt} (EMA): {len(loaded)} of {len(own)} backbone tensors loaded; "
            f"kept at their initial values: {_modules(missing)}; not used: {_modules(unused)}")
