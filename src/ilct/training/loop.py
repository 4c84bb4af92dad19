"""The training loop (`ilct train`), for every objective and kind of data.

Reads top to bottom: `train` checks every input and builds the run's parts (ilct.training.build), then locks and
writes the run folder or restores its newest checkpoint (`_start`); `_loop` runs the steps: the objective's
schedule state -> the batch (drawn ahead with its OT coupling, ilct.training.batches) -> one update (ilct.training.step), with
no host synchronization inside a step; at check points the non-finite policy (ilct.training.nonfinite), the log,
sample grids, checkpoints and the stop request (ilct.training.preempt). The same loop runs one process or several
under `torchrun` (ilct.training.distributed), with the model whole on every rank or sharded over them
(train.sharding: ilct.training.sharding).
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ilct.training import branch
from ilct.runs import checkpoint as ckpt
from ilct.training import distributed
from ilct.training.accel import compile_blocks, compile_model, setup_backends
from ilct.io.animation import grid_frames, save_clip_strip, save_gif
from ilct.training.batches import Prefetcher, step_seed
from ilct.training.build import RunData, absolute_paths, build_data, build_profiles, build_student
from ilct.training import tensorboard
from ilct.training.ema import checkpoint_record, save_snapshots
from ilct.training.sharding import Replicated, Sharding, make_sharding
from ilct.config import Config, dump_config
from ilct.errors import IlctError
from ilct.io.grid import make_grid, save_png
from ilct.training.nonfinite import NonFinitePolicy
from ilct.training.preempt import StopFlag
from ilct.models import resolve_device
from ilct.runs.folder import (CONFIG_FILE, LOG_FILE, SAMPLES_DIR, STATS_FILE, TENSORBOARD_DIR, RunLock, check_new_run_dir,
                            check_out_dir, open_log, resume_config, start_run_dir)
from ilct.generate import generate
from ilct.training.step import training_step
from ilct.metrics.monitor import FidMonitor


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_loss: float
    seconds: float
    nonfinite_steps: int
    preempted: bool = False  # stopped by SIGTERM / SIGINT after checkpointing


@dataclass
class Run:
    """A started run: its parts, where it starts, and the process's place in a torchrun job."""

    cfg: Config
    run_dir: Path
    data: RunData
    model: torch.nn.Module  # the student (unwrapped)
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    start_step: int
    policy: NonFinitePolicy
    dist: distributed.Dist
    device: torch.device
    sharding: Sharding  # how the model, EMA and moments lie over the ranks (train.sharding: ilct.training.sharding)
    monitor: Any = None  # rank 0's FidMonitor when train.fid_every is set (ilct.metrics.monitor)
    profiles: list[torch.nn.Module] = field(default_factory=list)  # train.ema=power: the profiles after `ema`


def train(
    cfg: Config,
    run_dir: str | Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    allow_other_autoencoder: bool = False,
    allow_other_latents: bool = False,
    branch_from: str | Path | None = None,
) -> TrainResult:
    """Train (or resume) the run in `run_dir`; with `branch_from` (a run or one of its checkpoints), a new run
    that starts from that checkpoint's training state with cfg's settings (ilct.training.branch). Every input is checked
    before the run folder is touched; the caller's `cfg` is not changed. Raises IlctError for bad input and
    preempt.Interrupted for a signal before training began."""
    cfg = copy.deepcopy(cfg)
    run_dir = check_out_dir(run_dir)
    sharding = make_sharding(cfg.train.sharding)
    with StopFlag() as stop:
        dist, device = distributed.init(resolve_device(cfg.train.device), group=sharding.needs_group)
        lock = RunLock(run_dir)
        clean = False
        try:
            run = _start(cfg, run_dir, resume, force, progress, dist, device, stop, lock,
                         (allow_other_autoencoder, allow_other_latents), branch_from, sharding)
            result = _loop(run, stop, progress)
            clean = True
            return result
        finally:
            lock.release()
            distributed.shutdown(dist, clean)


