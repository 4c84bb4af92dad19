"""Training and sampling throughput: the authors' loop (`reference`) against ilct's (`ilct`).

One training step = student forward and backward plus the teacher's no-grad
forward (plus OT, optimizer, EMA), on 32x32x4 latents (the paper's 256x256
images through the SD VAE), with the `ilct` preset's method (all five
techniques on, OT coupling included). Two modes, measured in the same process:

    reference  fp32 matrix products in TF32, eager, torch.optim.RAdam, the OT
               assignment on the main thread (cost matrix on the device, Hungarian
               on the host), the loss read back every step (.item()): the authors' loop
    ilct       ilct.training.step.training_step as `ilct train` runs it: bf16 autocast (loss
               maths in fp32), every block torch.compile'd, batches drawn and
               OT-coupled ahead in a worker process, the device-side skipping RAdam
               over flat weights as one compiled kernel and the EMA as one lerp
               (train.fused_optimizer), no host synchronization inside the step

Variants of the ilct mode, for comparisons in the same run: `ilct[model:reduce-overhead]`
(another torch.compile scope and mode) and `+KEY=VALUE` config overrides, e.g.
`ilct+train.fused_optimizer=false` (see parse_mode).

FLOPs per step are counted with torch.utils.flop_counter on the eager model
(at a small batch, scaled linearly); the peak is a large bf16 matrix product
timed in the same run; MFU = achieved FLOP/s / that peak. Also 1-step sampling
throughput, with and without the decode by a TAESD-architecture decoder (4
latent channels, random weights: its speed does not depend on them).

    python benchmarks/speed/throughput.py                      # all sizes, batches 128 and 256
    python benchmarks/speed/throughput.py --models DiT-B/2 --batches 128 --steps 10
    python benchmarks/speed/throughput.py --device cpu --models DiT-T/2 --batches 4 --steps 2 --latent 8 --no-compile

Writes performance.json and performance.md into --out (the published ones: docs/results/performance.json, docs/performance.md), after every row,
so a run stopped by its deadline keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ilct.training.accel import compile_model, setup_backends
from ilct.training.batches import Prefetcher
from ilct.training.build import build_student as make_student, make_batch_maker
from ilct.config import MethodConfig, load_config
from ilct.objectives.consistency.coupling import ot_cost
from ilct.objectives.consistency.loss import consistency_training_loss
from ilct.objectives.consistency.schedule import karras_sigmas
from ilct.objectives import ConsistencyTraining, make_objective
from ilct.models import build_model, make_ema
from ilct.training.step import ema_update, training_step

N_DATA = 2048  # synthetic latents the batches are drawn from


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn, warmup: int, reps: int, device: torch.device) -> float:
    """Mean wall time of fn() over `reps` calls after `warmup` untimed ones, the device drained around them."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps


def measure_peak(device: torch.device, n: int = 8192, reps: int = 20) -> float:
    """TFLOP/s of an n x n x n bf16 matrix product (the best of `reps` after warm-up)."""
    if device.type != "cuda":
        n, reps = 1024, 3
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def parse_mode(mode: str) -> tuple[str, str, str | None, list[str]]:
    """`reference`, `ilct` (as `ilct train` runs), `ilct[SCOPE]` / `ilct[SCOPE:MODE]` (the ilct step with
    another torch.compile scope, blocks or model, and mode, e.g. reduce-overhead), each ilct form optionally
    followed by `+KEY=VALUE` config overrides (e.g. `ilct+train.fused_optimizer=false`), to compare them.
    Returns (kind, scope, compile mode, overrides)."""
    head, *overrides = mode.split("+")
    if head == "reference" and not overrides:
        return "reference", "blocks", None, []
    if head == "ilct":
        return "ilct", "blocks", None, overrides
    if head.startswith("ilct[") and head.endswith("]"):
        scope, _, cmode = head[5:-1].partition(":")
        if scope in ("blocks", "model"):
            return "ilct", scope, cmode or None, overrides
    raise SystemExit(f"unknown mode {mode!r}: reference, ilct, ilct[blocks|model] or ilct[SCOPE:COMPILE_MODE], "
                     "the ilct ones optionally with +KEY=VALUE overrides")


