"""Branching a run (`ilct train --branch-from SOURCE --out NEW --set KEY=VALUE ...`): one switch at a time
from the same checkpoint.

NEW starts from the source checkpoint's whole training state: student and EMA weights, the optimizer's
moments and step counts, the step k (so the curriculum N(k) and every batch, drawn from the generator of
(train.seed, k), go on where they were), the non-finite counters, and the source's latent statistics. Its
config is the source run's config.yaml with the user's `--set` values: any key, as long as the network
still loads the checkpoint's weights (same model shape) and the autoencoder is the same one (same latent
space). What changed is recorded in NEW's config.yaml under `branch:` (the source run, the step, the changed
keys as `--set` values). The source run is only read, never written, and nothing is written before every
input is checked.

SOURCE is a run folder (its latest whole checkpoint) or one of its checkpoint folders
(RUN/checkpoints/step_XXXXXXXXX). The branch point is written into NEW as its own first checkpoint, so NEW
resumes (`--resume`) and evaluates (`ilct eval --checkpoint`) like any run; its log starts after that step.

Settings the checkpoint holds rather than the config: the optimizer's hyperparameters are restored with its
moments, so a changed train.lr, beta1, beta2, adam_eps or weight_decay is written into the restored
optimizer (lr keeps the source's halving by the non-finite policy, if any). A changed train.total_steps
changes the curriculum's stage lengths from the branch step on (N(k) depends on K; METHOD.md section 3).
With no key changed, NEW reproduces the source's own later checkpoints bit for bit on the same machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from ilct.runs.checkpoint import latest_checkpoint, missing_files, read_state, read_tensors, restore, save_checkpoint, step_of, whole
from ilct.config import BranchConfig, Config, config_from_yaml_file, from_dict, merge_raw, parse_overrides
from ilct.errors import IlctError
from ilct.runs.folder import CHECKPOINTS_DIR, CONFIG_FILE, STATS_FILE, is_run
from ilct.training.ema import checkpoint_record

FLAG = "--branch-from"
# config keys the optimizer's saved param_groups hold (restored with the moments, so set again when changed)
OPTIMIZER_KEYS = {"train.lr": "lr", "train.beta1": "betas", "train.beta2": "betas", "train.adam_eps": "eps",
                  "train.weight_decay": "weight_decay"}
# keys that decide which network is built: named in the one line when the checkpoint does not load
SHAPE_SECTIONS = ("model.", "method.nsln", "train.objective", "train.bf16_residual")


@dataclass
class Source:
    """The checkpoint a branch starts from."""

    run: Path  # the source run folder (absolute)
    checkpoint: Path  # RUN/checkpoints/step_XXXXXXXXX
    step: int
    cfg: Config  # the source run's config.yaml
    rng: dict[str, torch.Tensor] | None = None  # its RNG record, read with the weights (restore_branch)


def find_source(source: str | Path) -> Source:
    """A run folder (its latest whole checkpoint) or a checkpoint folder of a run, checked whole."""
    if not str(source).strip():
        raise IlctError(f"{FLAG} is empty: name a run folder or one of its checkpoints")
    path = Path(source).resolve()
    if not path.exists():
        raise IlctError(f"{FLAG} {source}: no such run or checkpoint")
    if is_run(path):
        run, ckpt = path, latest_checkpoint(path, quiet=True)
        if ckpt is None:
            raise IlctError(f"{FLAG} {source}: the run has no whole checkpoint to branch from")
    elif step_of(path) is not None and path.parent.name == CHECKPOINTS_DIR and is_run(path.parent.parent):
        run, ckpt = path.parent.parent, path
        problem = whole(ckpt)
        if problem:
            raise IlctError(f"{FLAG} {source} is not a whole checkpoint: {problem}")
    else:
        raise IlctError(f"{FLAG} {source} is neither a run folder ({CONFIG_FILE} beside {STATS_FILE}) "
                        f"nor a checkpoint of one ({CHECKPOINTS_DIR}/step_XXXXXXXXX)")
    return Source(run, ckpt, read_state(ckpt)["step"], config_from_yaml_file(run / CONFIG_FILE))


def branch_config(source: str | Path, overrides: list[str]) -> Config:
    """The source run's config with the `--set` overrides (`ilct train --branch-from`; checked again in
    `prepare`). branch.* is written by ilct and cannot be set."""
    raw = parse_overrides(overrides)
    if "branch" in raw:
        raise IlctError(f"--set branch.* is written by {FLAG} (the source, its step and the changed keys), not set")
    return from_dict(merge_raw(find_source(source).cfg.to_dict(), raw))


def _as_set(value: Any) -> str:
    """A config value as `--set` writes it (read back by config.parse_overrides to the same value)."""
    if not isinstance(value, str):
        return json.dumps(value)
    try:
        plain = ";" not in value and yaml.safe_load(value) == value
    except yaml.YAMLError:
        plain = False
    return value if plain else json.dumps(value)  # quoted: "", "true", "1e-3" as strings


def changed_keys(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """section.key -> (value in a, value in b) for every key that differs, branch.* left out."""
    da, db = a.to_dict(), b.to_dict()
    return {f"{s}.{k}": (da[s][k], db[s][k]) for s in da if s != "branch" for k in da[s] if da[s][k] != db[s][k]}


def _inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def prepare(cfg: Config, source: str | Path, run_dir: Path) -> Source:
    """Check the branch and record it in cfg.branch (paths in cfg already absolute). Reads only."""
    src = find_source(source)
    if _inside(run_dir, src.run) or _inside(src.run, run_dir):
        raise IlctError(f"--out {run_dir} and {FLAG} {src.run} overlap: a branch is a new run folder, "
                        "and the source run is never written")
    if src.step >= cfg.train.total_steps:
        raise IlctError(f"{FLAG}: {src.checkpoint.name} is at step {src.step}, and train.total_steps is "
                        f"{cfg.train.total_steps}: nothing to train; raise train.total_steps")
    m, sm = cfg.model, src.cfg.model  # the latent shape, when the config leaves it to the data: the source's
    m.in_channels, m.input_size = m.in_channels or sm.in_channels, m.input_size or sm.input_size
    m.frames = sm.frames if m.frames is None else m.frames
    ours = replace(cfg, branch=BranchConfig())
    changes = changed_keys(src.cfg, ours)
    cfg.branch = BranchConfig(run=str(src.run), step=src.step,
                              changes="; ".join(f"{k}={_as_set(new)}" for k, (_, new) in changes.items()))
    return src


def restore_branch(src: Source, model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer,
                   cfg: Config, profiles: Sequence[torch.nn.Module] = ()) -> dict[str, Any]:
    """The source checkpoint's student, EMA (train.ema=power: its profiles, which must be the source's) and
    optimizer state into this run's parts (one line if the network does not fit), the changed optimizer settings
    written into the restored optimizer; returns its state.json."""
    try:
        src.rng = read_tensors(src.checkpoint / "rng.safetensors")  # everything read now: nothing is read later
        state = restore(src.checkpoint, model, ema, opt, cfg, profiles)
    except IlctError as e:
        if missing_files(src.checkpoint):  # rotated away by a running trainer
            raise IlctError(f"{FLAG}: {src.checkpoint} was deleted while it was read (its run is training and keeps "
                            f"only its newest train.keep_checkpoints): branch again, from the run or a newer "
                            "checkpoint") from None
        if "does not match" not in str(e):  # a damaged checkpoint, not another network
            raise IlctError(f"{FLAG}: {e}") from None
        shape = [k for k in changed_keys(src.cfg, cfg) if k.startswith(SHAPE_SECTIONS)]
        why = f" (changed: {', '.join(shape)})" if shape else ""
        raise IlctError(f"{FLAG}: the checkpoint's network does not fit this config's{why}; a branch keeps the "
                        f"source's network: {e}") from None
    t, before = cfg.train, src.cfg.train
    changed = {OPTIMIZER_KEYS[k] for k in changed_keys(src.cfg, cfg) if k in OPTIMIZER_KEYS}
    for group in opt.param_groups:
        if "lr" in changed:  # keep a halving by the non-finite policy (ilct.training.nonfinite)
            group["lr"] = t.lr * (group["lr"] / before.lr)
        if "betas" in changed:
            group["betas"] = (t.beta1, t.beta2)
        if "eps" in changed:
            group["eps"] = t.adam_eps
        if "weight_decay" in changed:
            group["weight_decay"] = t.weight_decay
    return state


def write_branch_point(run_dir: Path, src: Source, model, ema, opt, state: dict[str, Any], cfg: Config,
                       profiles: Sequence[torch.nn.Module] = ()) -> Path:
    """NEW's first checkpoint: the restored state at the source's step (its RNG record and counters copied), so
    NEW resumes and evaluates from the branch point like from any of its checkpoints."""
    rng = src.rng if src.rng is not None else read_tensors(src.checkpoint / "rng.safetensors")
    extra = {k: v for k, v in state.items() if k not in ("step", "ema_stds")}
    extra["branched_from"] = str(src.checkpoint)
    return save_checkpoint(run_dir, src.step, model, ema, opt, rng, {**extra, **checkpoint_record(cfg)},
                           keep=cfg.train.keep_checkpoints, profiles=profiles)
