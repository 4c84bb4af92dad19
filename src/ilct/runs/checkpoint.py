"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

    RUN_DIR/checkpoints/step_000500/
        model.safetensors       student weights
        ema.safetensors         EMA weights (used for sampling; train.ema=power: the first profile)
        ema_profiles.safetensors  train.ema=power with several profiles: the others, keys "<i>.<name>" (i >= 1
                                the profile's place in train.ema_stds, recorded in state.json's ema_stds)
        optimizer.safetensors   optimizer tensors;  optimizer.json  its other state
        (train.sharding=fsdp: optimizer/, the moments as torch.distributed.checkpoint wrote them from every rank's
        shards, read back at any world size; optimizer.json the hyperparameters; ilct.training.sharding)
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
import random
import re
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ilct.runs import faults
from ilct.schema import SIGMA_REL_MAX, Config
from ilct.errors import IlctError
from ilct.io.files import read_json, read_tensors, save_tensors, write_text
from ilct.runs.folder import CHECKPOINTS_DIR

__all__ = ["check_layout", "latest_checkpoint", "list_checkpoints", "load_state", "load_weights", "read_json", "read_state", "read_tensors",
           "save_checkpoint", "snapshot_checkpoint", "snapshot_files", "whole", "write_checkpoint", "BackgroundWriter",
           "StateIO"]

STEP_DIR = re.compile(r"^step_(\d{9})$")
PROFILES_FILE = "ema_profiles.safetensors"
OPTIMIZER_DIR = "optimizer"  # a sharded run's moments (torch.distributed.checkpoint's folder: .metadata and one file per rank)
STAGING_PREFIX = ".sharded_step_"  # where the ranks write a sharded checkpoint's optimizer/ before rank 0 moves it in


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


@dataclass
class Snapshot:
    """What a checkpoint holds, taken at its step: the files' tensors (host copies when taken for a background
    write) and texts, in the order they are written."""

    step: int
    files: list[tuple[str, dict[str, torch.Tensor] | str | Path]]  # (a Path: a folder moved in whole)


def snapshot_checkpoint(step: int, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                        rng: dict[str, torch.Tensor], state: dict[str, Any], profiles: Sequence[nn.Module] = (),
                        copy: bool = False) -> Snapshot:
    """The checkpoint of step `step` of whole modules (refused when the weights are not finite); with `copy`,
    every tensor is copied to host memory now, so training may go on while a background writer writes it."""
    return snapshot_files(step, module_files(model, ema, opt, profiles), rng, state, copy)


def module_files(model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                 profiles: Sequence[nn.Module] = ()) -> list[tuple[str, dict[str, torch.Tensor] | str]]:
    """The training state's files of modules whose tensors are whole (one process, or a DDP replica)."""
    opt_tensors, opt_meta = optimizer_to_files(opt)
    return [("model.safetensors", model.state_dict()), ("ema.safetensors", ema.state_dict()),
            *([(PROFILES_FILE, profile_tensors(profiles))] if profiles else []),
            ("optimizer.safetensors", opt_tensors), ("optimizer.json", json.dumps(opt_meta))]


def snapshot_files(step: int, files: list[tuple[str, dict[str, torch.Tensor] | str | Path]], rng: dict[str, torch.Tensor],
                   state: dict[str, Any], copy: bool = False) -> Snapshot:
    """A snapshot of the training state's files (model.safetensors first; a Path is a folder the ranks wrote, moved
    in whole: ilct.training.sharding), the RNG record and state.json; refused when the weights are not finite."""
    for name, t in dict(files)["model.safetensors"].items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise IlctError(f"refusing to save a checkpoint at step {step}: weights '{name}' are not finite")
    host = (lambda d: {k: v.detach().to("cpu", copy=True) for k, v in d.items()}) if copy else (lambda d: d)
    files = [(name, host(c) if isinstance(c, dict) else c) for name, c in files]
    return Snapshot(step, [*files, ("rng.safetensors", host(rng)), ("state.json", json.dumps({"step": step, **state}, indent=2))])