def make_cfg(arch: str, batch: int, latent: int, mode: str, compile_: bool):
    kind, _, _, overrides = parse_mode(mode)
    ilct = kind == "ilct"
    cfg = load_config("ilct", [f"model.arch={arch}", f"train.batch_size={batch}",
                               "train.precision=" + ("bf16" if ilct else "fp32"),
                               f"train.compile={'true' if (compile_ and ilct) else 'false'}", *overrides])
    cfg.model.in_channels, cfg.model.input_size = 4, latent
    return cfg


def count_flops(cfg, device: torch.device, latent: int, probe: int = 8) -> float:
    """FLOPs of one step (student fwd + bwd, teacher fwd) at batch cfg.train.batch_size."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(cfg).to(device).train()
    x = torch.randn(probe, 4, latent, latent, device=device)
    z = torch.randn_like(x)
    N = 11
    sigmas = karras_sigmas(N).to(device, torch.float32)
    i = torch.randint(0, N - 1, (probe,), device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        terms = consistency_training_loss(model, x, z, i, sigmas, N, 0.01, MethodConfig("cauchy", diffusion_loss=True))
        terms.loss.backward()
    return counter.get_total_flops() * cfg.train.batch_size / probe


def reference_steps(cfg, device, latents: torch.Tensor, n_steps: int, warmup: int) -> float:
    """The authors' loop: returns seconds per step."""
    model = build_model(cfg).to(device).train()
    ema = make_ema(model)
    t, cons, me = cfg.train, cfg.consistency, cfg.method
    opt = torch.optim.RAdam(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.adam_eps, weight_decay=t.weight_decay)
    g = torch.Generator().manual_seed(0)
    N, sigmas, c_now = ConsistencyTraining(cfg).state(0, device)  # step 0's levels
    data = latents.to(device)
    from scipy.optimize import linear_sum_assignment

    def step() -> float:
        idx = torch.randint(0, len(data), (t.batch_size,), generator=g).to(device)
        x = data[idx]
        z = torch.randn(x.shape, generator=g).to(device)
        i = torch.randint(0, N - 1, (t.batch_size,), generator=g).to(device)
        rows, cols = linear_sum_assignment(ot_cost(x, z).cpu().double().numpy())  # host sync
        z = z[torch.as_tensor(cols, device=device)]
        terms = consistency_training_loss(model, x, z, i, sigmas, N, c_now, me, cons.sigma_data)
        opt.zero_grad(set_to_none=True)
        terms.loss.backward()
        if bool(torch.isfinite(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))):
            opt.step()
            ema_update(ema, model, t.ema_decay)
        return terms.loss.item()  # host sync, as the authors' loop logs every step

    return seconds_per_call(step, warmup, n_steps, device)


def ilct_steps(cfg, device, latents: torch.Tensor, n_steps: int, warmup: int, profile_to: Path | None = None,
               scope: str = "blocks", compile_mode: str | None = None):
    """ilct.training.step.training_step with the prefetcher; returns (seconds per step, the EMA model, the student)."""
    model, ema, opt = make_student(cfg, device)
    t = cfg.train
    if t.compile:
        compile_model(model, scope, compile_mode)
    objective = make_objective(cfg)
    maker = make_batch_maker(cfg, objective, latents.__getitem__, len(latents), tuple(latents.shape[1:]))
    state = objective.state(0, device)  # step 0's schedule state, for every timed step
    n_prof = 3 if profile_to is not None else 0
    prefetch = Prefetcher(maker, 0, warmup + n_steps + n_prof, device)
    try:
        for k in range(warmup):
            training_step(model, ema, opt, prefetch.get(k), objective, state, cfg, k)
        sync(device)
        t0 = time.perf_counter()
        acc = torch.zeros(3, device=device)
        for k in range(warmup, warmup + n_steps):
            values, _ = training_step(model, ema, opt, prefetch.get(k), objective, state, cfg, k)
            acc += values
        sync(device)
        seconds = (time.perf_counter() - t0) / n_steps
        if profile_to is not None:  # a few more steps under the profiler (its overhead stays out of the timing)
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=acts) as prof:
                t1 = time.perf_counter()
                for k in range(warmup + n_steps, warmup + n_steps + n_prof):
                    training_step(model, ema, opt, prefetch.get(k), objective, state, cfg, k)
                sync(device)
                profiled = (time.perf_counter() - t1) / n_prof
            write_profile(prof, profile_to, device, seconds, profiled, n_prof)
    finally:
        prefetch.close()
    if not torch.isfinite(acc).all():
        raise RuntimeError("non-finite loss in the ilct mode")
    return seconds, ema, model


