"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

    RUN_DIR/checkpoints/step_000500/
        model.safetensors       student weights
        ema.safetensors         EMA weights (used for sampling)
        optimizer.safetensors   optimizer tensors;  optimizer.json  its other state
        rng.safetensors         torch CPU / CUDA / data-generator RNG states
        state.json              step and counters
    RUN_DIR/checkpoints/latest  name of the newest complete checkpoint

A checkpoint is written into a temporary folder and renamed into place, then
`latest` is replaced, so a crash at any instant leaves the previous one whole.
No pickled objects anywhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ilct import faults
from ilct.errors import IlctError
from ilct.files import read_json, read_tensors, save_tensors, write_text

__all__ = ["latest_checkpoint", "list_checkpoints", "load_weights", "read_json", "read_tensors", "save_checkpoint"]

STEP_DIR = re.compile(r"^step_(\d{9})$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    ema: nn.Module,
    opt: torch.optim.Optimizer,
    rng: dict[str, torch.Tensor],
    state: dict[str, Any],
    keep: int = 3,
) -> Path:
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise IlctError(f"refusing to save a checkpoint at step {step}: weights '{name}' are not finite")
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:09d}"
    for stale in root.glob(".tmp_step_*"):  # left by a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp_step_{step:09d}_{os.getpid()}"
    tmp.mkdir()
    try:
        opt_tensors, opt_meta = optimizer_to_files(opt)
        for write in (
            lambda: save_tensors(model.state_dict(), tmp / "model.safetensors"),
            lambda: save_tensors(ema.state_dict(), tmp / "ema.safetensors"),
            lambda: save_tensors(opt_tensors, tmp / "optimizer.safetensors"),
            lambda: write_text(tmp / "optimizer.json", json.dumps(opt_meta)),
            lambda: save_tensors(rng, tmp / "rng.safetensors"),
            lambda: write_text(tmp / "state.json", json.dumps({"step": step, **state}, indent=2)),
        ):
            write()
            faults.checkpoint_file_written()
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        write_text(root / "latest", final.name + "\n")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise IlctError(f"cannot write checkpoint {final}: {e} (earlier checkpoints are intact)") from None
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names, else the newest complete one on disk."""
    root = run_dir / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "state.json").is_file():
            return cand
    found = [p for p in list_checkpoints(run_dir) if (p / "state.json").is_file()]
    return found[-1] if found else None


def load_weights(module: nn.Module, path: Path, what: str) -> None:
    """Load a safetensors state dict, with one clear line if it does not fit the model."""
    state = read_tensors(path)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        detail = f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}"
        raise IlctError(f"{path} does not match {what}: {detail}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise IlctError(f"{path} does not match {what}: '{k}' has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    module.load_state_dict(state)