def _check_run(cfg: Config, run_dir: Path, resume: bool, force: bool, allow_other: tuple[bool, bool],
               branch_from: str | Path | None, sharding: Sharding) -> tuple[Config, Any]:
    """The run folder's side of the checks (read only): a resumed run's config and checkpoints, a branch's
    source, a new run's folder. Returns (the config to train with, the branch source or None)."""
    if branch_from is not None and not sharding.branches:
        raise IlctError(f"--branch-from is not supported with train.sharding={sharding.name}: branch with "
                        "train.sharding=none, then resume the branch with --set train.sharding=fsdp")
    absolute_paths(cfg)  # (before the comparison with a resumed run's config, which holds absolute paths)
    cfg = resume_config(cfg, run_dir) if resume else cfg
    if cfg.train.tensorboard:
        tensorboard.check_available()  # the optional package, before anything is written
    if resume:
        ckpt.check_layout(run_dir)  # a damaged checkpoints/ would fail only at the first save
    source = None
    if branch_from is not None:
        if resume:
            raise IlctError("--branch-from starts a new run from another run's checkpoint and --resume continues "
                            "the run in --out: give one of them")
        if allow_other[0]:
            raise IlctError("--allow-other-autoencoder applies to --resume: a branch keeps its source's latent space")
        source = branch.prepare(cfg, branch_from, run_dir)
    elif not resume and cfg.branch.run:
        raise IlctError(f"config: branch.run is set ({cfg.branch.run}): branch.* records where a run branched from "
                        "and is written by --branch-from; to start a new run from this config, add --set branch.run= "
                        "--set branch.step=0 --set branch.changes=")
    if not resume:
        check_new_run_dir(run_dir, force)
    return cfg, source


