"""Subnormal floats on the CPU: a run's training speed with ilct's flush (ILCT_FLUSH_DENORMAL=1) and without (=0).

Late in a long `fmnist-ict` run on a 2-core Xeon the training step slowed from 0.12 s to 0.31 s (2.6x), and
the slowdown survived a resume: it was in the run's state, not in the process. Subnormal floats (|x| < 1.2e-38
in fp32) are computed in microcode on x86 CPUs, many times slower than normal ones; flushing them to zero
(`torch.set_flush_denormal`, which ilct does when a command starts unless ILCT_FLUSH_DENORMAL=0, ilct.training.accel)
gives the speed back.

First it counts, in one training step's backward pass from the run's latest checkpoint (or --step's; a batch
of the objective's own batch maker over N(0, 1) latents of the run's shape, flush off), the subnormal values in each
module's output gradient and each weight's gradient: where they come from. Then it resumes copies of the
checkpoint, one after the other (never two at once), once with the flush and once without, each for
`--seconds`, and reports the images per second of each (the median of the log lines after the first) and
whether the losses of the steps both reached are the same. The run itself is
not touched: the copies live in a temporary folder.

    python benchmarks/speed/denormals.py --run runs/budgets/runs/fmnist-ict-16x --step 14844 --seconds 100 \
        --out docs/results/denormals_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ilct.runs.checkpoint import latest_checkpoint, list_checkpoints, step_of

MODES = {"flush": "1", "keep": "0"}  # ILCT_FLUSH_DENORMAL


def fail(message: str) -> None:
    print(f"denormals: {message}", file=sys.stderr)
    raise SystemExit(2)


def copy_run(run: Path, ckpt: Path, to: Path) -> None:
    """The run's config, latent statistics and latest checkpoint (no log, grids or older checkpoints)."""
    to.mkdir(parents=True)
    for entry in run.iterdir():
        if entry.is_file() and entry.name != "log.jsonl":
            shutil.copy2(entry, to / entry.name)
    (to / "checkpoints").mkdir()
    shutil.copytree(ckpt, to / "checkpoints" / ckpt.name)
    (to / "checkpoints" / "latest").write_text(ckpt.name)


def subnormals(t: torch.Tensor) -> int:
    return int(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum())


def census(run: Path, ckpt: Path, top: int = 5) -> dict:
    """Subnormal values in one training step's gradients (module outputs' and weights'), without the flush."""
    from ilct.runs import checkpoint
    from ilct.training.build import build_student, make_batch_maker
    from ilct.config import latent_shape
    from ilct.objectives import make_objective
    from ilct.runs.folder import saved_config

    torch.set_flush_denormal(False)
    cfg = saved_config(run, ["train.device=cpu"])
    device, step = torch.device("cpu"), step_of(ckpt)
    objective = make_objective(cfg)
    model, ema, opt = build_student(cfg, device, init=False, quiet=True)
    checkpoint.restore(ckpt, model, ema, opt, cfg)
    shape = latent_shape(cfg)
    torch.manual_seed(0)
    latents = torch.randn(max(2048, cfg.train.batch_size), *shape)
    batch = make_batch_maker(cfg, objective, latents.__getitem__, len(latents), shape).make(step)
    outputs: dict[str, int] = {}

    def hook(name):
        def record(module, args, out):
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda g: outputs.__setitem__(name, outputs.get(name, 0) + subnormals(g)))
        return record

    for name, module in model.named_modules():
        if name:
            module.register_forward_hook(hook(name))
    objective.loss(model, batch, objective.state(step, device)).loss.backward()
    weights = {n: subnormals(p.grad) for n, p in model.named_parameters() if p.grad is not None}
    worst = lambda d: dict(sorted(((k, v) for k, v in d.items() if v), key=lambda kv: -kv[1])[:top])  # noqa: E731
    return {"step": step, "latents": "N(0, 1), the run's latent shape", "output_grads": sum(outputs.values()),
            "output_grads_worst": worst(outputs), "weight_grads": sum(weights.values()),
            "weight_grads_of": sum(p.numel() for p in model.parameters()), "weight_grads_worst": worst(weights)}


