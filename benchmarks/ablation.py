"""The paper's ablation on Fashion-MNIST latents: each technique added to the iCT baseline.

Rows (cumulative, as in the paper), plus an EDM diffusion model with the same
network and budget sampled with Heun at 35 NFE:

    ict-baseline, +cauchy, +diffusion-loss, +ot, +adaptive-c, ilct-full (+NsLN), edm-diffusion

Two latent spaces: `builtin` (the built-in KL autoencoder, 8x8x4) and `taef2`
(Fashion-MNIST rendered as 64x64 RGB through TAEF2, 8x8x32; decoded samples are
turned back into 32x32 grayscale by the evaluation features). Every row uses the
same preset (fmnist-ict / fmnist-ilct family), budget and seeds; `ict-baseline`
and `ilct-full` run with extra seeds so the seed-to-seed spread is visible.
FID and recall are in Fashion-MNIST-classifier features (not Inception FID).

    python benchmarks/ablation.py --latents builtin --autoencoder runs/demo/autoencoder --budget cpu
    python benchmarks/ablation.py --latents taef2 --autoencoder ../shared/weights/taef2 --budget gpu --parallel 9

Budgets: `cpu` (3,000 steps per row, 5,000 samples per FID: one table in about
3 hours on 2 cores) and `gpu` (8,000 steps per row, all rows at once on one card,
10,000 samples). Results: docs/results/ablation_<latents>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROWS = ["ict-baseline", "+cauchy", "+diffusion-loss", "+ot", "+adaptive-c", "ilct-full", "edm-diffusion"]
EXTRA_SEEDS = {"ict-baseline": [1], "ilct-full": [1]}
BUDGETS = {"cpu": {"steps": 3000, "n": 5000}, "gpu": {"steps": 8000, "n": 10000}}
HEUN_STEPS = 18  # 35 NFE


def row_overrides(name: str) -> list[str]:
    """The --set values of a row: the techniques switched on up to and including it."""
    ladder = [
        ("+cauchy", "method.metric=cauchy"),
        ("+diffusion-loss", "method.diffusion_loss=true"),
        ("+ot", "method.ot_coupling=true"),
        ("+adaptive-c", "method.adaptive_c=true"),
        ("ilct-full", "method.nsln=true"),
    ]
    if name == "ict-baseline":
        return []
    if name == "edm-diffusion":
        return ["train.objective=edm"]
    names = [n for n, _ in ladder]
    if name not in names:
        raise ValueError(f"unknown row {name!r}; rows: {', '.join(ROWS)}")
    return [value for _, value in ladder[: names.index(name) + 1]]


def jobs(rows: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    out = []
    for r in rows:
        for s in seeds + [x for x in EXTRA_SEEDS.get(r, []) if x not in seeds]:
            out.append((r, s))
    return out


def run(cmd: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", choices=["builtin", "taef2"], required=True)
    p.add_argument("--autoencoder", required=True, help="built-in autoencoder directory, or the TAEF2 weights folder")
    p.add_argument("--budget", choices=list(BUDGETS), default="cpu")
    p.add_argument("--steps", type=int, help="override the budget's steps per row")
    p.add_argument("--n", type=int, help="override the budget's samples per FID")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--parallel", type=int, default=1, help="rows trained at once (GPU: all of them)")
    p.add_argument("--limit", type=int, help="encode only the first N training images (TAEF2 on a CPU is slow)")
    p.add_argument("--work", default="runs/ablation", help="latents, runs and logs")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args()

    budget = dict(BUDGETS[args.budget])
    budget["steps"] = args.steps or budget["steps"]
    budget["n"] = args.n or budget["n"]
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in rows:
        row_overrides(r)
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work) / args.latents
    ilct = [sys.executable, "-m", "ilct"]

    # 1. latents, encoded once
    lat = work / "latents"
    if args.latents == "builtin":
        encode = ilct + ["encode", "--data", "fashion_mnist", "--autoencoder", f"builtin:{args.autoencoder}", "--out", str(lat)]
        preset_base, ae_set = "fmnist", ["--autoencoder", args.autoencoder]
    else:
        encode = ilct + ["encode", "--data", "fashion_mnist", "--resolution", "64", "--rgb",
                         "--autoencoder", f"taesd:{args.autoencoder}", "--out", str(lat)]
        preset_base, ae_set = "fmnist", ["--autoencoder", args.autoencoder, "--set", "autoencoder.kind=taesd",
                                         "--set", "model.in_channels=32", "--set", "data.rgb=true",
                                         "--set", "data.resolution=64"]
    if args.limit:
        encode += ["--limit", str(args.limit)]
    todo = jobs(rows, seeds)
    print(f"{len(todo)} runs of {budget['steps']} steps; FID on {budget['n']} samples; latents {args.latents}")
    if args.dry_run:
        print(" ".join(encode))
    else:
        subprocess.run(encode + ["--no-progress"], check=True)

    # 2. training, `parallel` runs at a time
    def train_cmd(row: str, seed: int) -> list[str]:
        preset = f"{preset_base}-ict"
        sets = [f"data.latents={lat}", f"train.total_steps={budget['steps']}", f"train.seed={seed}",
                "train.sample_every=0", f"train.ckpt_every={budget['steps']}"] + row_overrides(row)
        cmd = ilct + ["train", "--config", preset, "--out", str(work / "runs" / f"{row}_s{seed}"), "--no-progress"] + ae_set
        for s in sets:
            cmd += ["--set", s]
        if (work / "runs" / f"{row}_s{seed}" / "config.yaml").exists():
            cmd.append("--resume")
        return cmd

    t0 = time.time()
    pending = list(todo)
    active: list[tuple[subprocess.Popen, str, int, float]] = []
    seconds: dict[tuple[str, int], float] = {}
    while pending or active:
        while pending and len(active) < args.parallel:
            row, seed = pending.pop(0)
            cmd = train_cmd(row, seed)
            if args.dry_run:
                print(" ".join(cmd))
                continue
            active.append((run(cmd, work / "logs" / f"{row}_s{seed}.train.log"), row, seed, time.time()))
        for item in list(active):
            proc, row, seed, started = item
            if proc.poll() is not None:
                if proc.returncode != 0:
                    raise SystemExit(f"{row} seed {seed} failed; see {work / 'logs'}")
                seconds[(row, seed)] = round(time.time() - started, 1)
                active.remove(item)
        time.sleep(1)
    if args.dry_run:
        return

    # 3. evaluation
    results = []
    for row, seed in todo:
        out_json = work / "eval" / f"{row}_s{seed}.json"
        steps = str(HEUN_STEPS) if row == "edm-diffusion" else "1,2"
        subprocess.run(ilct + ["eval", "--run", str(work / "runs" / f"{row}_s{seed}"), "--steps", steps,
                               "--n", str(budget["n"]), "--seed", "0", "--json", str(out_json), "--no-progress"], check=True)
        m = json.loads(out_json.read_text())
        nfe = {k: (str(2 * int(k) - 1) if row == "edm-diffusion" else k) for k in m["fid"]}
        results.append({"name": row, "latents": args.latents, "seed": seed,
                        "fid": {nfe[k]: v for k, v in m["fid"].items()},
                        "recall": {nfe[k]: v for k, v in m["recall"].items()},
                        "precision": {nfe[k]: v for k, v in m["precision"].items()},
                        "steps": budget["steps"], "train_seconds": seconds.get((row, seed))})
    report = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; budget {args.budget}",
        "features": m["features"],
        "wall_seconds": round(time.time() - t0, 1),
        "rows": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ablation_{args.latents}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"| row | seed | FID 1 NFE | FID 2 NFE | recall 1 | recall 2 |", "|---|---|---|---|---|---|"]
    for r in results:
        f, rc = r["fid"], r["recall"]
        if r["name"] == "edm-diffusion":
            lines.append(f"| {r['name']} (35 NFE) | {r['seed']} | {f['35']:.2f} | | {rc['35']:.3f} | |")
        else:
            lines.append(f"| {r['name']} | {r['seed']} | {f['1']:.2f} | {f['2']:.2f} | {rc['1']:.3f} | {rc['2']:.3f} |")
    (out / f"ablation_{args.latents}.md").write_text(
        f"Command: `{report['command']}`\n\nMachine: {report['machine']}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
