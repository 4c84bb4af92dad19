"""Where does a consistency-training step's gradient come from? Per level, at a chosen N, from a checkpoint.

Issue #16's hypothesis for the late-curriculum collapse (docs/stability.md): with the Cauchy metric the gradient
of lambda_i log(1 + r / 2c^2) in the network output is lambda_i 2 e / (D (2c^2 + r)), about lambda_i / |e| once
r >> c^2, so at many levels (N = 161) the finest levels (the smallest sigmas, where lambda_i = 1/(sigma_i -
sigma_{i+1}) is largest and the residual e smallest) could take over the gradient, where pseudo-Huber
(lambda_i e / sqrt(r + c^2), bounded in e) would not. This script measures it instead of assuming it: for each
run, checkpoint, N and metric, the norm of the parameter gradient of each level's consistency term (and of the
diffusion term where technique 2 selects the level), on the same latents and Gaussian noise (no OT pairing), with
the student weights (ilct.metrics.outliers.level_gradients); P(i) |g_i| is level i's expected share of a step.

    python benchmarks/quality/level_gradients.py --run ilct=runs/stability/runs/ilct \\
        --run ict=runs/stability/runs/ict --steps 6000,7000 --levels 81,161 --metrics cauchy,pseudo_huber \\
        --n 64 --out docs/results/level_gradients.json --plot docs/figures/level_gradients.png

The c of each (run, N) is the run's own schedule's c(N) (ilct.objectives.consistency.schedule.scaling_c), whatever the
metric; `--c-of-metric` instead uses the fixed c for pseudo-Huber and the run's c(N) for Cauchy.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402


def load_student(run_dir: Path, step: int):
    from ilct.runs.checkpoint import load_weights
    from ilct.config import config_from_yaml_file
    from ilct.models import build_model

    cfg = config_from_yaml_file(run_dir / "config.yaml")
    ckpt = run_dir / "checkpoints" / f"step_{step:09d}"
    if not (ckpt / "model.safetensors").is_file():
        raise SystemExit(f"{ckpt} has no model.safetensors")
    model = build_model(cfg)
    load_weights(model, ckpt / "model.safetensors", f"the student of {run_dir} at step {step}")
    return cfg, model.train()


def batch(cfg, run_dir: Path, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n of the run's latents, normalized as training does, and Gaussian noise, both from `seed`."""
    from ilct.latents.directory import LatentStats
    from ilct.models import clip_data, run_autoencoder
    from ilct.training.data import load_latents

    lat = load_latents(cfg, run_autoencoder(cfg, clip_data(cfg)), torch.device("cpu"), progress=False)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(lat), generator=g)[:n].sort().values.numpy()
    x = LatentStats.load(run_dir / "latent_stats.safetensors").normalize(lat.gather(idx), cfg.consistency.sigma_data)
    return x, torch.randn(x.shape, generator=g)


def main(argv: list[str] | None = None) -> dict:
    from ilct.metrics.outliers import gradient_shares, level_gradients
    from ilct.config import latent_dim
    from ilct.objectives.consistency.schedule import fixed_c, scaling_c

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="NAME=RUN_DIR")
    p.add_argument("--steps", required=True, help="checkpoint steps, comma-separated")
    p.add_argument("--levels", default="81,161", help="N values, comma-separated")
    p.add_argument("--metrics", default="cauchy,pseudo_huber")
    p.add_argument("--c-of-metric", action="store_true", help="pseudo-Huber with the fixed c, Cauchy with c(N)")
    p.add_argument("--n", type=int, default=64, help="latents per level (the same for every level)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--plot", default="")
    args = p.parse_args(argv)
    runs = dict(r.split("=", 1) for r in args.run if "=" in r)
    if len(runs) < len(args.run):
        raise SystemExit("--run: NAME=RUN_DIR")
    torch.manual_seed(args.seed)
    report = {"command": "python " + shlex.join(sys.argv if argv is None else ["benchmarks/quality/level_gradients.py", *argv]),
              "machine": f"{platform.machine()} CPU, torch {torch.__version__}", "n": args.n, "seed": args.seed, "rows": []}
    for name, run_dir in runs.items():
        for step in map(int, args.steps.split(",")):
            cfg, model = load_student(Path(run_dir), step)
            x, z = batch(cfg, Path(run_dir), args.n, args.seed)
            cons, D = cfg.consistency, latent_dim(cfg)
            for N in map(int, args.levels.split(",")):
                for metric in args.metrics.split(","):
                    c = scaling_c(N, D, cons.s0, cfg.method.adaptive_c, cons.c_scale, cons.c_floor)
                    if args.c_of_metric and metric == "pseudo_huber":
                        c = fixed_c(D, cons.c_scale)
                    t0 = time.perf_counter()
                    levels = level_gradients(model, cfg, x, z, N, c, metric)
                    row = {"run": name, "step": step, "N": N, "metric": metric, "c": c,
                           **gradient_shares(levels, cfg.method.diffusion_fraction),
                           "levels": [{k: float(f"{v:.5g}") for k, v in lv.items()} for lv in levels],
                           "seconds": round(time.perf_counter() - t0, 1)}
                    report["rows"].append(row)
                    print(f"{name:10s} {step:6d} N={N:4d} {metric:13s} c={c:.5f}  E|g| cons {row['expected_grad']['consistency']:10.4g}"
                          f"  diff {row['expected_grad']['diffusion']:10.4g}  finest quarter: {row['finest_share_of_consistency']:.3f}"
                          f" of the consistency gradient at P = {row['finest_probability']:.3f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot(report, Path(args.plot))
    return report


def plot(report: dict, path: Path) -> None:
    """P(i) |g_i| against sigma_i, one panel per (run, step), a line per (N, metric)."""
    plt = common.pyplot()

    panels = sorted({(r["run"], r["step"]) for r in report["rows"]})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for ax, (run, step) in zip(axes[0], panels):
        for r in (x for x in report["rows"] if (x["run"], x["step"]) == (run, step)):
            lv = r["levels"]
            ax.loglog([v["sigma"] for v in lv], [v["p"] * v["grad_consistency"] for v in lv],
                      label=f"N={r['N']} {r['metric']}", ls="-" if r["metric"] == "cauchy" else "--")
        ax.set_xlabel("sigma_i")
        ax.set_ylabel("P(i) |grad of level i's consistency term|")
        ax.set_title(f"{run} at step {step}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    common.save_figure(fig, path, 110)


if __name__ == "__main__":
    main()
