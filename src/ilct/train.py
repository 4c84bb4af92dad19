"""The training loop (`ilct train`): consistency training in latent space.

Reads top to bottom: set up the run directory, get the latents, build the
model, EMA and optimizer (or resume them), then loop: curriculum ->
batch (drawn ahead with its OT coupling, ilct.batches) -> loss -> update -> EMA, with no host
synchronization inside a step; log / sample / checkpoint at check points. The same loop runs
one process or several under `torchrun` (ilct.distributed).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from torch.nn.parallel import DistributedDataParallel as DDP

from ilct import checkpoint as ckpt
from ilct import distributed, faults, flat
from ilct.accel import compile_blocks, compile_model, setup_backends
from ilct.autoencoders import load_autoencoder
from ilct.batches import Batch, BatchMaker, Prefetcher, step_seed
from ilct.config import RUNTIME_KEYS, Config, config_from_yaml_file, dump_config
from ilct.data.latents import LatentStats
from ilct.errors import IlctError
from ilct.grid import make_grid, save_png
from ilct.objectives import Objective, make_objective
from ilct.optim import RAdam
from ilct.preempt import StopFlag
from ilct.run import build_model, load_latents, make_ema, resolve_device
from ilct.runfolder import (CONFIG_FILE, LOG_FILE, SAMPLES_DIR, STATS_FILE, RunLock, check_new_run_dir, check_out_dir,
                            clear_run, is_run)
from ilct.sampling import generate


IN_MEMORY_BYTES = 4 << 30  # latent sets up to 4 GiB are loaded whole


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_loss: float
    seconds: float
    nonfinite_steps: int
    preempted: bool = False  # stopped by SIGTERM / SIGINT after checkpointing


def _absolute_paths(cfg: Config) -> None:
    """Local paths in the config become absolute, so a run directory works from any folder."""
    for section, key in (("autoencoder", "path"), ("data", "root"), ("data", "latents"), ("data", "cache_dir")):
        value = getattr(getattr(cfg, section), key)
        if value and Path(value).exists():
            setattr(getattr(cfg, section), key, str(Path(value).resolve()))


def _open_log(path: Path):
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


def resume_config(cfg: Config, run_dir: Path) -> Config:
    """The run's own config, with the run-time keys the user gives now; other differences are refused."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise IlctError(f"--resume: {run_dir} holds no run (no {CONFIG_FILE})")
    saved = config_from_yaml_file(run_dir / CONFIG_FILE)
    wanted = replace(cfg, model=replace(cfg.model, in_channels=saved.model.in_channels, input_size=saved.model.input_size))
    bad = [k for k in _changed_keys(saved, wanted) if k not in RUNTIME_KEYS]
    if bad:
        raise IlctError(f"--resume: the run was made with other settings ({', '.join(bad[:4])}); "
                        "drop those --set values or start a new --out")
    for key in RUNTIME_KEYS:
        s, k = key.split(".")
        setattr(getattr(saved, s), k, getattr(getattr(cfg, s), k))
    return saved


def check_autoencoder(stats: LatentStats, ae, run_dir: Path, allow_other: bool) -> None:
    """A resumed run trains on in the latent space it started in: the autoencoder must be the same one
    (its fingerprint, recorded with the run's statistics), unless the user asks for another explicitly."""
    if stats.fingerprint and stats.fingerprint != ae.fingerprint() and not allow_other:
        raise IlctError(f"--resume: {run_dir} was trained with another autoencoder (fingerprint {stats.fingerprint}, "
                        f"this one is {ae.fingerprint()}): pass --allow-other-autoencoder to train on in its latent space")


def start_run_dir(cfg: Config, run_dir: Path, force: bool, stats: LatentStats) -> None:
    """A new run's files (the caller holds the lock): --force first deletes the run that was there."""
    check_new_run_dir(run_dir, force)  # again, under the lock
    if is_run(run_dir):
        clear_run(run_dir)
    stats.save(run_dir / STATS_FILE)
    dump_config(cfg, run_dir / CONFIG_FILE)