def write_profile(prof, path: Path, device: torch.device, seconds: float, profiled: float, n_steps: int) -> None:
    """Where a step's time goes: wall time against the kernels' busy time, then the top operators."""
    avg = prof.key_averages()
    cuda = device.type == "cuda"
    attr = "self_device_time_total" if hasattr(avg[0], "self_device_time_total") else "self_cuda_time_total"
    busy = sum(getattr(e, attr, 0) for e in avg) / n_steps / 1e3 if cuda else float("nan")
    launches = sum(e.count for e in avg if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunch"))) / n_steps
    head = (f"{path.stem}: wall {seconds * 1e3:.1f} ms/step ({profiled * 1e3:.1f} under the profiler); "
            f"kernels busy {busy:.1f} ms/step; "
            f"{launches:.0f} kernel launches/step\n\n")
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    tables = [avg.table(sort_by=key, row_limit=30)]
    if cuda:
        tables.append(avg.table(sort_by="self_cpu_time_total", row_limit=20))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + "\n\n".join(tables))
    print(head.strip(), flush=True)


@torch.no_grad()
def sampling_rate(model, cfg, device, latent: int, batch: int, decode: bool, reps: int = 10) -> float:
    """Images per second of 1-step sampling (f at sigma_max on noise), optionally decoded."""
    from ilct.autoencoders.taesd import TAESD

    decoder = TAESD(4).to(device).eval() if decode else None
    bf16 = cfg.train.precision == "bf16"

    def once():
        z = torch.randn(batch, 4, latent, latent, device=device) * cfg.consistency.sigma_max
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            x = model(z, torch.full((batch,), cfg.consistency.sigma_max, device=device))
            if decoder is not None:
                x = decoder.decode(x)
        return x

    return batch / seconds_per_call(once, 2, reps, device)


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "performance.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| model | batch | mode | img/s | ms/step | TFLOP/s | MFU |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['error']} | | | |")
        else:
            lines.append(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['img_per_s']:.0f} | {r['ms_per_step']:.1f} "
                         f"| {r['tflops']:.0f} | {r['mfu']:.3f} |")
    speed = []
    for r in report["rows"]:
        if r["mode"] == "ilct" and "error" not in r:
            ref = [q for q in report["rows"] if q["mode"] == "reference" and q["model"] == r["model"]
                   and q["batch"] == r["batch"] and "error" not in q]
            if ref:
                speed.append(f"| {r['model']} | {r['batch']} | {r['img_per_s'] / ref[0]['img_per_s']:.2f}x |")
    samp = ["| model | batch | decode | img/s |", "|---|---|---|---|"] + [
        f"| {s['model']} | {s['batch']} | {s['decode']} | {s['img_per_s']:.0f} |" for s in report.get("sampling", [])]
    (out / "performance.md").write_text(
        "# Performance\n\n"
        f"Device: {report['device']}; torch {report['torch']}; measured bf16 matrix-product peak "
        f"{report['peak_tflops']:.3g} TFLOP/s.\n\nCommand: `{report['command']}`\n\n"
        f"Training step: {report['step']}.\n\n" + "\n".join(lines) + "\n\n"
        "Speed-up of `ilct` over `reference` (same run, same device):\n\n| model | batch | ilct / reference |\n|---|---|---|\n"
        + "\n".join(speed) + "\n\n1-step sampling (ilct settings):\n\n" + "\n".join(samp) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="DiT-B/2,DiT-S/2,DiT-L/2,DiT-XL/2", help="in order, at each batch size: the deadline may stop the rest")
    p.add_argument("--batches", default="128,256")
    p.add_argument("--modes", default="reference,ilct", help="reference, ilct, and to compare compile "
                   "settings ilct[blocks|model] or ilct[SCOPE:COMPILE_MODE], e.g. ilct[model:reduce-overhead]")
    p.add_argument("--steps", type=int, default=10, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--latent", type=int, default=32, help="latent side (channels are 4)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--deadline", type=float, default=0, help="seconds; start no new row after this")
    p.add_argument("--out", default="docs")
    p.add_argument("--no-sampling", action="store_true", help="skip the 1-step sampling rows")
    p.add_argument("--variant-models", default="", help="measure the ilct[...] modes only for these models "
                   "(comma-separated; default: all)")
    p.add_argument("--profile", action="store_true", help="also profile 3 more steps of each ilct row at the "
                   "first batch size (profile_<model>_<batch>_<mode>.txt in --out): where a step's time goes")
    args = p.parse_args()

    t_begin = time.time()
    device = torch.device(args.device)
    setup_backends(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    peak = measure_peak(device)
    print(f"{name}: bf16 matmul peak {peak:.3g} TFLOP/s", flush=True)
    report = {"device": name, "torch": torch.__version__, "command": "python " + " ".join(sys.argv),
              "peak_tflops": peak, "latent": f"{args.latent}x{args.latent}x4",
              "step": "student forward + backward and teacher forward (FLOPs counted), OT coupling, RAdam, EMA",
              "rows": [], "sampling": []}
    torch.manual_seed(0)
    latents = torch.randn(N_DATA, 4, args.latent, args.latent) * 0.5
    out = Path(args.out)
    batches = [int(b) for b in args.batches.split(",")]
    for batch in batches:  # every size at the first batch before any at the second: the deadline cuts the tail
        for arch in args.models.split(","):
            for mode in args.modes.split(","):
                if args.deadline and time.time() - t_begin > args.deadline:
                    print(f"deadline reached: {arch} batch {batch} {mode} not measured", flush=True)
                    report["rows"].append({"model": arch, "batch": batch, "mode": mode, "error": "not run (deadline)"})
                    write(report, out)
                    continue
                if mode != "ilct" and mode != "reference" and args.variant_models and arch not in args.variant_models.split(","):
                    continue
                cfg = make_cfg(arch, batch, args.latent, mode, not args.no_compile)
                row = {"model": arch, "batch": batch, "mode": mode}
                t0 = time.time()
                try:
                    flops = count_flops(cfg, device, args.latent)
                    if mode == "reference":
                        seconds = reference_steps(cfg, device, latents, args.steps, args.warmup)
                    else:
                        tag = mode.replace("ilct[", "").replace("]", "").replace(":", "-").replace("+", "_").replace("=", "-")
                        prof = out / f"profile_{arch.replace('/', '')}_{batch}_{tag}.txt" if args.profile and batch == batches[0] else None
                        _, scope, cmode, _ = parse_mode(mode)
                        seconds, _, student = ilct_steps(cfg, device, latents, args.steps, args.warmup, prof, scope, cmode)
                    tflops = flops / seconds / 1e12
                    row.update(img_per_s=batch / seconds, ms_per_step=seconds * 1e3, tflops=tflops, mfu=tflops / peak,
                               tflop_per_step=flops / 1e12, wall_s=round(time.time() - t0, 1))
                    if mode == "ilct" and batch == batches[0] and not args.no_sampling:
                        student.eval()
                        for decode in (False, True):
                            report["sampling"].append({"model": arch, "batch": batch, "decode": decode,
                                                       "img_per_s": sampling_rate(student, cfg, device, args.latent, batch, decode)})
                        del student
                except torch.OutOfMemoryError:
                    row["error"] = "out of memory"
                except Exception as e:  # a failed row is recorded; the others still run
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                print(json.dumps(row), flush=True)
                report["rows"].append(row)
                report["wall_s"] = round(time.time() - t_begin, 1)
                write(report, out)
                if device.type == "cuda":
                    torch.cuda.empty_cache()

if __name__ == "__main__":
    main()
