"""The run folder: its names, what makes a folder a run, one writer at a time, and `--force`.

    RUN_DIR/config.yaml                the resolved config (latent shape filled in)
    RUN_DIR/latent_stats.safetensors   m and s the run normalizes with (and the autoencoder's fingerprint)
    RUN_DIR/log.jsonl                  one JSON object per logged step
    RUN_DIR/samples/                   periodic 1-step grids (clip runs: PNG strips and GIFs)
    RUN_DIR/checkpoints/               see ilct.runs.checkpoint
    RUN_DIR/ema_snapshots/             train.ema=power: every profile's EMA, step_XXXXXXXXX_std_S.safetensors
                                       (ilct.training.ema; never rotated)
    RUN_DIR/tensorboard/               train.tensorboard: TensorBoard events (ilct.training.tensorboard)
    RUN_DIR/.lock                      held (flock) by the one training process writing the run

A run folder is a closed world: what ilct reads from it (the `latest` pointer, the
checkpoints) must resolve inside it (ilct.runs.checkpoint). `--force` deletes only the
names above, and only in a folder that holds a run.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from dataclasses import replace
from pathlib import Path

from ilct.config import RUNTIME_KEYS, Config, config_from_yaml_file, dump_config, from_dict, merge_raw, parse_overrides
from ilct.errors import IlctError

CONFIG_FILE = "config.yaml"
STATS_FILE = "latent_stats.safetensors"
LOG_FILE = "log.jsonl"
SAMPLES_DIR = "samples"
CHECKPOINTS_DIR = "checkpoints"
LOCK_FILE = ".lock"
BEST_FILE = "best.json"  # the best step by FID on the training split (train.fid_every, ilct.metrics.monitor)
EMA_SNAPSHOTS_DIR = "ema_snapshots"  # train.ema=power (ilct.training.ema)
TENSORBOARD_DIR = "tensorboard"  # train.tensorboard (ilct.training.tensorboard)
RUN_FILES = (CONFIG_FILE, STATS_FILE, LOG_FILE, BEST_FILE)
RUN_DIRS = (SAMPLES_DIR, CHECKPOINTS_DIR, EMA_SNAPSHOTS_DIR, TENSORBOARD_DIR)


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """A folder argument: not empty, not an existing file."""
    if not str(path).strip():
        raise IlctError(f"{flag} is empty: name a folder")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise IlctError(f"{flag} {path} is a file, not a folder")
    return path


def is_run(run_dir: Path) -> bool:
    """The folder holds an ilct run: a config.yaml beside the latent statistics (written together when a run starts)."""
    return (run_dir / CONFIG_FILE).is_file() and (run_dir / STATS_FILE).is_file()


def foreign_entries(run_dir: Path) -> list[str]:
    """Names in the folder that a run does not make (sorted)."""
    if not run_dir.is_dir():
        return []
    own = set(RUN_FILES) | set(RUN_DIRS) | {LOCK_FILE}
    return sorted(p.name for p in run_dir.iterdir() if p.name not in own and not p.name.startswith(".tmp"))


def check_new_run_dir(run_dir: Path, force: bool) -> None:
    """Where a new run may start: an absent or empty folder, or (with --force) a folder holding a run.
    Raises before anything is written."""
    run_dir = check_out_dir(run_dir)
    if not run_dir.exists():
        return
    if run_dir.resolve() == Path.cwd().resolve():
        raise IlctError(f"--out {run_dir} is the current folder: name a folder for the run")
    if is_run(run_dir):
        if not force:
            raise IlctError(f"{run_dir} already holds a run: use --resume to continue it or --force to start over")
        return
    stray = foreign_entries(run_dir)
    if stray or (run_dir / CONFIG_FILE).exists():
        what = f"holds {', '.join(stray[:3])}{' ...' if len(stray) > 3 else ''}" if stray else "holds a config.yaml but no run"
        raise IlctError(f"--out {run_dir} is not an ilct run folder ({what}); "
                        f"{'--force deletes only runs: ' if force else ''}choose a new or empty folder")


def clear_run(run_dir: Path) -> None:
    """Delete what a run made and nothing else (a file of the user's in its folders stays); the caller holds
    the run's lock."""
    ckpts, samples = run_dir / CHECKPOINTS_DIR, run_dir / SAMPLES_DIR
    snaps, events = run_dir / EMA_SNAPSHOTS_DIR, run_dir / TENSORBOARD_DIR
    made = [*ckpts.glob("step_?????????"), *ckpts.glob(".tmp_step_*"), ckpts / "latest", *samples.glob("step_?????????.png"),
            *samples.glob("step_?????????.gif"), *snaps.glob("step_?????????_std_*.safetensors"),
            *snaps.glob(".step_*.tmp*"), *events.glob("events.out.tfevents.*")]
    for path in made:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for folder in (ckpts, samples, snaps, events):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


class RunLock:
    """An exclusive flock on RUN_DIR/.lock for the life of a training process (released by the OS when
    the process dies, so a crash never leaves a stale lock). The holder's PID is written into the file."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise IlctError(f"{self.path.parent} is being trained by another process (PID {holder}); "
                                "wait for it to finish or stop it first") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # no holder now (a killed process leaves its PID, and no lock)
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def open_log(path: Path):
    """Append to the JSONL log; a line cut short by a crash is ended first."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:
            with open(path, "a") as f:
                f.write("\n")
    return open(path, "a")


def _changed_keys(a: Config, b: Config) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{s}.{k}" for s in da for k in da[s] if da[s][k] != db[s][k]]


def saved_config(run_dir: str | Path, overrides: list[str]) -> Config:
    """The run's own config with `--set` overrides applied (`ilct train --resume` without --config)."""
    path = check_out_dir(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise IlctError(f"--resume: {run_dir} holds no run (no {CONFIG_FILE})")
    return from_dict(merge_raw(config_from_yaml_file(path).to_dict(), parse_overrides(overrides)))


def changed_settings(cfg: Config, run_dir: Path) -> list[str]:
    """The keys other than run-time ones in which `cfg` differs from the run's own config (which must exist)."""
    saved = config_from_yaml_file(run_dir / CONFIG_FILE)
    wanted = replace(cfg, model=replace(cfg.model, in_channels=saved.model.in_channels, input_size=saved.model.input_size,
                                        frames=saved.model.frames),
                     branch=saved.branch,  # a branched run's record (ilct.training.branch) stays as it was written
                     train=replace(cfg.train, draw_groups=cfg.train.draw_groups or saved.train.draw_groups))  # 0: as resolved
    return [k for k in _changed_keys(saved, wanted) if k not in RUNTIME_KEYS]


def resume_config(cfg: Config, run_dir: Path) -> Config:
    """The run's own config, with the run-time keys the user gives now; other differences are refused."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise IlctError(f"--resume: {run_dir} holds no run (no {CONFIG_FILE})")
    saved = config_from_yaml_file(run_dir / CONFIG_FILE)
    bad = changed_settings(cfg, run_dir)
    if bad:
        raise IlctError(f"--resume: the run was made with other settings ({', '.join(bad[:4])}); "
                        "drop those --set values or start a new --out")
    for key in RUNTIME_KEYS:
        s, k = key.split(".")
        setattr(getattr(saved, s), k, getattr(getattr(cfg, s), k))
    return saved


def start_run_dir(cfg: Config, run_dir: Path, force: bool, stats) -> None:
    """A new run's files (the caller holds the lock): --force first deletes the run that was there."""
    check_new_run_dir(run_dir, force)  # again, under the lock
    if is_run(run_dir):
        clear_run(run_dir)
    stats.save(run_dir / STATS_FILE)
    dump_config(cfg, run_dir / CONFIG_FILE)