def _rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The global RNG states, recorded with each checkpoint for inspection. A resumed run does not
    need them: every draw of step k is seeded by (train.seed, k) (ilct.batches.step_seed)."""
    np_state = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    if device.type == "cuda":
        tensors["torch_cuda"] = torch.cuda.get_rng_state(device)
    py = random.getstate()
    scalars = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
               "python": [py[0], list(py[1]), py[2]]}
    return tensors, scalars


def make_batch_maker(cfg: Config, objective: Objective, gather, n_data: int, shape: tuple[int, int, int],
                     labels: torch.Tensor | None = None, rank: int = 0, world: int = 1) -> BatchMaker:
    """The BatchMaker of cfg's run: its seed and batch size, the objective's draw, OT where it applies."""
    t = cfg.train
    return BatchMaker(gather, n_data, shape, labels, t.batch_size, t.seed, objective.draw,
                      cfg.method.ot_coupling and objective.couples_noise, rank, world)


def make_student(cfg: Config, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, RAdam]:
    """The network in training mode, its EMA copy and the optimizer; with `train.fused_optimizer` the
    weights (and so the EMA's and the moments) are flat buffers (ilct.flat), and with `train.compile`
    too the RAdam update is one compiled kernel. Seeded by the caller."""
    t = cfg.train
    model = build_model(cfg).to(device).train()
    if t.fused_optimizer:
        flat.flatten_(model)
    ema = make_ema(model)
    opt = RAdam(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.adam_eps, weight_decay=t.weight_decay,
                compile=t.compile and t.fused_optimizer)
    return model, ema, opt


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, keep: torch.Tensor | None = None) -> None:
    """ema <- ema + (1 - decay) keep (model - ema): one lerp when both are flat (ilct.flat), else foreach ops;
    keep = 0 (a skipped step) changes nothing."""
    e_flat, m_flat = flat.module_buffer(ema), flat.module_buffer(model)
    if e_flat is not None and m_flat is not None and e_flat.shape == m_flat.shape:
        w = torch.full((), 1.0 - decay, dtype=e_flat.dtype, device=e_flat.device)
        e_flat.lerp_(m_flat, w if keep is None else w * keep.to(w.dtype))
        return
    e = [p for p in ema.parameters()]
    m = [p.detach() for p in model.parameters()]
    if keep is None:
        torch._foreach_lerp_(e, m, 1.0 - decay)
    else:  # the weight is a device tensor: sub, mul, add are multi-tensor kernels (a per-tensor lerp is not)
        d = torch._foreach_sub(m, e)
        torch._foreach_mul_(d, (1.0 - decay) * keep.to(e[0].dtype))
        torch._foreach_add_(e, d)


def training_step(
    model: torch.nn.Module,  # the student (DDP-wrapped and/or compiled as configured)
    ema: torch.nn.Module,
    opt: RAdam,
    batch: Batch,
    objective: Objective,
    state: Any,  # the objective's schedule state of this step
    cfg: Config,
    k: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One update, without a host synchronization: returns (loss, main term, auxiliary term) and a 0/1
    tensor `bad` (the loss or gradient was not finite: the update was skipped on the device)."""
    t = cfg.train
    if batch.x.is_cuda:  # a new iteration for CUDA graphs (compiled with mode reduce-overhead); no-op otherwise
        torch.compiler.cudagraph_mark_step_begin()
    with torch.autocast(device_type=batch.x.device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16"):
        terms = objective.loss(model, batch, state)
    loss = faults.corrupt_loss(k, terms.loss)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    if t.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    bad = (~(torch.isfinite(grad_norm) & torch.isfinite(loss.detach()))).float()
    opt.step(found_inf=bad)
    ema_update(ema, _unwrap(model), t.ema_decay, keep=1.0 - bad)
    values = torch.stack([terms.loss.detach().float(), terms.consistency.float(), terms.diffusion.float()])
    return torch.where(bad > 0, torch.zeros_like(values), values), bad


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DDP) else model


def train(
    cfg: Config,
    run_dir: str | Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    allow_other_autoencoder: bool = False,
    allow_other_latents: bool = False,
) -> TrainResult:
    """Train (or resume) the run in `run_dir`. Every input is checked before the run folder is touched;
    the caller's `cfg` is not changed. Raises IlctError for bad input and preempt.Interrupted for a
    signal before training began."""
    cfg = copy.deepcopy(cfg)
    run_dir = check_out_dir(run_dir)
    with StopFlag() as stop:
        dist, device = distributed.init(resolve_device(cfg.train.device))
        lock = RunLock(run_dir)
        try:
            return _train(cfg, run_dir, resume, force, progress, dist, device, stop, lock,
                          (allow_other_autoencoder, allow_other_latents))
        finally:
            lock.release()
            distributed.shutdown(dist)


@dataclass
class RunData:
    """What a run trains on: the autoencoder, its latents (normalized on access), their statistics,
    the conditions (labels or caption embeddings) and the batch maker."""

    ae: torch.nn.Module
    stats: LatentStats
    shape: tuple[int, int, int]
    maker: BatchMaker
    latent_set: str
    objective: Objective


def _conditions(cfg: Config, latent_set, main: bool):
    """The labels (or caption embeddings) the model is conditioned on, and the indices kept for training."""
    labels = None
    if cfg.model.num_classes != 0:  # class-conditional: labels stored with the latents
        if latent_set.labels is None or len(latent_set.labels) == 0:
            raise IlctError("config: model.num_classes is set but the latents carry no labels "
                            "(Fashion-MNIST, or an image folder with data.labels_from_subfolders)")
        if int(latent_set.labels.min()) < 0:
            raise IlctError(f"{latent_set.path}: the labels must be >= 0")
        if cfg.model.num_classes < 0:
            cfg.model.num_classes = int(latent_set.labels.max()) + 1
        if int(latent_set.labels.max()) >= cfg.model.num_classes:
            raise IlctError(f"config: model.num_classes={cfg.model.num_classes} but the labels go up to "
                            f"{int(latent_set.labels.max())}")
        labels = latent_set.labels
    kept = None
    if cfg.data.caption_holdout:  # held-out prompts: their images are never trained on (checked before the embeddings)
        if not latent_set.captions:
            raise IlctError("config: data.caption_holdout is set but the latents carry no captions")
        from ilct.text import kept_indices

        kept = torch.tensor(kept_indices(latent_set.captions, cfg.data.caption_holdout), dtype=torch.long)
    if cfg.model.text_dim > 0:  # text-conditional: caption embeddings, cached with the latents
        if not latent_set.captions:
            raise IlctError("config: model.text_dim is set but the latents carry no captions (the emoji dataset has them)")
        from ilct.text import caption_embeddings

        labels = caption_embeddings(latent_set.path, latent_set.captions)
        if labels.shape[1] != cfg.model.text_dim:
            raise IlctError(f"config: model.text_dim={cfg.model.text_dim} but the text encoder gives {labels.shape[1]}-d embeddings")
    if kept is not None and main:
        print(f"caption_holdout {cfg.data.caption_holdout!r}: training on {len(kept)} of {len(latent_set)} latents", flush=True)
    return labels, kept


def load_run_data(cfg: Config, run_dir: Path, resume: bool, allow_other_autoencoder: bool, progress: bool,
                  dist: distributed.Dist, device: torch.device, allow_other_latents: bool = False) -> RunData:
    """Everything the run reads, checked (writes only to the latent cache; rank 0 encodes first).
    Fills in cfg's latent shape and class count."""
    main, c = dist.main, cfg.consistency
    ae = load_autoencoder(cfg.autoencoder.kind, cfg.autoencoder.path).to(device)
    stats = LatentStats.load(run_dir / STATS_FILE) if resume else None
    if stats is not None:
        check_autoencoder(stats, ae, run_dir, allow_other_autoencoder)
    if not main:
        distributed.barrier(dist)
    latent_set = load_latents(cfg, ae, device, progress and main)
    if main:
        distributed.barrier(dist)
    latent_set.check_finite()
    C, H, W = latent_set.shape
    if H != W:
        raise IlctError(f"latents must be square, got {C}x{H}x{W}")
    for name, have, want in (("in_channels", C, cfg.model.in_channels), ("input_size", H, cfg.model.input_size)):
        if want is not None and want != have:
            raise IlctError(f"config: model.{name}={want} but the autoencoder gives {C}x{H}x{W} latents")
    cfg.model.in_channels, cfg.model.input_size = C, H
    if stats is None:
        stats = replace(latent_set.stats, fingerprint=ae.fingerprint(), latent_set=latent_set.identity)
    elif stats.latent_set and stats.latent_set != latent_set.identity and not allow_other_latents:
        raise IlctError(f"--resume: {run_dir} was trained on other latents ({stats.latent_set}; these are "
                        f"{latent_set.identity}): pass --allow-other-latents to train on with them")
    elif tuple(stats.mean.shape) != (C, H, W):
        raise IlctError(f"{run_dir / STATS_FILE} holds statistics of {tuple(stats.mean.shape)} latents, the data gives {C}x{H}x{W}")
    # Small latent sets live in (host) memory; larger ones are gathered per batch from the memory map.
    if latent_set.nbytes <= IN_MEMORY_BYTES:
        gather = stats.normalize(latent_set.all(), c.sigma_data).__getitem__  # std sigma_d
    else:
        gather = lambda idx: stats.normalize(latent_set.gather(idx.numpy()), c.sigma_data)  # noqa: E731
    labels, kept = _conditions(cfg, latent_set, main)
    n_data = len(latent_set)
    if kept is not None:
        base_gather, n_data = gather, len(kept)
        gather = lambda idx: base_gather(kept[idx])  # noqa: E731
        labels = labels[kept] if labels is not None else None
    objective = make_objective(cfg)
    try:
        maker = make_batch_maker(cfg, objective, gather, n_data, (C, H, W), labels, dist.rank, dist.world)
    except ValueError as e:
        raise IlctError(f"config: {e}") from None
    return RunData(ae, stats, (C, H, W), maker, latent_set.identity, objective)


def restore(path: Path, model, ema, opt, cfg: Config) -> dict[str, Any]:
    """Model, EMA and optimizer states from a checkpoint, each checked; returns its state.json."""
    what = f"model {cfg.model.arch}"
    state = ckpt.read_state(path)
    if not 0 < state["step"] <= cfg.train.total_steps:
        raise IlctError(f"{path}: step {state['step']} lies outside the run's 1..{cfg.train.total_steps}")
    ckpt.load_weights(model, path / "model.safetensors", what)
    ckpt.load_weights(ema, path / "ema.safetensors", what)
    try:
        opt.load_state_dict(ckpt.optimizer_from_files(
            ckpt.read_tensors(path / "optimizer.safetensors"), ckpt.read_json(path / "optimizer.json")))
        opt.check_state()
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise IlctError(f"optimizer state in {path} does not match the model: {e}") from None
    return state


def restore_newest(run_dir: Path, model, ema, opt, cfg: Config) -> tuple[Path | None, dict[str, Any]]:
    """The newest checkpoint that restores completely; a damaged newer one is passed over with one line.
    (None, {}) for a run stopped before its first checkpoint: it starts again from step 0."""
    first = ckpt.latest_checkpoint(run_dir)
    if first is None and not ckpt.list_checkpoints(run_dir):
        return None, {}
    if first is None:
        raise IlctError(f"--resume: {run_dir} has no whole checkpoint to resume from; start over with --force")
    older = [p for p in reversed(ckpt.list_checkpoints(run_dir)) if p.name < first.name and ckpt.whole(p) is None]
    problem = None
    for path in [first, *older]:
        try:
            state = restore(path, model, ema, opt, cfg)
        except IlctError as e:
            problem = problem or str(e)
            continue
        if path != first:
            print(f"note: {first.name} cannot be resumed ({problem}); resuming from {path.name}", file=sys.stderr)
        return path, state
    raise IlctError(f"--resume: no checkpoint of {run_dir} can be restored: {problem}")


def _train(cfg: Config, run_dir: Path, resume: bool, force: bool, progress: bool, dist: distributed.Dist,
           device: torch.device, stop: StopFlag, lock: RunLock, allow_other: tuple[bool, bool]) -> TrainResult:
    main = dist.main
    cfg = resume_config(cfg, run_dir) if resume else cfg
    if not resume:
        check_new_run_dir(run_dir, force)
    _absolute_paths(cfg)
    t = cfg.train
    setup_backends(device)
    data = load_run_data(cfg, run_dir, resume, allow_other[0], progress, dist, device, allow_other[1])
    ae, stats, maker, objective = data.ae, data.stats, data.maker, data.objective

    # ---- model, EMA, optimizer (RAdam that skips non-finite steps on the device)
    torch.manual_seed(t.seed)  # the initial weights, equal on every rank
    model, ema, opt = make_student(cfg, device)

    # ---- everything is checked: from here on the run folder is written, by this process alone
    if main:
        lock.acquire()
        stop.defer()
        if not resume:
            start_run_dir(cfg, run_dir, force, stats)
        elif any(allow_other):  # --allow-other-*: the run's config and statistics name what it trains on now
            stats = replace(stats, fingerprint=stats.fingerprint and ae.fingerprint(),
                            latent_set=stats.latent_set and data.latent_set)
            stats.save(run_dir / STATS_FILE)
            dump_config(cfg, run_dir / CONFIG_FILE)
    else:
        stop.defer()
    distributed.barrier(dist)
    start_step, nonfinite_total, lr_halved = 0, 0, False
    if resume:
        resume_from, state = restore_newest(run_dir, model, ema, opt, cfg)
        start_step, nonfinite_total = state.get("step", 0), state.get("nonfinite_total", 0)
        lr_halved = state.get("lr_halved", False)
        made_on = state.get("world_size", 1)
        if resume_from is not None and made_on != dist.world and main:  # allowed (the global batch is the same), but not a reproduction
            print(f"note: {resume_from.name} was written by {made_on} rank(s) and this run has {dist.world}: "
                  "training goes on, but the per-rank batch slices and OT pairings differ from the "
                  "uninterrupted run's, so it does not reproduce it", file=sys.stderr)
    if main:
        (run_dir / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
    stop.raise_if_stopped()  # a signal during start-up's writes: nothing trained yet

    student: torch.nn.Module = model
    if t.compile and t.cuda_graphs and device.type == "cuda":
        if dist.active:
            raise IlctError("train.cuda_graphs is not supported under torchrun; use train.compile alone")
        compile_model(model, "model", "reduce-overhead")  # launch-bound small models: docs/performance.md
    elif t.compile:
        compile_blocks(model)  # (cuda_graphs on a CPU: CUDA graphs need a GPU, the blocks are compiled)
    if dist.active:
        student = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)

    log_file = _open_log(run_dir / LOG_FILE) if main else None
    t_start = time.time()
    bar = tqdm(total=t.total_steps, initial=start_step, desc="train", disable=not (progress and main), dynamic_ncols=True)
    # running sums on the device, read only at check points: loss terms, good steps, bad steps,
    # the current run of bad steps and the longest run since the last check
    acc = torch.zeros(3, device=device)
    n_good, n_bad = torch.zeros((), device=device), torch.zeros((), device=device)
    run_bad, run_max = torch.zeros((), device=device), torch.zeros((), device=device)
    n_steps_logged, last_loss, t_log = 0, float("nan"), time.time()

    def log(record: dict[str, Any]) -> None:
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    def save(step: int, **extra: Any) -> None:
        if main:
            rng_tensors, rng_scalars = _rng_state(device)
            ckpt.save_checkpoint(run_dir, step, model, ema, opt, rng_tensors,
                                 {"nonfinite_total": nonfinite_total, "lr_halved": lr_halved, "arch": cfg.model.arch,
                                  "world_size": dist.world, "rng": rng_scalars, **extra}, keep=t.keep_checkpoints)
        distributed.barrier(dist)

    def write_grid(step: int) -> None:
        if main:
            grid = make_grid(generate(ema, ae, stats, cfg, t.num_sample_images, objective.grid_steps, seed=0))
            save_png(grid, run_dir / SAMPLES_DIR / f"step_{step:09d}.png", scale=2)

    prefetch = Prefetcher(maker, start_step, t.total_steps, device)
    try:
        k = start_step
        while k < t.total_steps:
            # -- the objective's schedule state (consistency: the curriculum's N, its sigmas and c(N))
            state = objective.state(k, device)
            # -- batch (drawn and OT-coupled ahead), dropout randomness of this step
            batch = prefetch.get(k)
            torch.manual_seed(step_seed(t.seed, k, 1 + dist.rank))
            values, bad = training_step(student, ema, opt, batch, objective, state, cfg, k)
            acc += values
            n_good += 1 - bad
            n_bad += bad
            run_bad = (run_bad + 1) * bad
            run_max = torch.maximum(run_max, run_bad)
            k += 1
            step = k
            bar.update(1)
            n_steps_logged += 1

            # -- check point: the only host synchronization (log, checkpoint, end, signal)
            stopping = distributed.any_rank(dist, stop.signal is not None, device) if (
                not dist.active or step % t.log_every == 0) else False
            is_log = step % t.log_every == 0 or step == t.total_steps
            is_ckpt = step % t.ckpt_every == 0 and step != t.total_steps
            is_grid = bool(t.sample_every) and step % t.sample_every == 0 and step != t.total_steps
            if not (is_log or is_ckpt or is_grid or stopping):
                continue
            bad_now, longest = int(n_bad.item()), int(run_max.item())
            if bad_now:
                nonfinite_total += bad_now
                log({"step": step, "event": "nonfinite", "count": bad_now, "nonfinite_total": nonfinite_total})
            n_bad.zero_()
            run_max.copy_(run_bad)
            # numerical policy: skipped and counted; max_nonfinite in a row -> roll back and halve lr once
            if longest >= t.max_nonfinite:
                latest = ckpt.latest_checkpoint(run_dir)
                if lr_halved or latest is None:
                    raise IlctError(
                        f"the loss or gradient was not finite for {longest} steps in a row, up to step {step}"
                        + (" after the learning rate was already halved" if lr_halved else " before any checkpoint")
                        + "; the last checkpoint is intact: lower train.lr or set train.grad_clip")
                k = restore(latest, model, ema, opt, cfg)["step"]
                lr_halved = True
                for group in opt.param_groups:
                    group["lr"] *= 0.5
                run_bad.zero_()
                run_max.zero_()
                log({"step": k, "event": "rollback", "checkpoint": latest.name, "lr": opt.param_groups[0]["lr"]})
                prefetch.close()
                prefetch = Prefetcher(maker, k, t.total_steps, device)
                bar.reset(total=t.total_steps)
                bar.update(k)
                continue
            if is_log:
                now = time.time()
                good = max(float(n_good.item()), 1.0)
                mean = (acc / good).tolist()
                last_loss = mean[0]
                fields = objective.log_fields(state)
                log({
                    "step": step, **fields,
                    "loss": mean[0], "consistency": mean[1], "diffusion": mean[2],
                    "nonfinite_total": nonfinite_total,
                    "img_per_s": round(n_steps_logged * t.batch_size / max(now - t_log, 1e-9), 1),
                    "elapsed_s": round(now - t_start, 1),
                })
                bar.set_postfix(**{key: (f"{v:.3g}" if isinstance(v, float) else v) for key, v in fields.items()},
                                loss=f"{last_loss:.4g}")
                acc.zero_()
                n_good.zero_()
                n_steps_logged, t_log = 0, now
            if is_grid:
                write_grid(step)
            if is_ckpt:
                save(step)
            if stopping and step != t.total_steps:
                if step % t.ckpt_every:
                    save(step)
                bar.close()
                if main:
                    print(f"stopped by signal {stop.signal} after step {step}; checkpoint saved, "
                          f"continue with: ilct train --out {run_dir} --resume")
                return TrainResult(run_dir, step, last_loss, time.time() - t_start, nonfinite_total, preempted=True)
    finally:
        prefetch.close()
        bar.close()
        if log_file is not None:
            log_file.close()
    end_step = max(start_step, t.total_steps)
    # the replicas of a torchrun job must agree: each rank's weight digest goes into the last checkpoint
    digests = distributed.gather_strings(dist, _weights_digest(model))
    if len(set(digests)) > 1:
        raise IlctError(f"the {dist.world} ranks ended with different weights; the last checkpoint is rank 0's")
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None or latest.name != f"step_{end_step:09d}":
        save(end_step, replica_digests=digests)
        write_grid(end_step)
    return TrainResult(run_dir, end_step, last_loss, time.time() - t_start, nonfinite_total)
