"""The paper's ablation on Fashion-MNIST latents: each technique added to the iCT baseline.

Rows (cumulative, as in the paper), plus an EDM diffusion model with the same
network and budget sampled with Heun at 35 NFE:

    ict-baseline, +cauchy, +diffusion-loss, +ot, +adaptive-c, ilct-full (+NsLN), edm-diffusion

and one row beside the ladder: `ilct-full-cauchy-element`, the full method with the
per-element Cauchy metric (method.metric=cauchy_element, the authors' `cauchy_new`)
instead of the per-sample one.

Two latent spaces: `builtin` (the built-in KL autoencoder, 8x8x4) and `taef2`
(Fashion-MNIST rendered as 64x64 RGB through TAEF2, 8x8x32; decoded samples are
turned back into 32x32 grayscale by the evaluation features). Every row uses the
same preset (fmnist-ict / fmnist-ilct family), budget and seeds; `ict-baseline`
and `ilct-full` run with extra seeds so the seed-to-seed spread is visible.
FID and recall are in Fashion-MNIST-classifier features (not Inception FID).

    python benchmarks/quality/ablation.py --latents builtin --autoencoder runs/demo/autoencoder --budget cpu
    python benchmarks/quality/ablation.py --latents taef2 --autoencoder ../shared/weights/taef2 --budget gpu --parallel 9

Budgets: `cpu` (3,000 steps per row, 5,000 samples per FID: one table in about
3 hours on 2 cores) and `gpu` (8,000 steps per row, all rows at once on one card,
10,000 samples). Results: docs/results/ablation_<latents>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from ilct.latents.directory import is_complete

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402

ROWS = ["ict-baseline", "+cauchy", "+diffusion-loss", "+ot", "+adaptive-c", "ilct-full", "ilct-full-cauchy-element",
        "edm-diffusion"]
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
    if name == "ilct-full-cauchy-element":  # beside the ladder: the full method, per-element Cauchy
        return row_overrides("ilct-full") + ["method.metric=cauchy_element"]
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


def encode_latents(spaces: list[str], aes: list[str], work: Path, ilct: list[str], limit: int | None,
                   dry_run: bool) -> dict[str, list[str]]:
    """Encode Fashion-MNIST once per latent space (skipped when done); the `ilct train` arguments of each space."""
    ae_sets: dict[str, list[str]] = {}
    for space, ae in zip(spaces, aes):
        lat = work / space / "latents"
        if space == "builtin":
            encode = ilct + ["encode", "--data", "fashion_mnist", "--autoencoder", f"builtin:{ae}", "--out", str(lat)]
            ae_sets[space] = ["--autoencoder", ae]
        else:
            encode = ilct + ["encode", "--data", "fashion_mnist", "--resolution", "64", "--rgb",
                             "--autoencoder", f"taesd:{ae}", "--out", str(lat)]
            ae_sets[space] = ["--autoencoder", ae, "--set", "autoencoder.kind=taesd", "--set", "model.in_channels=32",
                              "--set", "data.rgb=true", "--set", "data.resolution=64"]
        if limit:
            encode += ["--limit", str(limit)]
        if dry_run:
            print(" ".join(encode))
        elif not is_complete(lat):
            subprocess.run(encode + ["--no-progress"], check=True)
    return ae_sets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", required=True, help="builtin, taef2, or both: builtin,taef2")
    p.add_argument("--autoencoder", required=True, help="per latent space (comma-separated): the built-in "
                   "autoencoder directory, or the TAEF2 weights folder")
    p.add_argument("--budget", choices=list(BUDGETS), default="cpu")
    p.add_argument("--steps", type=int, help="override the budget's steps per row")
    p.add_argument("--train-seconds", type=float, help="instead of --steps: time all rows for 200 steps at "
                   "once, then give each row as many steps as fit in this many seconds")
    p.add_argument("--probe", type=int, default=200, help="steps of the timing run of --train-seconds")
    p.add_argument("--n", type=int, help="override the budget's samples per FID")
    p.add_argument("--curve", type=int, default=4, help="checkpoints per row evaluated for FID versus step")
    p.add_argument("--curve-n", type=int, default=2000, help="samples per FID-versus-step point")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--parallel", type=int, default=1, help="rows trained at once (GPU: all of them)")
    p.add_argument("--limit", type=int, help="encode only the first N training images (TAEF2 on a CPU is slow)")
    p.add_argument("--work", default="runs/ablation", help="latents, runs and logs")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--train-deadline", type=float, default=0, help="seconds from the start after which training "
                   "runs are stopped (SIGTERM: they checkpoint; the table records the steps they reached)")
    p.add_argument("--eval-deadline", type=float, default=0, help="seconds from the start after which no new evaluation starts")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args()

    t0 = time.time()
    budget = dict(BUDGETS[args.budget])
    budget["steps"] = args.steps or budget["steps"]
    budget["n"] = args.n or budget["n"]
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in rows:
        row_overrides(r)
    seeds = [int(s) for s in args.seeds.split(",")]
    spaces = [x.strip() for x in args.latents.split(",")]
    aes = [x.strip() for x in args.autoencoder.split(",")]
    if len(spaces) != len(aes) or not set(spaces) <= {"builtin", "taef2"}:
        raise SystemExit("--latents is builtin, taef2 or builtin,taef2, with one --autoencoder per latent space")
    work = Path(args.work)
    ilct = [sys.executable, "-m", "ilct"]

    ae_sets = encode_latents(spaces, aes, work, ilct, args.limit, args.dry_run)  # 1. latents, once per space
    todo = [(space, row, seed) for space in spaces for row, seed in jobs(rows, seeds)]

    def run_dir(space: str, row: str, seed: int, root: str = "runs") -> Path:
        return work / space / root / f"{row}_s{seed}"

    def train_cmd(space: str, row: str, seed: int, steps: int, root: str = "runs") -> list[str]:
        every = max(1, steps // max(args.curve, 1))
        sets = [f"data.latents={work / space / 'latents'}", f"train.total_steps={steps}", f"train.seed={seed}",
                "train.sample_every=0", f"train.ckpt_every={every}", f"train.keep_checkpoints={args.curve + 1}",
                f"train.log_every={min(50, max(1, steps // 4))}"] + row_overrides(row)
        out = run_dir(space, row, seed, root)
        cmd = ilct + ["train", "--config", "fmnist-ict", "--out", str(out), "--no-progress"] + ae_sets[space]
        cmd += common.set_flags(sets)
        if (out / "config.yaml").exists():
            cmd.append("--force" if root == "calibration" else "--resume")
        return cmd

    # 2. the step budget: fixed, or measured with every row running at once
    steps = budget["steps"]
    if args.train_seconds and not args.dry_run:
        probe = args.probe
        common.pool([(f"{s}/{r}/{d}", train_cmd(s, r, d, probe, "calibration"),
                      work / "logs" / f"calib_{s}_{r}_s{d}.log") for s, r, d in todo], len(todo), False)
        rates = []
        for s, r, d in todo:
            log = [json.loads(x) for x in (run_dir(s, r, d, "calibration") / "log.jsonl").read_text().splitlines()]
            rates.append(min(x["img_per_s"] for x in log[1:] if "img_per_s" in x) / 64)  # steps/s, batch 64
        steps = max(probe, int(min(rates) * args.train_seconds * 0.9) // 100 * 100)
        print(f"calibration: slowest row {min(rates):.1f} steps/s with {len(todo)} at once -> {steps} steps per row", flush=True)
    print(f"{len(todo)} runs of {steps} steps; FID on {budget['n']} samples; latents {args.latents}", flush=True)

    # 3. training, `parallel` runs at a time
    seconds = common.pool([(f"{s}/{r}/{d}", train_cmd(s, r, d, steps), work / "logs" / f"{s}_{r}_s{d}.train.log")
                           for s, r, d in todo], args.parallel, args.dry_run,
                          deadline=t0 + args.train_deadline if args.train_deadline else 0, stop_running=True)
    if args.dry_run:
        return
    t_train = time.time() - t0

    # 4. evaluation: the final checkpoint at n samples, earlier ones at curve_n for FID versus step
    def eval_cmd(space: str, row: str, seed: int, ckpt: Path, n: int, out_json: Path) -> list[str]:
        nfe = str(HEUN_STEPS) if row == "edm-diffusion" else "1,2"
        return ilct + ["eval", "--run", str(run_dir(space, row, seed)), "--checkpoint", str(ckpt), "--steps", nfe,
                       "--n", str(n), "--seed", "0", "--json", str(out_json), "--no-progress"]

    finals, points = [], []  # every final checkpoint first: the curve points are what a deadline may drop
    for s, r, d in todo:
        ckpts = sorted((run_dir(s, r, d) / "checkpoints").glob("step_*"))
        for ck in ckpts:
            final = ck == ckpts[-1]
            out_json = work / s / "eval" / f"{r}_s{d}_{ck.name}.json"
            if not out_json.is_file():
                (finals if final else points).append(
                    (f"eval {s}/{r}/{d}/{ck.name}", eval_cmd(s, r, d, ck, budget["n"] if final else args.curve_n, out_json),
                     work / "logs" / f"{s}_{r}_s{d}_{ck.name}.eval.log"))
    evals = finals + points

    def on_term(signum, frame):  # `timeout` stops the benchmark: report what has been evaluated
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        if evals:  # the first one alone: it computes the cached reference features the others read
            common.pool(evals[:1], 1, False)
            common.pool(evals[1:], args.parallel, False, deadline=t0 + args.eval_deadline if args.eval_deadline else 0)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        write_reports(args, spaces, todo, work, run_dir, seconds, steps, t0, t_train)


def write_reports(args, spaces, todo, work, run_dir, seconds, steps, t0, t_train) -> None:
    def nfe_of(row: str, k: str) -> str:
        return str(2 * int(k) - 1) if row == "edm-diffusion" else k

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for space in spaces:
        results, features = [], ""
        for s, r, d in todo:
            if s != space:
                continue
            ckpts = sorted((run_dir(s, r, d) / "checkpoints").glob("step_*"))
            curve, final = [], None
            for ck in ckpts:
                f = work / s / "eval" / f"{r}_s{d}_{ck.name}.json"
                if not f.is_file():
                    continue
                m = json.loads(f.read_text())
                features = m["features"]
                point = {"step": m["step"], "n": m["n"], "fid": {nfe_of(r, k): v for k, v in m["fid"].items()},
                         "recall": {nfe_of(r, k): v for k, v in m["recall"].items()},
                         "precision": {nfe_of(r, k): v for k, v in m["precision"].items()}}
                curve.append(point)
                if ck == ckpts[-1]:
                    final = point
            if final is None:
                continue
            results.append({"name": r, "latents": s, "seed": d, "fid": final["fid"], "recall": final["recall"],
                            "precision": final["precision"], "n": final["n"], "steps": final["step"],
                            "train_seconds": seconds.get(f"{s}/{r}/{d}"), "curve": curve})
        report = {
            "command": "python " + " ".join(sys.argv),
            "machine": f"{common.machine()}; budget {args.budget}" + (f", --train-seconds {args.train_seconds:g}" if args.train_seconds else ""),
            "features": features,
            "steps_per_row": steps,
            "train_wall_seconds": round(t_train, 1),
            "wall_seconds": round(time.time() - t0, 1),
            "rows": results,
        }
        (out / f"ablation_{space}.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / f"ablation_{space}.md").write_text(
            f"Command: `{report['command']}`\n\nMachine: {report['machine']}\n\n{steps} steps per row\n\n" + table(results) + "\n")
        print(f"latents {space}:\n" + table(results), flush=True)


def table(results: list[dict]) -> str:
    lines = ["| row | seed | FID 1 NFE | FID 2 NFE | recall 1 | recall 2 |", "|---|---|---|---|---|---|"]
    for r in results:
        f, rc = r["fid"], r["recall"]
        if r["name"] == "edm-diffusion":
            lines.append(f"| {r['name']} (35 NFE) | {r['seed']} | {f['35']:.2f} | | {rc['35']:.3f} | |")
        else:
            lines.append(f"| {r['name']} | {r['seed']} | {f['1']:.2f} | {f['2']:.2f} | {rc['1']:.3f} | {rc['2']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