def _start(cfg: Config, run_dir: Path, resume: bool, force: bool, progress: bool, dist: distributed.Dist,
           device: torch.device, stop: StopFlag, lock: RunLock, allow_other: tuple[bool, bool],
           branch_from: str | Path | None = None, sharding: Sharding | None = None) -> Run:
    """Check and build everything, then (rank 0, holding the lock) write a new run (a branch: with its
    source's checkpoint as its first) or restore the newest checkpoint. Nothing is written before every
    input has been checked; a rank whose checks fail stops every rank with one line (distributed.together)."""
    main, sharding = dist.main, sharding or Replicated()
    cfg, source = distributed.together(dist, lambda: _check_run(cfg, run_dir, resume, force, allow_other, branch_from,
                                                                sharding), "checking the run folder")
    absolute_paths(cfg)
    setup_backends(device)
    data = build_data(cfg, run_dir, resume, allow_other[0], progress, dist, device, allow_other[1],
                      stats_from=source and source.run)
    torch.manual_seed(cfg.train.seed)  # the initial weights, equal on every rank
    # train.init_from applies to a run that starts at step 0 (not a branch, not a resumed run with a checkpoint)
    at_step_0 = source is None and (not resume or ckpt.latest_checkpoint(run_dir, quiet=True) is None)
    model, ema, opt = build_student(cfg, device, init=at_step_0, quiet=not main, sharding=sharding)
    profiles = build_profiles(cfg, ema, sharding)
    state: dict[str, Any] = {}
    if source is not None:  # read and checked now; written into the new run below
        state = branch.restore_branch(source, model, ema, opt, cfg, profiles)
    monitor = None
    if main and cfg.train.fid_every:  # the feature extractor and the training split's statistics (cached)

        monitor = FidMonitor(cfg, run_dir, resume, progress)
    # ---- everything is checked: from here on the run folder is written, by this process alone
    if main:
        lock.acquire()
    stop.defer()
    if source is not None and allow_other[1]:  # --allow-other-latents: the branch's statistics name its latents
        data.stats = replace(data.stats, latent_set=data.stats.latent_set and data.latent_set)
    if main and not resume:
        start_run_dir(cfg, run_dir, force, data.stats)
        if source is not None:
            branch.write_branch_point(run_dir, source, model, ema, opt, state, cfg, profiles)
            print(f"branched from {source.checkpoint} (step {source.step}); changed: {cfg.branch.changes or 'nothing'}",
                  flush=True)
    elif main and any(allow_other):  # --allow-other-*: the run's config and statistics name what it trains on now
        s = data.stats
        data.stats = replace(s, fingerprint=s.fingerprint and data.ae.fingerprint(), latent_set=s.latent_set and data.latent_set)
        data.stats.save(run_dir / STATS_FILE)
        dump_config(cfg, run_dir / CONFIG_FILE)
    distributed.barrier(dist)
    if resume:
        resume_from, state = ckpt.restore_newest(run_dir, model, ema, opt, cfg, profiles, sharding)
        data.maker.reader.resume(state.get("reader"), state.get("step", 0))  # the stream goes on where it was
        made_on = state.get("world_size", 1)
        if resume_from is not None and made_on != dist.world and main:  # allowed (the global batch is the same)
            print(f"note: {resume_from.name} was written by {made_on} rank(s) and this run has {dist.world}: "
                  "training goes on, but the per-rank batch slices and OT pairings differ from the "
                  "uninterrupted run's, so it does not reproduce it", file=sys.stderr)
    if main:
        (run_dir / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
    stop.raise_if_stopped()  # a signal during start-up's writes: nothing trained yet
    policy = NonFinitePolicy(device, cfg.train.max_nonfinite, state.get("nonfinite_total", 0), state.get("lr_halved", False))
    return Run(cfg, run_dir, data, model, ema, opt, state.get("step", 0), policy, dist, device, sharding, monitor, profiles)


def reader_record(run: Run, step: int) -> dict[str, Any]:
    """What the checkpoint of `step` records of the data reader (the stream's position; nothing for memory)."""
    state = run.data.maker.reader.state(step)
    return {"reader": state} if state else {}


def _student(run: Run) -> torch.nn.Module:
    """The model as the steps call it: compiled (blocks, or the whole network with CUDA graphs) and wrapped by the
    sharding (DDP under torchrun with train.sharding=none) as configured. Speed only: the maths is the same."""
    t, model = run.cfg.train, run.model
    if t.compile and t.cuda_graphs and run.device.type == "cuda":
        if run.dist.active:
            raise IlctError("train.cuda_graphs is not supported under torchrun; use train.compile alone")
        compile_model(model, "model", "reduce-overhead")  # launch-bound small models: docs/performance.md
    elif t.compile:
        compile_blocks(model)  # (cuda_graphs on a CPU: CUDA graphs need a GPU, the blocks are compiled)
    return run.sharding.student(model, run.dist, run.device)


class _Outputs:
    """Rank 0's side effects: the log (and TensorBoard's events), sample grids, EMA snapshots and checkpoints
    (the other ranks only join the barriers)."""

    def __init__(self, run: Run):
        self.run, self.main = run, run.dist.main
        self.file = open_log(run.run_dir / LOG_FILE) if self.main else None
        self.events = (tensorboard.EventWriter(run.run_dir / TENSORBOARD_DIR, run.start_step)
                       if self.main and run.cfg.train.tensorboard else None)
        self.writer = (ckpt.BackgroundWriter() if self.main and run.cfg.train.async_checkpoint
                       and run.sharding.background_writes else None)

    def log(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.events is not None:
            self.events.log(record)

    def save(self, step: int, **extra: Any) -> None:
        """The checkpoint of `step`: written now, or (train.async_checkpoint) copied to host memory now and
        written by the background writer while training goes on."""
        r = self.run
        files = r.sharding.checkpoint_files(step, r.model, r.ema, r.opt, r.profiles, r.run_dir, self.main)
        if self.main:
            rng_tensors, rng_scalars = ckpt.rng_state(r.device)
            snap = ckpt.snapshot_files(step, files, rng_tensors,
                                       {"nonfinite_total": r.policy.total, "lr_halved": r.policy.lr_halved,
                                        "arch": r.cfg.model.arch, "world_size": r.dist.world, "rng": rng_scalars,
                                        **checkpoint_record(r.cfg), **reader_record(r, step), **extra},
                                       copy=self.writer is not None)
            keep, protect = r.cfg.train.keep_checkpoints, r.monitor and r.monitor.best and r.monitor.best.step
            if self.writer is not None:
                self.writer.submit(r.run_dir, snap, keep, protect)
            else:
                ckpt.write_checkpoint(r.run_dir, snap, keep, protect)
        distributed.barrier(r.dist)

    def wait(self) -> None:
        """Until the checkpoint in flight is written (its error, if any, raised here)."""
        if self.writer is not None:
            self.writer.wait()

    def snapshot(self, step: int) -> None:
        """train.ema=power: every profile's weights into RUN/ema_snapshots/ (ilct.training.ema)."""
        r = self.run
        states = [r.sharding.full_state(m) for m in (r.ema, *r.profiles)]  # (sharded: gathered, a collective)
        if self.main:
            save_snapshots(r.run_dir, step, states, r.cfg.train.ema_stds)

    def fid(self, step: int, saving: bool) -> dict | None:
        """train.fid_every: FID on the training split. A new best is checkpointed here unless this step is
        saved anyway (`saving`; then the caller writes best.json after its save). Every rank joins: the
        save synchronizes them."""
        r = self.run
        ema = r.sharding.sampler(r.ema)  # (sharded: gathered whole on rank 0, a collective)
        record = r.monitor.measure(ema, r.data.ae, r.data.stats, step) if self.main else None
        if record:
            self.log(record)
        new_best = distributed.any_rank(r.dist, bool(record and record["new_best"]), r.device)
        if new_best and not saving:
            self.save(step)
            if self.main:
                self.wait()  # best.json names a checkpoint that is written
                r.monitor.record_best()
        return record

    def grid(self, step: int) -> None:
        r = self.run
        ema = r.sharding.sampler(r.ema)  # (sharded: gathered whole on rank 0, a collective)
        if self.main:
            images = generate(ema, r.data.ae, r.data.stats, r.cfg, r.cfg.train.num_sample_images,
                              r.data.objective.grid_steps, seed=0)
            path = r.run_dir / SAMPLES_DIR / f"step_{step:09d}.png"
            if images.ndim == 5:  # clips (n, T, H, W, C): a strip (rows = samples, columns = frames) and a GIF
                save_clip_strip(images, path, scale=2)
                save_gif(grid_frames(images), path.with_suffix(".gif"), scale=2)
            else:
                save_png(make_grid(images), path, scale=2)
            if self.events is not None:
                self.events.image(path, step)

    def close(self) -> None:
        if self.writer is not None:  # a write in flight is finished (its error was raised by a wait, or another
            try:                     # error is on its way out)
                self.writer.wait()
            except Exception:
                pass
        if self.file is not None:
            self.file.close()
        if self.events is not None:
            self.events.close()


def _loop(run: Run, stop: StopFlag, progress: bool) -> TrainResult:
    cfg, t, dist, device = run.cfg, run.cfg.train, run.dist, run.device
    objective, policy, opt = run.data.objective, run.policy, run.opt
    student = _student(run)
    out = _Outputs(run)
    t_start = t_log = time.time()
    n_logged, last_loss = 0, float("nan")
    bar = tqdm(total=t.total_steps, initial=run.start_step, desc="train", disable=not (progress and dist.main),
               dynamic_ncols=True)
    prefetch = Prefetcher(run.data.maker, run.start_step, t.total_steps, device)
    try:
        k = run.start_step
        while k < t.total_steps:
            state = objective.state(k, device)  # consistency training: the curriculum's N, its sigmas and c(N)
            batch = prefetch.get(k)  # drawn (and OT-coupled) ahead
            torch.manual_seed(step_seed(t.seed, k, 1 + dist.rank))  # this step's dropout randomness
            policy.add(*training_step(student, run.ema, opt, batch, objective, state, cfg, k, run.profiles))
            k += 1
            step = k
            bar.update(1)
            n_logged += 1
            # -- check point: the only host synchronization (log, checkpoint, end, signal)
            stopping = distributed.any_rank(dist, stop.signal is not None, device) if (
                not dist.active or step % t.log_every == 0) else False
            is_log = step % t.log_every == 0 or step == t.total_steps
            is_ckpt = step % t.ckpt_every == 0 and step != t.total_steps
            is_grid = bool(t.sample_every) and step % t.sample_every == 0 and step != t.total_steps
            is_fid = bool(t.fid_every) and (step % t.fid_every == 0 or step == t.total_steps)
            is_snap = t.ema == "power" and (step % (t.ema_snapshot_every or t.ckpt_every) == 0 or step == t.total_steps)
            if not (is_log or is_ckpt or is_grid or is_fid or is_snap or stopping):
                continue
            bad_now, roll_back = policy.check()
            if bad_now:
                out.log({"step": step, "event": "nonfinite", "count": bad_now, "nonfinite_total": policy.total})
            if roll_back:
                out.wait()  # the checkpoint in flight is the one to roll back to
                latest = ckpt.latest_checkpoint(run.run_dir)
                restore = lambda: ckpt.restore(latest, run.model, run.ema, opt, cfg, run.profiles,  # noqa: E731
                                               run.sharding)["step"]
                k = policy.roll_back(step, latest and restore, opt)
                out.log({"step": k, "event": "rollback", "checkpoint": latest.name, "lr": opt.param_groups[0]["lr"]})
                prefetch.close()
                prefetch = Prefetcher(run.data.maker, k, t.total_steps, device)
                bar.reset(total=t.total_steps)
                bar.update(k)
                continue
            if is_log:
                now, mean, fields = time.time(), policy.mean_terms(), objective.log_fields(state)
                last_loss = mean[0]
                terms = {name: value for name, value in zip(objective.term_names, mean[1:]) if name}
                out.log({"step": step, **fields, "loss": mean[0], **terms, "nonfinite_total": policy.total,
                         "img_per_s": round(n_logged * t.batch_size / max(now - t_log, 1e-9), 1),
                         "elapsed_s": round(now - t_start, 1)})
                bar.set_postfix(**{key: (f"{v:.3g}" if isinstance(v, float) else v) for key, v in fields.items()},
                                loss=f"{last_loss:.4g}")
                n_logged, t_log = 0, now
            if is_grid:
                out.grid(step)
            fid = out.fid(step, saving=is_ckpt) if is_fid else None
            if fid:
                bar.set_postfix(fid=f"{fid['fid']:.3g}", best=fid["best_step"], loss=f"{last_loss:.4g}")
            if is_snap:
                out.snapshot(step)
            if is_ckpt:
                out.save(step)
                if fid and fid["new_best"]:
                    out.wait()  # best.json names a checkpoint that is written
                    run.monitor.record_best()
            if stopping and step != t.total_steps:
                if step % t.ckpt_every:
                    out.save(step)
                out.wait()
                bar.close()
                if dist.main:
                    print(f"stopped by signal {stop.signal} after step {step}; checkpoint saved, "
                          f"continue with: ilct train --out {run.run_dir} --resume")
                return TrainResult(run.run_dir, step, last_loss, time.time() - t_start, policy.total, preempted=True)
        return _finish(run, out, last_loss, t_start)  # (with the outputs open: the last grid goes to TensorBoard too)
    finally:
        prefetch.close()
        bar.close()
        out.close()


def _finish(run: Run, out: _Outputs, last_loss: float, t_start: float) -> TrainResult:
    """The last checkpoint and grid (unless the run ended on one); the ranks of a torchrun job must agree: each
    rank's weight digest goes into the last checkpoint."""
    end_step = max(run.start_step, run.cfg.train.total_steps)
    digests = distributed.gather_strings(run.dist, _weights_digest(run.sharding.full_parameters(run.model)))
    if len(set(digests)) > 1:
        raise IlctError(f"the {run.dist.world} ranks ended with different weights; the last checkpoint is rank 0's")
    out.wait()
    latest = ckpt.latest_checkpoint(run.run_dir)
    if latest is None or latest.name != f"step_{end_step:09d}":
        out.save(end_step, replica_digests=digests)
        out.wait()
    if not (run.run_dir / SAMPLES_DIR / f"step_{end_step:09d}.png").is_file():
        out.grid(end_step)
    return TrainResult(run.run_dir, end_step, last_loss, time.time() - t_start, run.policy.total)


def _weights_digest(params) -> str:
    """A digest of the weights (sharded: of the gathered whole weights, so the ranks agree by construction)."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
