"""The training loop (`ilct train`): consistency training in latent space.

Reads top to bottom: set up the run directory, get the latents, build the
model, EMA and optimizer (or resume them), then loop: curriculum -> batch ->
OT coupling -> levels -> loss -> update -> EMA -> log / sample / checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ilct import checkpoint as ckpt
from ilct import faults
from ilct.autoencoders import load_autoencoder
from ilct.config import RUNTIME_KEYS, Config, config_from_yaml_file, dump_config, latent_dim
from ilct.consistency.coupling import ot_couple
from ilct.consistency.objective import LossTerms, consistency_training_loss
from ilct.edm import edm_loss
from ilct.consistency.schedule import karras_sigmas, level_probabilities, num_levels, sample_levels, scaling_c
from ilct.data.latents import LatentStats
from ilct.errors import IlctError
from ilct.grid import make_grid, save_png
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


def _rng_state(gen: torch.Generator, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every RNG the run touches: tensors for safetensors, the rest for JSON."""
    np_state = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state(), "data": gen.get_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    if device.type == "cuda":
        tensors["torch_cuda"] = torch.cuda.get_rng_state(device)
    py = random.getstate()
    scalars = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
               "python": [py[0], list(py[1]), py[2]]}
    return tensors, scalars


def _set_rng_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any], gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    gen.set_state(tensors["data"])
    if device.type == "cuda" and "torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["torch_cuda"], device)
    if "numpy_keys" in tensors and "numpy" in scalars:
        name, pos, has_gauss, cached = scalars["numpy"]
        np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    if "python" in scalars:
        version, internal, gauss = scalars["python"]
        random.setstate((version, tuple(internal), gauss))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, with foreach ops."""
    e = [p for p in ema.parameters()]
    m = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(e, m, 1.0 - decay)


def train(
    cfg: Config,
    run_dir: str | Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> TrainResult:
    run_dir = Path(run_dir)
    cfg, resume_from = prepare_run_dir(cfg, run_dir, resume, force)
    _absolute_paths(cfg)
    t, c, me = cfg.train, cfg.consistency, cfg.method
    device = resolve_device(t.device)
    torch.manual_seed(t.seed)
    gen = torch.Generator().manual_seed(t.seed)  # batch indices and noise z

    # ---- latents (encoded once per autoencoder and dataset, then cached)
    ae = load_autoencoder(cfg.autoencoder.kind, cfg.autoencoder.path).to(device)
    latent_set = load_latents(cfg, ae, device, progress)
    C, H, W = latent_set.shape
    if H != W:
        raise IlctError(f"latents must be square, got {C}x{H}x{W}")
    for name, have, want in (("in_channels", C, cfg.model.in_channels), ("input_size", H, cfg.model.input_size)):
        if want is not None and want != have:
            raise IlctError(f"config: model.{name}={want} but the autoencoder gives {C}x{H}x{W} latents")
    cfg.model.in_channels, cfg.model.input_size = C, H
    if resume_from is not None or resume:
        stats = LatentStats.load(run_dir / STATS_FILE)
    else:
        stats = latent_set.stats
    D = latent_dim(cfg)
    # Small latent sets live in memory (on the device); larger ones are gathered per batch from the memory map.
    in_memory = latent_set.nbytes <= IN_MEMORY_BYTES
    z_data = stats.normalize(latent_set.all(), c.sigma_data).to(device) if in_memory else None  # std sigma_d
    n_data = len(latent_set)
    labels = latent_set.labels.to(device) if cfg.model.num_classes > 0 else None

    # ---- model, EMA, optimizer
    model = build_model(cfg).to(device).train()
    ema = make_ema(model)
    opt = torch.optim.RAdam(
        model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.adam_eps, weight_decay=t.weight_decay
    )
    what = f"model {cfg.model.arch} of {run_dir}"

    def restore(path: Path) -> dict[str, Any]:
        """Model, EMA, optimizer and RNG states from a checkpoint; returns its state.json."""
        ckpt.load_weights(model, path / "model.safetensors", what)
        ckpt.load_weights(ema, path / "ema.safetensors", what)
        try:
            opt.load_state_dict(ckpt.optimizer_from_files(
                ckpt.read_tensors(path / "optimizer.safetensors"), ckpt.read_json(path / "optimizer.json")))
        except (ValueError, KeyError) as e:
            raise IlctError(f"optimizer state in {path} does not match the model: {e}") from None
        state = ckpt.read_json(path / "state.json")
        _set_rng_state(ckpt.read_tensors(path / "rng.safetensors"), state.get("rng", {}), gen, device)
        return state

    start_step, nonfinite_total, lr_halved = 0, 0, False
    if resume_from is not None:
        state = restore(resume_from)
        start_step, nonfinite_total = int(state["step"]), int(state.get("nonfinite_total", 0))
        lr_halved = bool(state.get("lr_halved", False))
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        stats.save(run_dir / STATS_FILE)
        dump_config(cfg, run_dir / CONFIG_FILE)
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)

    edm = t.objective == "edm"
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16")
    log_file = _open_log(run_dir / LOG_FILE)
    t_start = time.time()
    bar = tqdm(total=t.total_steps, initial=start_step, desc="train", disable=not progress, dynamic_ncols=True)
    cur_N, sigmas, probs, c_now = -1, None, None, 0.0
    acc = torch.zeros(3, device=device)  # loss, consistency term, diffusion term
    n_logged, consecutive_bad, last_loss = 0, 0, float("nan")
    t_log = time.time()

    def log(record: dict[str, Any]) -> None:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()

    def save(step: int) -> None:
        rng_tensors, rng_scalars = _rng_state(gen, device)
        ckpt.save_checkpoint(run_dir, step, model, ema, opt, rng_tensors,
                             {"nonfinite_total": nonfinite_total, "lr_halved": lr_halved, "arch": cfg.model.arch,
                              "rng": rng_scalars}, keep=t.keep_checkpoints)

    def write_grid(step: int) -> None:
        grid = make_grid(generate(ema, ae, stats, cfg, t.num_sample_images, 18 if edm else 1, seed=0))
        save_png(grid, run_dir / "samples" / f"step_{step:09d}.png", scale=2)

    with _StopFlag() as stop:
        try:
            k = start_step
            while k < t.total_steps:
                # -- curriculum (METHOD.md section 3) and the c schedule (technique 4)
                N = num_levels(k, t.total_steps, c.s0, c.s1)
                if N != cur_N:
                    cur_N = N
                    sigmas = karras_sigmas(N, c.sigma_min, c.sigma_max, c.rho).to(device, torch.float32)
                    probs = level_probabilities(sigmas.double().cpu(), c.p_mean, c.p_std).float()
                    c_now = scaling_c(N, D, c.s0, me.adaptive_c, c.c_scale)

                # -- batch, noise, OT coupling (technique 3), levels
                idx = torch.randint(0, n_data, (t.batch_size,), generator=gen)
                z = torch.randn((t.batch_size, C, H, W), generator=gen).to(device)
                i = sample_levels(probs, t.batch_size, gen).to(device)
                if in_memory:
                    x = z_data[idx.to(device)]
                else:
                    x = stats.normalize(latent_set.gather(idx.numpy()), c.sigma_data).to(device)
                y = labels[idx.to(device)] if labels is not None else None
                if me.ot_coupling and not edm:
                    z = ot_couple(x, z)

                # -- loss (techniques 1, 2; the teacher shares the student's dropout masks)
                with torch.autocast(**autocast):
                    if edm:  # the EDM diffusion reference: z is its noise, u its log-normal sigma draw
                        u = torch.randn((t.batch_size,), generator=gen).to(device)
                        diffusion = edm_loss(model, x, z, u, y)
                        terms = LossTerms(diffusion, diffusion.detach(), torch.zeros((), device=device))
                    else:
                        terms = consistency_training_loss(
                            model, x, z, i, sigmas, N, c_now, me.metric, me.diffusion_loss,
                            me.diffusion_weight, me.diffusion_fraction, c.sigma_data, y,
                        )
                loss = faults.corrupt_loss(k, terms.loss)
                opt.zero_grad(set_to_none=True)
                if torch.isfinite(loss):
                    loss.backward()
                    grads = [p.grad for p in model.parameters() if p.grad is not None]
                    if t.grad_clip > 0:
                        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                    else:
                        grad_norm = torch.nn.utils.get_total_norm(grads)
                    finite = bool(torch.isfinite(grad_norm))
                else:
                    finite = False

                # -- numerical policy: skip, count; K in a row -> roll back and halve lr once; again -> stop
                if not finite:
                    nonfinite_total += 1
                    consecutive_bad += 1
                    log({"step": k + 1, "event": "nonfinite", "nonfinite_total": nonfinite_total})
                    if consecutive_bad >= t.max_nonfinite:
                        latest = ckpt.latest_checkpoint(run_dir)
                        if lr_halved or latest is None:
                            raise IlctError(
                                f"the loss or gradient was not finite for {consecutive_bad} steps in a row, up to step {k + 1}"
                                + (" after the learning rate was already halved" if lr_halved else " before any checkpoint")
                                + "; the last checkpoint is intact: lower train.lr or set train.grad_clip")
                        k = int(restore(latest)["step"])
                        lr_halved, consecutive_bad = True, 0
                        for group in opt.param_groups:
                            group["lr"] *= 0.5
                        log({"step": k, "event": "rollback", "checkpoint": latest.name, "lr": opt.param_groups[0]["lr"]})
                        bar.reset(total=t.total_steps)
                        bar.update(k)
                        continue
                    k += 1
                    continue
                consecutive_bad = 0
                opt.step()
                ema_update(ema, model, t.ema_decay)

                # -- bookkeeping: sums stay on the device until a log step
                k += 1
                step = k
                acc += torch.stack([terms.loss.detach().float(), terms.consistency.float(), terms.diffusion.float()])
                n_logged += 1
                bar.update(1)
                if step % t.log_every == 0 or step == t.total_steps:
                    now = time.time()
                    mean = (acc / max(n_logged, 1)).tolist()
                    last_loss = mean[0]
                    log({
                        "step": step, "N": N, "c": c_now,
                        "loss": mean[0], "consistency": mean[1], "diffusion": mean[2],
                        "nonfinite_total": nonfinite_total,
                        "img_per_s": round(n_logged * t.batch_size / max(now - t_log, 1e-9), 1),
                        "elapsed_s": round(now - t_start, 1),
                    })
                    bar.set_postfix(N=N, c=f"{c_now:.3g}", loss=f"{last_loss:.4g}")
                    acc.zero_()
                    n_logged, t_log = 0, now
                if t.sample_every and step % t.sample_every == 0 and step != t.total_steps:
                    write_grid(step)
                if step % t.ckpt_every == 0 and step != t.total_steps:
                    save(step)
                if stop.signal is not None and step != t.total_steps:
                    if step % t.ckpt_every:
                        save(step)
                    bar.close()
                    print(f"stopped by signal {stop.signal} after step {step}; checkpoint saved, "
                          f"continue with: ilct train --out {run_dir} --resume")
                    return TrainResult(run_dir, step, last_loss, time.time() - t_start, nonfinite_total, preempted=True)
        finally:
            bar.close()
            log_file.close()
    end_step = max(start_step, t.total_steps)
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None or latest.name != f"step_{end_step:09d}":
        save(end_step)
        write_grid(end_step)
    return TrainResult(run_dir, end_step, last_loss, time.time() - t_start, nonfinite_total)
