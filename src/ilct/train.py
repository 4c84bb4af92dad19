"""The training loop (`ilct train`): consistency training in latent space.

Reads top to bottom: set up the run directory, get the latents, build the
model, EMA and optimizer (or resume them), then loop: curriculum ->
batch (drawn ahead with its OT coupling, ilct.batches) -> loss -> update -> EMA, with no host
synchronization inside a step; log / sample / checkpoint at check points. The same loop runs
one process or several under `torchrun` (ilct.distributed).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sys
import threading
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
from ilct.config import RUNTIME_KEYS, Config, config_from_yaml_file, dump_config, latent_dim
from ilct.consistency.objective import LossTerms, consistency_training_loss
from ilct.consistency.schedule import karras_sigmas, num_levels, scaling_c
from ilct.data.latents import LatentStats
from ilct.edm import edm_loss
from ilct.errors import IlctError
from ilct.grid import make_grid, save_png
from ilct.optim import RAdam
from ilct.run import CONFIG_FILE, LOG_FILE, STATS_FILE, build_model, load_latents, make_ema, resolve_device
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


class _StopFlag:
    """Turns SIGTERM and SIGINT into a request to stop after the current step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


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


def prepare_run_dir(cfg: Config, run_dir: Path, resume: bool, force: bool) -> tuple[Config, Path | None]:
    """Refuse to clobber another run; on resume, take the run's own config."""
    has_run = (run_dir / CONFIG_FILE).exists() or (run_dir / "checkpoints").exists()
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise IlctError(f"--resume: {run_dir} holds no run (no {CONFIG_FILE})")
        saved = config_from_yaml_file(run_dir / CONFIG_FILE)
        # Settings the user gave now may differ only in run-time keys; the rest comes from the run.
        wanted = replace(cfg, model=replace(cfg.model, in_channels=saved.model.in_channels, input_size=saved.model.input_size))
        bad = [k for k in _changed_keys(saved, wanted) if k not in RUNTIME_KEYS]
        if bad:
            raise IlctError(f"--resume: the run was made with other settings ({', '.join(bad[:4])}); "
                            "drop those --set values or start a new --out")
        for key in RUNTIME_KEYS:
            s, k = key.split(".")
            setattr(getattr(saved, s), k, getattr(getattr(cfg, s), k))
        return saved, ckpt.latest_checkpoint(run_dir)
    if has_run and not force:
        raise IlctError(f"{run_dir} already holds a run: use --resume to continue it or --force to start over")
    if has_run and force:
        for sub in ("checkpoints", "samples"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
        for f in (LOG_FILE, CONFIG_FILE, STATS_FILE):
            (run_dir / f).unlink(missing_ok=True)
    return cfg, None


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


def levels(cfg: Config, N: int, device: torch.device) -> tuple[torch.Tensor, float]:
    """The N discretization levels' Karras sigmas (METHOD.md section 3, fp32 on `device`) and the
    scaling c for N (technique 4)."""
    c = cfg.consistency
    sigmas = karras_sigmas(N, c.sigma_min, c.sigma_max, c.rho).to(device, torch.float32)
    return sigmas, scaling_c(N, latent_dim(cfg), c.s0, cfg.method.adaptive_c, c.c_scale)


def make_batch_maker(cfg: Config, gather, n_data: int, shape: tuple[int, int, int], labels: torch.Tensor | None = None,
                     rank: int = 0, world: int = 1) -> BatchMaker:
    """The BatchMaker of cfg's run: its seed, batch size, curriculum, level draw and OT switch."""
    t, c = cfg.train, cfg.consistency
    return BatchMaker(gather, n_data, shape, labels, t.batch_size, t.seed, t.total_steps, t.objective == "edm",
                      cfg.method.ot_coupling, c.s0, c.s1, c.sigma_min, c.sigma_max, c.rho, c.p_mean, c.p_std,
                      rank, world)


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
    sigmas: torch.Tensor,
    N: int,
    c_now: float,
    cfg: Config,
    k: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One update, without a host synchronization: returns (loss, consistency, diffusion) and a 0/1
    tensor `bad` (the loss or gradient was not finite: the update was skipped on the device)."""
    t, me = cfg.train, cfg.method
    if batch.x.is_cuda:  # a new iteration for CUDA graphs (compiled with mode reduce-overhead); no-op otherwise
        torch.compiler.cudagraph_mark_step_begin()
    with torch.autocast(device_type=batch.x.device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16"):
        if t.objective == "edm":  # the EDM diffusion reference: z is its noise, u its log-normal sigma draw
            diffusion = edm_loss(model, batch.x, batch.z, batch.u, batch.y)
            terms = LossTerms(diffusion, diffusion.detach(), torch.zeros((), device=batch.x.device))
        else:  # techniques 1, 2; the teacher shares the student's dropout masks
            terms = consistency_training_loss(
                model, batch.x, batch.z, batch.i, sigmas, N, c_now, me.metric, me.diffusion_loss,
                me.diffusion_weight, me.diffusion_fraction, cfg.consistency.sigma_data, batch.y,
            )
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
) -> TrainResult:
    run_dir = Path(run_dir)
    dist, device = distributed.init(resolve_device(cfg.train.device))
    try:
        return _train(cfg, run_dir, resume, force, progress, dist, device)
    finally:
        distributed.shutdown(dist)


def _train(cfg: Config, run_dir: Path, resume: bool, force: bool, progress: bool,
           dist: distributed.Dist, device: torch.device) -> TrainResult:
    main = dist.main
    if main:
        cfg, resume_from = prepare_run_dir(cfg, run_dir, resume, force)
    distributed.barrier(dist)
    if not main:  # the other ranks read what rank 0 decided
        cfg, resume_from = prepare_run_dir(cfg, run_dir, True, False) if resume else (cfg, None)
    _absolute_paths(cfg)
    t, c = cfg.train, cfg.consistency
    setup_backends(device)
    edm = t.objective == "edm"

    # ---- latents (encoded once per autoencoder and dataset, then cached; rank 0 encodes first)
    ae = load_autoencoder(cfg.autoencoder.kind, cfg.autoencoder.path).to(device)
    if not main:
        distributed.barrier(dist)
    latent_set = load_latents(cfg, ae, device, progress and main)
    if main:
        distributed.barrier(dist)
    C, H, W = latent_set.shape
    if H != W:
        raise IlctError(f"latents must be square, got {C}x{H}x{W}")
    for name, have, want in (("in_channels", C, cfg.model.in_channels), ("input_size", H, cfg.model.input_size)):
        if want is not None and want != have:
            raise IlctError(f"config: model.{name}={want} but the autoencoder gives {C}x{H}x{W} latents")
    cfg.model.in_channels, cfg.model.input_size = C, H
    stats = LatentStats.load(run_dir / STATS_FILE) if (resume_from is not None or resume) else latent_set.stats
    # Small latent sets live in (host) memory; larger ones are gathered per batch from the memory map.
    if latent_set.nbytes <= IN_MEMORY_BYTES:
        z_data = stats.normalize(latent_set.all(), c.sigma_data)  # std sigma_d
        gather = z_data.__getitem__
    else:
        gather = lambda idx: stats.normalize(latent_set.gather(idx.numpy()), c.sigma_data)  # noqa: E731
    if cfg.model.num_classes != 0:  # class-conditional: labels stored with the latents
        if latent_set.labels is None or len(latent_set.labels) == 0:
            raise IlctError("config: model.num_classes is set but the latents carry no labels "
                            "(Fashion-MNIST, or an image folder with data.labels_from_subfolders)")
        if cfg.model.num_classes < 0:
            cfg.model.num_classes = int(latent_set.labels.max()) + 1
        if int(latent_set.labels.max()) >= cfg.model.num_classes:
            raise IlctError(f"config: model.num_classes={cfg.model.num_classes} but the labels go up to "
                            f"{int(latent_set.labels.max())}")
    labels = latent_set.labels if cfg.model.num_classes > 0 else None
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
    n_data = len(latent_set)
    if kept is not None:
        if main:
            print(f"caption_holdout {cfg.data.caption_holdout!r}: training on {len(kept)} of {n_data} latents", flush=True)
        base_gather, n_data = gather, len(kept)
        gather = lambda idx: base_gather(kept[idx])  # noqa: E731
        labels = labels[kept] if labels is not None else None
    try:
        maker = make_batch_maker(cfg, gather, n_data, (C, H, W), labels, dist.rank, dist.world)
    except ValueError as e:
        raise IlctError(f"config: {e}") from None

    # ---- model, EMA, optimizer (RAdam that skips non-finite steps on the device)
    torch.manual_seed(t.seed)  # the initial weights, equal on every rank
    model, ema, opt = make_student(cfg, device)
    what = f"model {cfg.model.arch} of {run_dir}"

    def restore(path: Path) -> dict[str, Any]:
        """Model, EMA and optimizer states from a checkpoint; returns its state.json."""
        ckpt.load_weights(model, path / "model.safetensors", what)
        ckpt.load_weights(ema, path / "ema.safetensors", what)
        try:
            opt.load_state_dict(ckpt.optimizer_from_files(
                ckpt.read_tensors(path / "optimizer.safetensors"), ckpt.read_json(path / "optimizer.json")))
        except (ValueError, KeyError) as e:
            raise IlctError(f"optimizer state in {path} does not match the model: {e}") from None
        return ckpt.read_json(path / "state.json")

    start_step, nonfinite_total, lr_halved = 0, 0, False
    if resume_from is not None:
        state = restore(resume_from)
        start_step, nonfinite_total = int(state["step"]), int(state.get("nonfinite_total", 0))
        lr_halved = bool(state.get("lr_halved", False))
        made_on = int(state.get("world_size", 1))
        if made_on != dist.world and main:  # allowed (the global batch is the same), but not a reproduction
            print(f"note: {resume_from.name} was written by {made_on} rank(s) and this run has {dist.world}: "
                  "training goes on, but the per-rank batch slices and OT pairings differ from the "
                  "uninterrupted run's, so it does not reproduce it", file=sys.stderr)
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        stats.save(run_dir / STATS_FILE)
        dump_config(cfg, run_dir / CONFIG_FILE)
    if main:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    distributed.barrier(dist)

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
    cur_N, sigmas, c_now = -1, None, 0.0
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
            grid = make_grid(generate(ema, ae, stats, cfg, t.num_sample_images, 18 if edm else 1, seed=0))
            save_png(grid, run_dir / "samples" / f"step_{step:09d}.png", scale=2)

    prefetch = Prefetcher(maker, start_step, t.total_steps, device)
    with _StopFlag() as stop:
        try:
            k = start_step
            while k < t.total_steps:
                # -- curriculum (METHOD.md section 3) and the c schedule (technique 4)
                N = num_levels(k, t.total_steps, c.s0, c.s1)
                if N != cur_N:
                    cur_N = N
                    sigmas, c_now = levels(cfg, N, device)
                # -- batch (drawn and OT-coupled ahead, in a thread), dropout randomness of this step
                batch = prefetch.get(k)
                torch.manual_seed(step_seed(t.seed, k, 1 + dist.rank))
                values, bad = training_step(student, ema, opt, batch, sigmas, N, c_now, cfg, k)
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
                    k = int(restore(latest)["step"])
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
                    log({
                        "step": step, "N": N, "c": c_now,
                        "loss": mean[0], "consistency": mean[1], "diffusion": mean[2],
                        "nonfinite_total": nonfinite_total,
                        "img_per_s": round(n_steps_logged * t.batch_size / max(now - t_log, 1e-9), 1),
                        "elapsed_s": round(now - t_start, 1),
                    })
                    bar.set_postfix(N=N, c=f"{c_now:.3g}", loss=f"{last_loss:.4g}")
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
