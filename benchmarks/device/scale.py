"""The wrappers for several GPUs, measured on one: DDP and FSDP2 against the plain loop, and what MeanFlow's JVP costs.

Each row is ilct.training.step.training_step (as `ilct train` runs it: bf16 autocast, the `ilct` preset's method, OT
coupling, RAdam and EMA, batches prefetched; blocks torch.compile'd where the row says so) on synthetic N(0, 1/4)
latents, with the model wrapped one of three ways:

    plain   the model itself (one process, as `ilct train` without torchrun)
    ddp     DistributedDataParallel(broadcast_buffers=False) around it, as ilct.training.loop wraps it under torchrun
    fsdp2   torch.distributed.fsdp.fully_shard on every block, then on the root (the EMA copy sharded the same
            way); compiled rows compile each sharded block in place, so FSDP2's hooks are inside the compiled
            call (what Dynamo makes of them depends on the torch version; each compiled row counts its graph breaks)

The process group is this process alone (world size 1: NCCL on a GPU, gloo on the CPU). One rank
communicates with nobody, but the wrappers still do their work: DDP copies the gradients into its buckets
and launches an all-reduce per bucket from its autograd hooks; FSDP2 keeps the weights as DTensor shards,
all-gathers them before each block's forward and backward, frees them after, and reduce-scatters the
gradients. What a row costs over `plain` at world size 1 is that overhead (and, for FSDP2, what its hooks do
to torch.compile), not the communication time of a real multi-GPU job.

Models: (1) DiT-B/2 on 32x32x4 latents at batch 128 (the `ilct` preset); (2) the clip DiT of the video preset
(`fmnist-video-ilct`: DiT-T/2, 8 latent frames of 8x8x4, the caption's pooled vector and 8 tokens
cross-attended), and the same clips at DiT-B/2 size; (3) MeanFlow (the `meanflow` preset, DiT-B/2 shape):
its training step against the consistency step of (1) with the same wrapping and compilation, and the JVP
alone: one forward of the network against the same forward with the tangent (torch.func.jvp, which runs
attention on the math kernel), and the forward on the math kernel, to tell the two apart.

Every DiT here has its final layer in fp32 under autocast (ilct.nets.dit's `fp32_final_layer`, on by default
and not a config setting; each row records what the built model has).

Each row: warm-up steps (compilation happens here), then timed steps between device synchronizations:
images (or clips) per second, ms per step, peak device memory, and MFU = FLOPs of one step
(torch.utils.flop_counter on the eager, unwrapped model at a small batch, scaled; as
benchmarks/speed/throughput.py counts) / time / the bf16 matrix-product peak measured in this run.

Rows run cheapest first: every wrapping eager (no compilation, a few seconds each), then the compiled
rows in order of interest (DiT-B/2 plain, DDP, FSDP2; the clips plain and DDP; MeanFlow; the clips under
FSDP2). A row past its deadline (--row-deadline, compilation included) is stopped and recorded; after
--deadline the rest are recorded as not run.

FSDP2 needs the optimizer over lists of tensors (train.fused_optimizer=false: sharding replaces the
parameters, so they cannot be views of one flat buffer); a `plain` row with that optimizer is measured
too, the like-for-like reference of the FSDP2 rows. Three parts of the step do not take FSDP2's DTensor
parameters, and this script works around them without changing the library: the step runs under DTensor's
implicit_replication (the grad-norm and skip tensors mix DTensors with plain ones); ilct.training.optim.RAdam's
update runs on each rank's shards (`ShardRAdam`: its gradient copy into one flat buffer is refused for
the shard of a (1, ...) parameter); and the EMA update (ilct.training.step.ema_update reads the weights' storage to
find flat buffers) is swapped, for the FSDP2 rows only, for the same lerp on the shards.

    PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 python3 benchmarks/device/scale.py --out $OUT       # one GPU, ~7 min
    python benchmarks/device/scale.py --tiny --out /tmp/scale                                  # CPU rehearsal, seconds

Writes scale.json and scale.md into --out after every row (a run stopped from outside keeps what it measured).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib
import os
import platform
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import sympy  # noqa: F401  (here, not first in a row: see `deadline`)
import torch
import torch.distributed as dist
from torch._dynamo.utils import counters
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.experimental import implicit_replication
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.flop_counter import FlopCounterMode

import ilct.training.step
from ilct.training.accel import compile_model, setup_backends
from ilct.training.batches import Prefetcher
from ilct.training.build import build_student, make_batch_maker
from ilct.config import load_config
from ilct.objectives.meanflow.maths import flow_path
from ilct.nets.embedders import pack_text
from ilct.objectives import make_objective
from ilct.training.optim import RAdam, radam_update_
from ilct.models import build_model
from ilct.training.step import training_step

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402
from benchmarks.speed.throughput import measure_peak, seconds_per_call, sync  # noqa: E402

N_DATA = 1024  # synthetic latents (or clips) the batches are drawn from
WORLD_NOTE = ("world size 1: DDP's bucketing and all-reduce hooks and FSDP2's all-gather / reduce-scatter and "
              "DTensor bookkeeping run, over one rank; the overhead of the wrappers, not multi-GPU communication")


class RowDeadline(Exception):
    """Raised in the middle of a row (by SIGALRM) when its time is up."""


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise RowDeadline in this (main) thread after `seconds`, e.g. in the middle of a compilation. An import
    stopped half way leaves a broken module behind for the later rows, so what the rows import lazily (sympy,
    Inductor) is imported before the first row."""
    def alarm(signum, frame):
        raise RowDeadline(f"row deadline ({seconds:.3g} s) passed")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- the rows