def write_checkpoint(run_dir: Path, snap: Snapshot, keep: int = 3, protect: int | None = None) -> Path:
    """Write a snapshot atomically (a temporary folder, renamed), point `latest` at it, and delete all but the
    newest `keep` checkpoints (the checkpoint of step `protect`, the best one by FID, is never deleted)."""
    root = run_dir / CHECKPOINTS_DIR
    final = root / f"step_{snap.step:09d}"
    tmp = root / f".tmp_step_{snap.step:09d}_{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp_step_*"):  # left by a crash mid-write
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        for name, content in snap.files:
            if isinstance(content, str):
                write_text(tmp / name, content)
            elif isinstance(content, Path):
                os.replace(content, tmp / name)
            else:
                save_tensors(content, tmp / name)
            faults.checkpoint_file_written()
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        write_text(root / "latest", final.name + "\n")
    except BaseException as e:  # a failed save leaves no temporary folder, whatever stopped it
        shutil.rmtree(tmp, ignore_errors=True)
        for _, content in snap.files:
            if isinstance(content, Path):
                shutil.rmtree(content, ignore_errors=True)
        if isinstance(e, OSError):
            raise IlctError(f"cannot write checkpoint {final}: {e.strerror or e} (earlier checkpoints are intact)") from None
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        if protect is None or old.name != f"step_{protect:09d}":
            shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    ema: nn.Module,
    opt: torch.optim.Optimizer,
    rng: dict[str, torch.Tensor],
    state: dict[str, Any],
    keep: int = 3,
    protect: int | None = None,
    profiles: Sequence[nn.Module] = (),
) -> Path:
    """Write step `step` now (snapshot_checkpoint, then write_checkpoint). `profiles`: train.ema=power's profiles
    after the first (`ema`), into ema_profiles.safetensors (`state` then holds ema_stds)."""
    return write_checkpoint(run_dir, snapshot_checkpoint(step, model, ema, opt, rng, state, profiles), keep, protect)


class BackgroundWriter:
    """Checkpoints written off the critical path (train.async_checkpoint): `submit` takes a snapshot whose tensors
    are host copies and writes it in a thread while training goes on; at most one write is in flight (a second
    waits for the first). `wait` joins it and raises what it raised; the final save, a stop by signal, a roll
    back and the best-checkpoint record wait for it."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, run_dir: Path, snap: Snapshot, keep: int, protect: int | None) -> None:
        self.wait()

        def work() -> None:
            try:
                write_checkpoint(run_dir, snap, keep, protect)
            except BaseException as e:  # raised in the training thread by the next wait
                self._error = e

        self._thread = threading.Thread(target=work, name=f"ilct-checkpoint-{snap.step}")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def profile_tensors(profiles: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """The profiles after the first as one state dict, keys "<i>.<name>" (i = 1, 2, ...: the place in train.ema_stds)."""
    return {f"{i}.{k}": v for i, m in enumerate(profiles, start=1) for k, v in m.state_dict().items()}


CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "optimizer.json",
                    "rng.safetensors", "state.json")


def missing_files(path: Path) -> list[str]:
    """The files of CHECKPOINT_FILES the checkpoint folder lacks (a sharded run's has OPTIMIZER_DIR in place of
    optimizer.safetensors)."""
    return [f for f in CHECKPOINT_FILES if not (path / f).is_file() and not (f == "optimizer.safetensors" and sharded(path))]


def sharded(path: Path) -> bool:
    """Whether the checkpoint holds its optimizer state as a sharded run writes it (OPTIMIZER_DIR)."""
    return (path / OPTIMIZER_DIR / ".metadata").is_file()


def step_of(path: Path) -> int | None:
    """The step a checkpoint folder's name gives (step_000000500 -> 500), or None."""
    m = STEP_DIR.match(path.name)
    return int(m.group(1)) if m else None


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().parent == root.resolve()
    except (OSError, RuntimeError):
        return False


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders (step_XXXXXXXXX directly inside checkpoints/, nothing that leads outside)."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if STEP_DIR.match(p.name) and p.is_dir() and _inside(p, root))


def check_layout(run_dir: Path) -> None:
    """The run's checkpoints/ folder as ilct writes it, checked before a resumed run trains: `latest` a file,
    every step_NNNNNNNNN entry a folder of the run's own (not a link, not a file)."""
    root = run_dir / CHECKPOINTS_DIR
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise IlctError(f"{root} is not a folder of the run (a link or a file): move it away and resume again")
    if not root.is_dir():
        return
    latest = root / "latest"
    if latest.is_symlink() or (latest.exists() and not latest.is_file()):
        raise IlctError(f"{latest} is a folder or a link, not the file ilct writes there: remove it and resume again")
    for p in sorted(root.iterdir()):
        if STEP_DIR.match(p.name) and (p.is_symlink() or not p.is_dir()):
            raise IlctError(f"{p} is a link or a file, not a checkpoint folder of this run: move it away and resume again")


# state.json's fields (ilct writes exactly these; a missing optional one takes its default where read)
STATE_INTS = {"step": (0, 999_999_999), "nonfinite_total": (0, 2**53), "world_size": (1, 2**20)}  # step: 9 digits
STATE_TEXTS = {"arch": 200, "branched_from": 4096}  # most characters
MAX_DIGEST = 64