def resume(run: Path, flush: str, seconds: float, log_every: int) -> dict:
    """Resume the copy for `seconds`, then stop it as a preemption would (SIGTERM), and read its log."""
    cmd = [sys.executable, "-m", "ilct", "train", "--out", str(run), "--resume", "--no-progress",
           "--set", f"train.log_every={log_every}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "ILCT_FLUSH_DENORMAL": flush})
    t0 = time.time()
    try:
        while proc.poll() is None and time.time() - t0 < seconds:
            time.sleep(0.5)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode not in (0, 143, -signal.SIGTERM):
        print(out[-2000:], file=sys.stderr)
        fail(f"the resumed copy of the run failed (exit {proc.returncode})")
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    lines = [x for x in lines if "img_per_s" in x]
    speeds = sorted(x["img_per_s"] for x in lines[1:]) or [x["img_per_s"] for x in lines]
    return {"log_lines": len(lines), "steps": [lines[0]["step"], lines[-1]["step"]] if lines else [],
            "img_per_s_median": speeds[len(speeds) // 2] if speeds else None,
            "img_per_s_range": [speeds[0], speeds[-1]] if speeds else None,
            "losses": {x["step"]: x["loss"] for x in lines}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a run folder with a checkpoint (it is copied, not changed)")
    p.add_argument("--step", type=int, default=None, help="resume from this checkpoint (default: the latest; a "
                   "finished run's latest has nothing left to train)")
    p.add_argument("--seconds", type=float, default=120.0, help="how long each copy trains")
    p.add_argument("--log-every", type=int, default=25, help="log lines (speed samples) every this many steps")
    p.add_argument("--out", default="", help="write the JSON report here")
    args = p.parse_args()
    if not args.seconds > 0 or args.log_every < 1:
        fail("--seconds must be above 0 and --log-every at least 1")
    run = Path(args.run)
    ckpt = latest_checkpoint(run, quiet=True) if run.is_dir() else None
    if ckpt is None:
        fail(f"{run} is not a run folder with a checkpoint")
    if args.step is not None:
        ckpt = next((c for c in list_checkpoints(run) if step_of(c) == args.step and (c / "state.json").is_file()),
                    None)
        if ckpt is None:
            fail(f"{run} has no checkpoint of step {args.step}")
    report = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "run": str(run),
              "from_step": step_of(ckpt),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
              "threads": os.environ.get("OMP_NUM_THREADS", "default"), "census": census(run, ckpt), "modes": {}}
    print(f"subnormal gradients at step {report['from_step']}: {report['census']['weight_grads']} of the weights', "
          f"{report['census']['output_grads']} of the modules' outputs", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for mode, flush in MODES.items():
            copy_run(run, ckpt, Path(tmp) / mode)
            report["modes"][mode] = resume(Path(tmp) / mode, flush, args.seconds, args.log_every)
            print(f"{mode}: {report['modes'][mode]['img_per_s_median']} images/s (median), steps "
                  f"{report['modes'][mode]['steps']}", flush=True)
    if not all(report["modes"][m]["losses"] for m in MODES):
        fail(f"the copies trained no step from step {report['from_step']} (a finished run? give --step)")
    flush, keep = (report["modes"][m]["losses"] for m in MODES)
    common = sorted(set(flush) & set(keep))
    report["common_steps"] = len(common)
    report["same_losses"] = all(flush[k] == keep[k] for k in common)
    if report["modes"]["keep"]["img_per_s_median"]:
        report["speedup"] = round(report["modes"]["flush"]["img_per_s_median"]
                                  / report["modes"]["keep"]["img_per_s_median"], 2)
    for m in MODES:
        report["modes"][m]["losses"] = {str(k): v for k, v in report["modes"][m]["losses"].items()}
    print(f"speedup {report.get('speedup')}, the same losses on {len(common)} common steps: {report['same_losses']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"written {args.out}")


if __name__ == "__main__":
    main()