@dataclass(frozen=True)
class Model:
    """One model kind: a preset, a backbone size and the latent shape it trains on."""

    kind: str  # image | clip | meanflow
    preset: str
    arch: str
    shape: tuple[int, ...]  # (C, H, W) latents or (C, T, H, W) clips
    batch: int

    @property
    def label(self) -> str:
        return f"{self.kind} {self.arch} {'x'.join(map(str, self.shape))}"

    @property
    def unit(self) -> str:
        return "clips" if len(self.shape) == 4 else "img"


@dataclass(frozen=True)
class Row:
    model: Model
    wrapping: str  # plain | ddp | fsdp2 | jvp (the JVP alone, MeanFlow models only)
    compiled: bool
    fused: bool = True  # train.fused_optimizer (flat weights and one RAdam kernel); FSDP2 needs False

    @property
    def name(self) -> str:
        opt = "" if self.fused or self.wrapping == "fsdp2" else " (list optimizer)"
        return f"{self.model.label} {self.wrapping}{opt} {'compiled' if self.compiled else 'eager'}"


def plan(image: Model, clips: list[Model], meanflow: Model, compile_: bool) -> list[Row]:
    """Cheap eager rows of every kind first, then the compiled ones in order of interest (the deadline cuts the tail)."""
    rows = [Row(image, "plain", False), Row(image, "plain", False, fused=False), Row(image, "ddp", False),
            Row(image, "fsdp2", False, fused=False),
            Row(meanflow, "jvp", False), Row(meanflow, "plain", False), Row(meanflow, "ddp", False),
            Row(meanflow, "fsdp2", False, fused=False)]
    for clip in clips:
        rows += [Row(clip, "plain", False), Row(clip, "ddp", False), Row(clip, "fsdp2", False, fused=False)]
    if compile_:  # the DDP rows reuse the plain rows' compiled block graphs (same code, same shapes)
        rows += [Row(image, "plain", True), Row(image, "ddp", True), Row(image, "fsdp2", True, fused=False)]
        for clip in reversed(clips):  # the DiT-B/2-size clips first
            rows += [Row(clip, "plain", True), Row(clip, "ddp", True)]
        rows += [Row(meanflow, "plain", True), Row(meanflow, "ddp", True), Row(meanflow, "fsdp2", True, fused=False)]
        rows += [Row(clip, "fsdp2", True, fused=False) for clip in reversed(clips)]
    return rows


def make_cfg(m: Model, compiled: bool, fused: bool):
    cfg = load_config(m.preset, [f"model.arch={m.arch}", f"train.batch_size={m.batch}", "train.precision=bf16",
                                 f"train.compile={'true' if compiled else 'false'}",
                                 f"train.fused_optimizer={'true' if fused else 'false'}"])
    cfg.model.in_channels, cfg.model.input_size = m.shape[0], m.shape[-1]
    cfg.model.frames = m.shape[1] if len(m.shape) == 4 else 0
    return cfg


@dataclass
class Data:
    """Synthetic latents and the conditions the model takes (caption conditions for the clip preset)."""

    latents: torch.Tensor
    labels: torch.Tensor | None