def _check_state_field(key: str, value: Any) -> str | None:
    """What is wrong with one known state.json field, or None."""
    if key in STATE_INTS:
        lo, hi = STATE_INTS[key]
        ok = type(value) is int and lo <= value <= hi
        return None if ok else f"must be an integer in {lo}..{hi}"
    if key == "lr_halved":
        return None if type(value) is bool else "must be true or false"
    if key in STATE_TEXTS:
        ok = isinstance(value, str) and 0 < len(value) <= STATE_TEXTS[key]
        return None if ok else f"must be a string of 1..{STATE_TEXTS[key]} characters"
    if key == "rng":  # a record for inspection (ilct.runs.checkpoint.rng_state); never read back
        ok = isinstance(value, dict) and all(isinstance(v, list) for v in value.values())
        return None if ok else "must be an object of lists"
    if key == "ema_stds":  # train.ema=power: the relative stds of the profiles this checkpoint holds
        ok = isinstance(value, list) and 0 < len(value) <= 16 and all(
            type(v) in (int, float) and 0 < v <= SIGMA_REL_MAX for v in value)
        return None if ok else f"must be a list of 1..16 relative stds in (0, {SIGMA_REL_MAX:.6f}]"
    if key == "replica_digests":
        ok = isinstance(value, list) and 0 < len(value) <= STATE_INTS["world_size"][1] and all(
            isinstance(d, str) and 0 < len(d) <= MAX_DIGEST for d in value)
        return None if ok else "must be a list of digest strings"
    return None  # another key: not read by ilct


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's state.json, validated: every field ilct reads by type and range, and the step matching
    the folder name (a checkpoint copied elsewhere under another name, given with --checkpoint, keeps its
    own step)."""
    file = path / "state.json"
    state = read_json(file)
    if not isinstance(state, dict):
        raise IlctError(f"{file} is not a JSON object")
    if "step" not in state:
        raise IlctError(f"{file} has no step")
    for key, value in state.items():
        problem = _check_state_field(key, value)
        if problem:
            raise IlctError(f"{file}: '{key}' {problem}, got {repr(value)[:60]}")
    if step_of(path) is not None and state["step"] != step_of(path):
        raise IlctError(f"{file}: step {state['step']} does not match the folder name {path.name}")
    return state


def whole(path: Path) -> str | None:
    """None when the checkpoint folder has every file and a valid state.json, else what is wrong."""
    missing = missing_files(path)
    if missing:
        return f"{', '.join(missing)} missing"
    try:
        state = read_state(path)
    except IlctError as e:
        return str(e)
    if len(state.get("ema_stds", ())) > 1 and not (path / PROFILES_FILE).is_file():
        return f"{PROFILES_FILE} missing"
    return None


def _pointer(root: Path) -> tuple[Path | None, str]:
    """The checkpoint `latest` names, if it names one inside the run; else None and why not."""
    pointer = root / "latest"
    if not pointer.is_file():
        return None, "there is no checkpoints/latest"
    try:
        name = pointer.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None, "checkpoints/latest is unreadable"
    cand = root / name
    if not STEP_DIR.match(name) or not cand.is_dir() or not _inside(cand, root):
        return None, f"checkpoints/latest names {name[:60]!r}, not a checkpoint of this run"
    problem = whole(cand)
    if problem:
        return None, f"checkpoints/latest names {name}, which is not whole ({problem})"
    return cand, ""


def latest_checkpoint(run_dir: Path, quiet: bool = False) -> Path | None:
    """The whole checkpoint `latest` names; if it names none (or one outside the run, or a damaged one),
    the newest whole checkpoint, with one line on stderr saying so. None if the run has no whole one."""
    root = run_dir / CHECKPOINTS_DIR
    cand, why = _pointer(root)
    if cand is not None:
        return cand
    found = [p for p in list_checkpoints(run_dir) if whole(p) is None]
    if found and root.joinpath("latest").exists() and not quiet:
        print(f"note: {why}; using the newest whole checkpoint, {found[-1].name}", file=sys.stderr)
    return found[-1] if found else None


class StateIO:
    """How a restore puts whole tensors read from a checkpoint into the run's modules and optimizer: as they are
    (one process, or DDP replicas). ilct.training.sharding's FullyShard puts each rank's shards instead."""

    def load_module(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        module.load_state_dict(state)

    def load_optimizer(self, opt: torch.optim.Optimizer, model: nn.Module, path: Path) -> None:
        """The optimizer state of checkpoint `path` into `opt` (ValueError and the like when it does not fit)."""
        if sharded(path):
            raise IlctError(f"{path} holds the optimizer state of a sharded run ({OPTIMIZER_DIR}/), which only "
                            "train.sharding=fsdp reads: resume with --set train.sharding=fsdp (a sharded run's "
                            "checkpoints cannot be branched)")
        opt.load_state_dict(optimizer_from_files(read_tensors(path / "optimizer.safetensors"),
                                                 read_json(path / "optimizer.json")))


WHOLE = StateIO()


def load_weights(module: nn.Module, path: Path, what: str, io: StateIO = WHOLE) -> None:
    """Load a safetensors state dict, with one clear line if it does not fit the model (names, shapes,
    dtypes) or holds values that are not finite."""
    load_state(module, read_tensors(path), path, what, io)


def load_state(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str, io: StateIO = WHOLE) -> None:
    """Load a state dict read from `path` (as load_weights: names, shapes, dtypes and finite values checked)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        detail = f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}"
        raise IlctError(f"{path} does not match {what}: {detail}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise IlctError(f"{path} does not match {what}: '{k}' has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
        if v.dtype != own[k].dtype:
            raise IlctError(f"{path} does not match {what}: '{k}' is {v.dtype}, expected {own[k].dtype}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise IlctError(f"{path}: '{k}' holds values that are not finite")
    io.load_module(module, state)


def rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The global RNG states, recorded with each checkpoint for inspection. A resumed run does not
    need them: every draw of step k is seeded by (train.seed, k) (ilct.training.batches.step_seed)."""
    np_state = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    if device.type == "cuda":
        tensors["torch_cuda"] = torch.cuda.get_rng_state(device)
    py = random.getstate()
    scalars = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
               "python": [py[0], list(py[1]), py[2]]}
    return tensors, scalars


def restore_profiles(path: Path, state: dict[str, Any], profiles: Sequence[nn.Module], cfg: Config, what: str,
                     io: StateIO = WHOLE) -> None:
    """train.ema=power: the checkpoint must hold the profiles of train.ema_stds (its state.json's ema_stds); the
    ones after the first are loaded into `profiles` from ema_profiles.safetensors."""
    t = cfg.train
    if t.ema != "power":
        return
    if state.get("ema_stds") != t.ema_stds:
        held = f"the EMA profiles of ema_stds {state['ema_stds']}" if "ema_stds" in state else "a constant EMA"
        raise IlctError(f"{path} holds {held}, not the power-function profiles of train.ema_stds {t.ema_stds}")
    tensors = read_tensors(path / PROFILES_FILE) if profiles else {}
    for i, module in enumerate(profiles, start=1):
        mine = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(i)}
        load_state(module, mine, path / PROFILES_FILE, f"{what} (profile {i}, sigma_rel {t.ema_stds[i]})", io)


def restore(path: Path, model, ema, opt, cfg: Config, profiles: Sequence[nn.Module] = (),
            io: StateIO = WHOLE) -> dict[str, Any]:
    """Model, EMA (train.ema=power: every profile) and optimizer states from a checkpoint, each checked and put
    into the run's modules by `io`; returns its state.json."""
    what = f"model {cfg.model.arch}"
    state = read_state(path)
    if not 0 < state["step"] <= cfg.train.total_steps:
        raise IlctError(f"{path}: step {state['step']} lies outside the run's 1..{cfg.train.total_steps}")
    load_weights(model, path / "model.safetensors", what, io)
    load_weights(ema, path / "ema.safetensors", what, io)
    restore_profiles(path, state, profiles, cfg, what, io)
    try:
        io.load_optimizer(opt, model, path)
        opt.check_state()
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise IlctError(f"optimizer state in {path} does not match the model: {e}") from None
    return state


def restore_newest(run_dir: Path, model, ema, opt, cfg: Config, profiles: Sequence[nn.Module] = (),
                   io: StateIO = WHOLE) -> tuple[Path | None, dict[str, Any]]:
    """The newest checkpoint that restores completely; a damaged newer one is passed over with one line.
    (None, {}) for a run stopped before its first checkpoint: it starts again from step 0."""
    first = latest_checkpoint(run_dir)
    if first is None and not list_checkpoints(run_dir):
        return None, {}
    if first is None:
        raise IlctError(f"--resume: {run_dir} has no whole checkpoint to resume from; start over with --force")
    older = [p for p in reversed(list_checkpoints(run_dir)) if p.name < first.name and whole(p) is None]
    problem = None
    for path in [first, *older]:
        try:
            state = restore(path, model, ema, opt, cfg, profiles, io)
        except IlctError as e:
            problem = problem or str(e)
            continue
        if path != first:
            print(f"note: {first.name} cannot be resumed ({problem}); resuming from {path.name}", file=sys.stderr)
        return path, state
    raise IlctError(f"--resume: no checkpoint of {run_dir} can be restored: {problem}")