def make_data(cfg, shape: tuple[int, ...]) -> Data:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn((N_DATA, *shape), generator=g) * 0.5
    labels = None
    m = cfg.model
    if m.num_classes > 0:
        labels = torch.randint(0, m.num_classes, (N_DATA,), generator=g)
    elif m.text_dim > 0 and m.text_tokens > 0:
        L = m.text_tokens
        lengths = torch.randint(3, L + 1, (N_DATA,), generator=g)
        labels = pack_text(torch.randn(N_DATA, m.text_dim, generator=g), torch.randn(N_DATA, L, m.text_dim, generator=g),
                           torch.arange(L)[None, :] < lengths[:, None])
    elif m.text_dim > 0:
        labels = torch.randn(N_DATA, m.text_dim, generator=g)
    return Data(latents, labels)


def batch_maker(cfg, objective, data: Data, shape):
    return make_batch_maker(cfg, objective, data.latents.__getitem__, N_DATA, tuple(shape), data.labels)


def count_flops(m: Model, device: torch.device, probe: int = 8) -> float:
    """FLOPs of one training step at batch m.batch: the objective's loss and its backward on the eager, unwrapped
    model in fp32 at batch `probe`, scaled linearly (optimizer and EMA not counted, as throughput.py)."""
    cfg = make_cfg(m, False, False)
    probe = min(probe, m.batch)
    cfg.train.batch_size = probe
    objective = make_objective(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    batch = batch_maker(cfg, objective, make_data(cfg, m.shape), m.shape).make(0).to(device)
    counter = FlopCounterMode(display=False)
    with counter:
        objective.loss(model, batch, objective.state(0, device)).loss.backward()
    return counter.get_total_flops() * m.batch / probe


def local(t):
    """A DTensor's local shard (the whole tensor at world size 1), or t itself."""
    return t.to_local() if isinstance(t, DTensor) else t


@torch.no_grad()
def ema_update_on_shards(ema: torch.nn.Module, model: torch.nn.Module, decay: float, keep=None) -> None:
    """ilct.training.step.ema_update's lerp over each rank's shards (EMA and model sharded alike)."""
    for e, m in zip(ema.parameters(), model.parameters()):
        e, m = local(e), local(m)
        w = torch.full((), 1.0 - decay, dtype=e.dtype, device=e.device)
        e.lerp_(m, w if keep is None else w * local(keep).to(w.dtype))


class ShardRAdam(RAdam):
    """ilct.training.optim.RAdam on each rank's shards of FSDP2's DTensor parameters: the update is elementwise, so it is
    the same update (ilct.training.optim.RAdam itself flattens the gradients into one buffer, which DTensor refuses for a
    shard of a (1, ...) parameter)."""

    def step(self, found_inf=None, lr_scale: float = 1.0) -> None:  # type: ignore[override]
        super().step(None if found_inf is None else local(found_inf), lr_scale)

    def step_group(self, index: int, group: dict, params: list[torch.Tensor], keep: torch.Tensor, hyper: tuple) -> None:
        for p in params:
            st = self.state[p]
            if not st:
                st["step"] = torch.zeros((), dtype=torch.float32, device=local(p).device)
                st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(local(p)), torch.zeros_like(local(p))
        grads = [torch.nan_to_num(local(p.grad), nan=0.0, posinf=0.0, neginf=0.0) for p in params]
        radam_update_([local(p) for p in params], grads, [self.state[p]["exp_avg"] for p in params],
                      [self.state[p]["exp_avg_sq"] for p in params], [self.state[p]["step"] for p in params],
                      keep, *hyper)


@contextlib.contextmanager
def fsdp2_step():
    """training_step over FSDP2 modules: plain tensors count as replicated DTensors, the EMA lerps the shards."""
    original = ilct.training.step.ema_update
    ilct.training.step.ema_update = ema_update_on_shards
    try:
        with implicit_replication():
            yield
    finally:
        ilct.training.step.ema_update = original


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    return next(m for m in model.modules() if hasattr(m, "final_layer"))


def wrap(row: Row, cfg, device: torch.device):
    """(the model the step calls, its EMA, the optimizer) for the row's wrapping, compiled as ilct.training.loop does."""
    torch.manual_seed(0)
    model, ema, opt = build_student(cfg, device, quiet=True)
    if row.wrapping == "fsdp2":
        for module in (model, ema):
            for block in backbone(module).blocks:
                fully_shard(block)
            fully_shard(module)
        t = cfg.train  # the parameters are new (DTensor shards): a new optimizer over them
        opt = ShardRAdam(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.adam_eps, weight_decay=t.weight_decay)
    if row.compiled:
        compile_model(model, "blocks")
    if row.wrapping == "ddp":
        model = DDP(model, device_ids=[device.index or 0] if device.type == "cuda" else None, broadcast_buffers=False)
    return model, ema, opt


def graph_breaks() -> int:
    return sum(counters["graph_break"].values())


def measure_step(row: Row, device: torch.device, steps: int, warmup: int, flops: float, peak: float) -> dict:
    """`steps` timed training steps after `warmup` untimed ones: rate, time, FLOP rate and MFU."""
    m = row.model
    cfg = make_cfg(m, row.compiled, row.fused)
    model, ema, opt = wrap(row, cfg, device)
    objective = make_objective(cfg)
    maker = batch_maker(cfg, objective, make_data(cfg, m.shape), m.shape)
    state = objective.state(0, device)
    prefetch = Prefetcher(maker, 0, warmup + steps, device)
    breaks = graph_breaks()
    out = {"fp32_final_layer": bool(backbone(model).final_layer.fp32), "fused_optimizer": row.fused}
    scope = fsdp2_step() if row.wrapping == "fsdp2" else contextlib.nullcontext()
    try:
        with scope:
            t0 = time.perf_counter()
            for k in range(warmup):
                training_step(model, ema, opt, prefetch.get(k), objective, state, cfg, k)
            sync(device)
            out["warmup_s"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            acc = torch.zeros(3, device=device)
            for k in range(warmup, warmup + steps):
                values, _ = training_step(model, ema, opt, prefetch.get(k), objective, state, cfg, k)
                acc += local(values)
            sync(device)
            seconds = (time.perf_counter() - t0) / steps
    finally:
        prefetch.close()
    if not torch.isfinite(acc).all():
        raise RuntimeError("non-finite loss")
    tflops = flops / seconds / 1e12
    out.update(per_s=m.batch / seconds, ms_per_step=seconds * 1e3, tflop_per_step=flops / 1e12, tflops=tflops,
               mfu=tflops / peak)
    if row.compiled:
        out["graph_breaks"] = graph_breaks() - breaks
    return out


def measure_jvp(row: Row, device: torch.device, steps: int, warmup: int) -> dict:
    """The JVP alone, on the eager MeanFlow model under bf16 autocast, no gradient: u(z, r, t) against
    (u, du/dt) with tangent (v, 0, 1), and the plain forward on the math attention kernel that the JVP uses."""
    m = row.model
    cfg = make_cfg(m, False, False)
    objective = make_objective(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    batch = batch_maker(cfg, objective, make_data(cfg, m.shape), m.shape).make(0).to(device)
    r, t = batch.draw[:, 0], batch.draw[:, 1]
    z, v = flow_path(batch.x, batch.z, t)  # z_t and the velocity e - x, the tangent of z

    def timed(fn) -> float:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            return seconds_per_call(fn, warmup, steps, device) * 1e3

    def forward_math():
        with sdpa_kernel(SDPBackend.MATH):
            model(z, r, t, batch.y)

    out = {"forward_ms": timed(lambda: model(z, r, t, batch.y)), "forward_math_ms": timed(forward_math),
           "jvp_ms": timed(lambda: model(z, r, t, batch.y, tangent=v))}
    out["jvp_over_forward"] = out["jvp_ms"] / out["forward_ms"]
    out["jvp_over_forward_math"] = out["jvp_ms"] / out["forward_math_ms"]
    return out


# --------------------------------------------------------------------------- the report


def error_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:240] if text else ''}"


def consistency_reference(report: dict, row: dict) -> dict | None:
    """The image row a MeanFlow row is held against: same wrapping, compilation and optimizer."""
    for r in report["rows"]:
        if (r["kind"] == "image" and r["wrapping"] == row["wrapping"] and r["compiled"] == row["compiled"]
                and r.get("fused_optimizer") == row.get("fused_optimizer") and "ms_per_step" in r):
            return r
    return None


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for row in report["rows"]:
        if row["kind"] == "meanflow" and row["wrapping"] != "jvp" and "ms_per_step" in row:
            ref = consistency_reference(report, row)
            if ref is not None:
                row["over_consistency_step"] = row["ms_per_step"] / ref["ms_per_step"]
    common.write_json(out / "scale.json", report)
    lines = ["| model | batch | wrapping | compiled | per s | ms/step | peak GiB | TFLOP/s | MFU | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    jvp = ["| model | batch | forward ms | forward (math attention) ms | JVP ms | JVP / forward | JVP / forward (math) |",
           "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        head = f"| {r['model']} | {r['batch']} | {r['wrapping']}{'' if r.get('fused_optimizer', True) else ' (lists)'} | {r['compiled']} "
        note = r.get("note", "")
        if "error" in r:
            if r["wrapping"] == "jvp":
                jvp.append(f"| {r['model']} | {r['batch']} | {r['error']} | | | | |")
            else:
                lines.append(head + f"| | | | | | {r['error']} {note} |")
        elif r["wrapping"] == "jvp":
            jvp.append(f"| {r['model']} | {r['batch']} | {r['forward_ms']:.1f} | {r['forward_math_ms']:.1f} | "
                       f"{r['jvp_ms']:.1f} | {r['jvp_over_forward']:.2f} | {r['jvp_over_forward_math']:.2f} |")
        else:
            if "over_consistency_step" in r:
                note = f"{r['over_consistency_step']:.2f}x the consistency step; {note}"
            if r.get("graph_breaks"):
                note = f"{r['graph_breaks']} graph breaks; {note}"
            gib = f"{r['peak_gib']:.1f}" if "peak_gib" in r else ""
            lines.append(head + f"| {r['per_s']:.0f} {r['unit']} | {r['ms_per_step']:.1f} | {gib} "
                         f"| {r['tflops']:.3g} | {r['mfu']:.3f} | {note.strip('; ')} |")
    (out / "scale.md").write_text(
        "# DDP, FSDP2 and MeanFlow's JVP on one device\n\n"
        f"Device: {report['device']}; torch {report['torch']}; {report['date']}; measured bf16 matrix-product peak "
        f"{report['peak_tflops']:.3g} TFLOP/s.\n\nCommand: `{report['command']}`\n\n{report['world']}.\n\n"
        f"Step: {report['step']}\n\n" + "\n".join(lines) + "\n\nThe JVP alone (MeanFlow's network, bf16 autocast, no "
        "gradient):\n\n" + "\n".join(jvp) + "\n")


def run_row(row: Row, device: torch.device, args, peak: float, flops: dict, seconds: float) -> dict:
    """The row's measurements (or its error), stopped after `seconds`."""
    m, rec, t0 = row.model, {}, time.time()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with deadline(seconds):
            if row.wrapping == "jvp":
                rec.update(measure_jvp(row, device, args.steps, args.warmup))
            else:
                if m not in flops:  # the same for every wrapping
                    flops[m] = count_flops(m, device)
                rec.update(measure_step(row, device, args.steps, args.warmup, flops[m], peak))
        if device.type == "cuda":
            rec["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except torch.OutOfMemoryError:
        rec["error"] = "out of memory"
    except Exception as e:  # a failed row is recorded; the others still run
        rec["error"] = error_line(e)
    if row.compiled and row.wrapping == "fsdp2" and "error" in rec:
        rec["note"] = "compiled FSDP2 failed: see the eager fsdp2 row"
    rec["wall_s"] = round(time.time() - t0, 1)
    return rec


def summary(rec: dict) -> str:
    """The row's line of the log."""
    if "error" in rec:
        return rec["error"]
    if rec["wrapping"] == "jvp":
        return (f"forward {rec['forward_ms']:.1f} ms, on the math attention kernel {rec['forward_math_ms']:.1f} ms, "
                f"JVP {rec['jvp_ms']:.1f} ms ({rec['jvp_over_forward']:.2f}x the forward)")
    gib = f", {rec['peak_gib']:.1f} GiB" if "peak_gib" in rec else ""
    return f"{rec['per_s']:.0f} {rec['unit']}/s, {rec['ms_per_step']:.1f} ms/step{gib}, MFU {rec['mfu']:.3f}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.lower().split("x"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="scale_out", help="folder for scale.json and scale.md")
    p.add_argument("--model", default="DiT-B/2", help="the image and MeanFlow backbone")
    p.add_argument("--latent", type=int, default=32, help="image latent side (4 channels)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--clip-preset", default="fmnist-video-ilct")
    p.add_argument("--clip-models", default="", help="comma-separated; default: the clip preset's model, and DiT-B/2 "
                   "too when that one is a DiT-T")
    p.add_argument("--clip-latent", default="4x8x8x8", help="CxTxHxW: the clip preset's latents (8 frames of 32x32 "
                   "through the built-in autoencoder, frame by frame: the preset's header)")
    p.add_argument("--clip-batch", type=int, default=128, help="clips per step (the preset trains at 32 on a CPU)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-compile", action="store_true", help="eager rows only")
    p.add_argument("--deadline", type=float, default=420, help="seconds; the rows after it are recorded as not run")
    p.add_argument("--row-deadline", type=float, default=120, help="seconds a row may take, compilation included")
    p.add_argument("--tiny", action="store_true", help="a CPU rehearsal in seconds: DiT-T/4 on 8x8x4 latents and "
                   "4x2x8x8 clips, batch 4, 2 steps, no compilation")
    args = p.parse_args()
    if args.tiny:
        args.device, args.model, args.latent, args.batch, args.clip_batch = "cpu", "DiT-T/4", 8, 4, 4
        args.clip_models, args.clip_latent, args.steps, args.warmup, args.no_compile = "DiT-T/4", "4x2x8x8", 2, 1, True

    t_begin = time.time()
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
    setup_backends(device)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    group_error = None  # without a process group the plain rows still run, the wrapped ones record why not
    try:
        if device.type == "cuda":
            dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
        else:
            dist.init_process_group("gloo", rank=0, world_size=1)
    except Exception as e:
        group_error = f"no process group: {error_line(e)}"
        print(group_error, flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    peak = measure_peak(device)
    print(f"{name}: bf16 matmul peak {peak:.3g} TFLOP/s; {WORLD_NOTE}", flush=True)

    image = Model("image", "ilct", args.model, (4, args.latent, args.latent), args.batch)
    meanflow = Model("meanflow", "meanflow", args.model, image.shape, args.batch)
    clip_arch = load_config(args.clip_preset).model.arch
    clip_archs = args.clip_models.split(",") if args.clip_models else (
        [clip_arch, "DiT-B/2"] if clip_arch.startswith("DiT-T") else [clip_arch])
    clips = [Model("clip", args.clip_preset, a, parse_shape(args.clip_latent), args.clip_batch) for a in clip_archs]
    report = {"device": name, "torch": torch.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": "python " + " ".join(sys.argv), "peak_tflops": peak, "world_size": 1, "world": WORLD_NOTE,
              "step": "ilct.training.step.training_step: bf16 autocast, the objective's loss (consistency: student forward + "
                      "backward and teacher forward; MeanFlow: one JVP forward + backward), RAdam, EMA; FLOPs counted "
                      "on the eager model without the optimizer", "rows": []}
    out = Path(args.out)
    flops: dict[Model, float] = {}
    if not args.no_compile:
        importlib.import_module("torch._inductor.compile_fx")  # before the first row: see `deadline`
    write(report, out)  # the header, before any row
    try:
        for row in plan(image, clips, meanflow, not args.no_compile):
            m = row.model
            rec = {"kind": m.kind, "model": m.label, "preset": m.preset, "arch": m.arch, "batch": m.batch,
                   "unit": m.unit, "wrapping": row.wrapping, "compiled": row.compiled, "fused_optimizer": row.fused}
            left = args.deadline - (time.time() - t_begin)
            skip = "not run (deadline)" if left <= 5 else group_error if row.wrapping in ("ddp", "fsdp2") else None
            if skip:
                rec["error"] = skip
                report["rows"].append(rec)
                write(report, out)
                print(f"{row.name}: {skip}", flush=True)
                continue
            print(f"{row.name}: measuring ({left:.0f} s left)", flush=True)
            rec.update(run_row(row, device, args, peak, flops, min(args.row_deadline, left)))
            report["rows"].append(rec)
            report["wall_s"] = round(time.time() - t_begin, 1)
            write(report, out)
            print(f"{row.name}: {summary(rec)} ({rec['wall_s']} s)", flush=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    print(f"done in {time.time() - t_begin:.0f} s: {out / 'scale.md'}", flush=True)


if __name__ == "__main__":
    main()
