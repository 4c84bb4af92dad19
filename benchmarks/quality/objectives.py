"""Training objectives on equal budgets: consistency training (iCT, iLCT), MeanFlow and EDM on Fashion-MNIST latents.

Rows (every row starts from a preset and changes only the settings named here; no row gets more
tuning than another, and all share the preset family's network DiT-T/2, batch 64, lr 1e-3, EMA 0.995):

    ict                      fmnist-ict                                   seeds 0, 1
    ilct                     fmnist-ilct                                  seeds 0, 1
    meanflow                 fmnist-meanflow                              seeds 0, 1
    meanflow+cauchy+ot       fmnist-meanflow, meanflow.metric=cauchy, method.ot_coupling=true          seed 0
    meanflow+cauchy+ot+nsln  the same, plus method.nsln=true                                            seed 0
    edm-then-ilct            warm start, seed 0: fmnist-ilct with train.objective=edm for half the budget
                             (run folder `edm-then-ilct.edm_s0`), then fmnist-ilct with
                             train.init_from=<that run> for the other half; total budget equal to the others
    edm-heun                 fmnist-ilct with train.objective=edm for the whole budget (the first phase of
                             edm-then-ilct, continued), sampled with Heun at 18 steps = 35 NFE: the many-step
                             reference; seed 0

Budgets. `--steps N`: every row trains N steps (edm-then-ilct: N//2 EDM steps, then N - N//2). `--seconds S`:
equal wall-clock. `ilct train` has no time limit, so each training job first runs `--probe` steps (all jobs
`--parallel` at a time, as in the real run), its seconds per step is read from the probe's log.jsonl
(elapsed_s between the first and last logged step, so start-up is left out), and it then trains
total_steps = S / (seconds per step) steps (edm-then-ilct: S/2 seconds for each phase, each by its own rate).
The `seconds` recorded per row is the measured wall-clock of its training (the sum of both phases for
edm-then-ilct; the second phase starts after every first-wave job, so it may run with fewer neighbours).

Evaluation: `ilct eval` of each run's final checkpoint, FID and recall in the Fashion-MNIST classifier
features (as ablation.py), at 1 and 2 NFE; edm-heun at Heun 18 steps only, recorded under the key "35" (NFE).
Latent spaces as in ablation.py: `builtin` (the built-in KL autoencoder) or `taef2` (Fashion-MNIST rendered
as 64x64 RGB through TAEF2, weights in ../shared/weights/taef2).

    python benchmarks/quality/objectives.py --latents builtin --autoencoder runs/demo/autoencoder --steps 2000 --n 5000
    python benchmarks/quality/objectives.py --latents taef2 --autoencoder ../shared/weights/taef2 --seconds 1800 --parallel 9

Results: docs/results/objectives.json and docs/figures/objectives_fid_vs_seconds.png (FID against training
seconds; skipped with a note when matplotlib is missing). `--dry-run` prints the commands; `--tiny` is a
seconds-long run for the tests (4 steps per row of DiT-T/4 at batch 8 on the CPU, --n 10).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ilct.latents.directory import is_complete

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402


ROWS = ["ict", "ilct", "meanflow", "meanflow+cauchy+ot", "meanflow+cauchy+ot+nsln", "alphaflow", "edm-then-ilct",
        "edm-heun"]
SEEDS = {"ict": [0, 1], "ilct": [0, 1], "meanflow": [0, 1]}  # every other row: seed 0
MF_TECHNIQUES = ["meanflow.metric=cauchy", "method.ot_coupling=true"]
EDM = ("fmnist-ilct", ["train.objective=edm"])
HEUN_STEPS = 18  # 35 NFE
TINY_SETS = ["model.arch=DiT-T/4", "train.batch_size=8", "train.device=cpu"]


@dataclass
class Phase:
    """One `ilct train` run: `share` of the row's budget, optionally warm-started from another phase's run."""
    run: str  # run folder name
    preset: str
    sets: list[str]
    share: float
    init_from: str = ""  # run folder name of the phase it starts from


def phases(row: str, seed: int) -> list[Phase]:
    """The training runs of a row, in order."""
    one = {"ict": ("fmnist-ict", []), "ilct": ("fmnist-ilct", []), "meanflow": ("fmnist-meanflow", []),
           "meanflow+cauchy+ot": ("fmnist-meanflow", MF_TECHNIQUES),
           "meanflow+cauchy+ot+nsln": ("fmnist-meanflow", MF_TECHNIQUES + ["method.nsln=true"]), "edm-heun": EDM,
           "alphaflow": ("fmnist-meanflow", ["meanflow.alpha_curriculum=true"])}  # one switch: the curriculum
    if row in one:
        preset, sets = one[row]
        return [Phase(f"{row}_s{seed}", preset, list(sets), 1.0)]
    if row == "edm-then-ilct":
        first = Phase(f"{row}.edm_s{seed}", EDM[0], list(EDM[1]), 0.5)
        return [first, Phase(f"{row}_s{seed}", "fmnist-ilct", [], 0.5, init_from=first.run)]
    raise ValueError(f"unknown row {row!r}; rows: {', '.join(ROWS)}")


def jobs(rows: list[str], seeds: list[int] | None) -> list[tuple[str, int]]:
    """(row, seed) pairs: the given seeds for every row, or by default SEEDS (seed 0 where not listed)."""
    return [(r, s) for r in rows for s in (seeds if seeds is not None else SEEDS.get(r, [0]))]


def split_steps(total: int, n_phases: int) -> list[int]:
    """A row's step budget over its phases: all of it, or two halves that add up to the total."""
    return [total] if n_phases == 1 else [total // 2, total - total // 2]


def latent_space(space: str, ae: str, work: Path, data: str, ilct: list[str]) -> tuple[list[str], list[str]]:
    """The `ilct encode` command of a latent space and the flags its training runs take (as in ablation.py)."""
    lat = work / space / "latents"
    if space == "builtin":
        return (ilct + ["encode", "--data", data, "--autoencoder", f"builtin:{ae}", "--out", str(lat)],
                ["--autoencoder", ae])
    return (ilct + ["encode", "--data", data, "--resolution", "64", "--rgb", "--autoencoder", f"taesd:{ae}", "--out", str(lat)],
            ["--autoencoder", ae, "--set", "autoencoder.kind=taesd", "--set", "model.in_channels=32",
             "--set", "data.rgb=true", "--set", "data.resolution=64"])


def train_cmd(args, ilct: list[str], flags: list[str], space: str, ph: Phase, seed: int, steps: int, root: str) -> list[str]:
    work = Path(args.work)
    out = work / space / root / ph.run
    sets = [f"data.latents={work / space / 'latents'}", f"train.total_steps={steps}", f"train.seed={seed}",
            "train.sample_every=0", f"train.ckpt_every={steps}", f"train.log_every={max(1, min(50, steps // 10))}"]
    sets += args.set + ph.sets + (TINY_SETS if args.tiny else [])
    if ph.init_from and root != "calibration":  # the probe of a warm-started phase times the same network from scratch
        sets.append(f"train.init_from={work / space / root / ph.init_from}")
    cmd = ilct + ["train", "--config", ph.preset, "--out", str(out), "--no-progress"] + flags
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    cmd += common.set_flags(sets)
    if (out / "config.yaml").exists():
        cmd.append("--force" if root == "calibration" else "--resume")
    return cmd


def seconds_per_step(run: Path) -> float:
    """From a probe's log.jsonl: elapsed seconds between the first and the last logged step, per step."""
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    log = [x for x in log if "elapsed_s" in x and "step" in x]
    if len(log) < 2 or log[-1]["step"] == log[0]["step"]:
        raise SystemExit(f"{run}: the probe logged fewer than two steps; raise --probe")
    return max(log[-1]["elapsed_s"] - log[0]["elapsed_s"], 1e-3) / (log[-1]["step"] - log[0]["step"])


def fixed_steps(total: int, todo) -> dict[tuple[str, str], int]:
    """--steps: steps per (latent space, run folder), each row's total split over its phases."""
    out = {}
    for space, row, seed in todo:
        phs = phases(row, seed)
        out.update({(space, ph.run): k for ph, k in zip(phs, split_steps(total, len(phs)))})
    return out


def budget_steps(args, ilct, flags, todo) -> dict[tuple[str, str], int]:
    """Steps per (latent space, run folder): the --steps budget split by share, or from the --seconds probes."""
    work = Path(args.work)
    every = [(space, ph, seed) for space, row, seed in todo for ph in phases(row, seed)]
    if not args.seconds:
        return fixed_steps(args.steps, todo)
    probes = [(f"probe {s}/{ph.run}", train_cmd(args, ilct, flags[s], s, ph, d, args.probe, "calibration"),
               work / "logs" / f"probe_{s}_{ph.run}.log") for s, ph, d in every]
    common.pool(probes, args.parallel, args.dry_run)
    if args.dry_run:
        print(f"then each run trains {args.seconds:g} s x its share / its probe's seconds per step "
              "(the train.total_steps=0 below stands for that)")
        return {(s, ph.run): 0 for s, ph, _ in every}
    out = {}
    for s, ph, _ in every:
        rate = seconds_per_step(work / s / "calibration" / ph.run)
        out[(s, ph.run)] = max(1, int(args.seconds * ph.share / rate))
        print(f"probe {s}/{ph.run}: {rate:.4f} s/step -> {out[(s, ph.run)]} steps", flush=True)
    return out


def budget_dir(args, base: str) -> str:
    """A budget's folder under --work/SPACE: `runs` (or `eval`) for --steps, `runs-300s` for --seconds 300."""
    return base if not args.seconds else f"{base}-{args.seconds:g}s"


def refuse_other_budgets(args, todo) -> None:
    """--steps: a run folder that already holds a run of another length is resumed, never retrained, so it would
    mix budgets in one table; refuse it (exit 2) before anything runs."""
    import yaml

    for (space, run), k in fixed_steps(args.steps, todo).items():
        cfg = Path(args.work) / space / budget_dir(args, "runs") / run / "config.yaml"
        if not cfg.is_file():
            continue
        try:
            have = yaml.safe_load(cfg.read_text())["train"]["total_steps"]
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
            have = f"an unreadable config ({e})"
        if have != k:
            print(f"error: {cfg.parent} holds a run of {have} steps and --steps {args.steps} gives it {k}: "
                  "give another --work (a run folder is resumed, never retrained)", file=sys.stderr)
            raise SystemExit(2)


def eval_cmd(args, ilct: list[str], run: Path, row: str, out_json: Path) -> list[str]:
    cmd = ilct + ["eval", "--run", str(run), "--steps", str(HEUN_STEPS) if row == "edm-heun" else "1,2",
                  "--n", str(args.n), "--seed", "0", "--json", str(out_json), "--no-progress"]
    return cmd + common.fid_flags(args)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", help="builtin, taef2, or both: builtin,taef2")
    p.add_argument("--autoencoder", help="per latent space (comma-separated): the built-in "
                   "autoencoder directory, or the TAEF2 weights folder")
    p.add_argument("--data-dir", default="", help="Fashion-MNIST IDX files (default: the preset's data.root)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="equal steps: training steps per row (default 2000, the presets')")
    budget.add_argument("--seconds", type=float, help="equal wall-clock: training seconds per row, from probe runs")
    p.add_argument("--probe", type=int, default=200, help="steps of each job's timing run under --seconds")
    p.add_argument("--n", type=int, default=5000, help="samples per FID")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="for every row, before the row's own changes (repeatable), e.g. train.beta2=0.999 for the "
                        "presets as they were before 2026-11-30")
    p.add_argument("--seeds", help="seeds for every row (default: 0,1 for ict, ilct, meanflow; 0 for the others)")
    p.add_argument("--parallel", type=int, default=1, help="training jobs at once (GPU: all of them)")
    p.add_argument("--limit", type=int, help="encode only the first N training images (TAEF2 on a CPU is slow)")
    p.add_argument("--features", default="fmnist", choices=["fmnist", "inception"], help="FID features (the tests: "
                   "inception with a stand-in detector)")
    p.add_argument("--inception-weights", default="")
    p.add_argument("--cache-dir", default="", help="eval's classifier and reference-feature cache (default $ILCT_CACHE)")
    p.add_argument("--work", default="runs/objectives", help="latents, runs and logs")
    p.add_argument("--out", default="docs/results/objectives.json")
    p.add_argument("--figure", default="docs/figures/objectives_fid_vs_seconds.png", help="'' = no figure")
    p.add_argument("--tiny", action="store_true", help="4 steps per row (probe 4), DiT-T/4, batch 8, CPU, --n 10")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--replot", action="store_true", help="only redraw --figure from the results already in --out")
    args = p.parse_args()
    if not args.replot and not (args.latents and args.autoencoder):
        p.error("--latents and --autoencoder are required (or --replot)")
    if args.tiny:
        args.steps = args.steps or (None if args.seconds else 4)
        args.probe, args.n = 4, 10
    args.steps = args.steps or (None if args.seconds else 2000)
    return args


def main() -> None:
    args = parse_args()
    if args.replot:
        return replot(Path(args.out), Path(args.figure or "docs/figures/objectives_fid_vs_seconds.png"))
    t0 = time.time()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in rows:
        phases(r, 0)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    spaces, aes = [x.strip() for x in args.latents.split(",")], [x.strip() for x in args.autoencoder.split(",")]
    if len(spaces) != len(aes) or not set(spaces) <= {"builtin", "taef2"}:
        raise SystemExit("--latents is builtin, taef2 or builtin,taef2, with one --autoencoder per latent space")
    work, ilct = Path(args.work), [sys.executable, "-m", "ilct"]
    data = f"fashion_mnist:{args.data_dir}" if args.data_dir else "fashion_mnist"
    todo = [(space, row, seed) for space in spaces for row, seed in jobs(rows, seeds)]
    if not args.seconds:
        refuse_other_budgets(args, todo)
    flags = {}
    for space, ae in zip(spaces, aes):
        encode, flags[space] = latent_space(space, ae, work, data, ilct)
        encode += ["--limit", str(args.limit)] if args.limit else []
        encode += ["--device", "cpu"] if args.tiny else []
        if args.dry_run:
            print(" ".join(encode))
        elif not is_complete(work / space / "latents"):
            subprocess.run(encode + ["--no-progress"], check=True)
    steps = budget_steps(args, ilct, flags, todo)

    # training: first every fresh run, then the warm-started ones (their source is in the first wave)
    waves = [[], []]
    for s, r, d in todo:
        for ph in phases(r, d):
            waves[bool(ph.init_from)].append((f"{s}/{ph.run}", train_cmd(args, ilct, flags[s], s, ph, d, steps[(s, ph.run)], budget_dir(args, "runs")),
                                              work / "logs" / f"{s}_{ph.run}.train.log"))
    seconds = {}
    for wave in waves:
        seconds.update(common.pool(wave, args.parallel, args.dry_run))
    root, ev = budget_dir(args, "runs"), budget_dir(args, "eval")
    evals = [(f"eval {s}/{r}/{d}", eval_cmd(args, ilct, work / s / root / f"{r}_s{d}", r, work / s / ev / f"{r}_s{d}.json"),
              work / "logs" / f"{s}_{r}_s{d}.eval.log") for s, r, d in todo]
    if evals:  # the first one alone: it computes the cached reference features the others read
        common.pool(evals[:1], 1, args.dry_run)
        common.pool(evals[1:], args.parallel, args.dry_run)
    if not args.dry_run:
        write_report(args, todo, steps, seconds, t0)


def write_report(args, todo, steps, seconds, t0) -> None:
    work, rows = Path(args.work), []
    # each row names its budget, so that rows of several budgets can share one file
    row_budget = f"seconds {args.seconds:g}" if args.seconds else f"steps {args.steps}"
    for s, r, d in todo:
        m = json.loads((work / s / budget_dir(args, "eval") / f"{r}_s{d}.json").read_text())
        nfe = {str(HEUN_STEPS): str(2 * HEUN_STEPS - 1)} if r == "edm-heun" else {}
        runs = [ph.run for ph in phases(r, d)]
        rows.append({"name": r, "latents": s, "seed": d, "steps": sum(steps[(s, x)] for x in runs),
                     "phase_steps": {x: steps[(s, x)] for x in runs},
                     "seconds": round(sum(seconds.get(f"{s}/{x}", 0.0) for x in runs), 1),
                     "fid": {nfe.get(x["key"], x["key"]): x["fid"] for x in m["rows"]},
                     "recall": {nfe.get(x["key"], x["key"]): x["recall"] for x in m["rows"]},
                     "n": args.n, "features": m["features"], "budget": row_budget})
    budget = f"--seconds {args.seconds:g} per row (probe {args.probe} steps)" if args.seconds else f"--steps {args.steps} per row"
    report = {"command": "python " + " ".join(sys.argv), "machine": f"{common.machine()}; {budget}",
              "wall_seconds": round(time.time() - t0, 1), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")
    if args.figure:
        plot(rows, Path(args.figure), report["command"])


def plot(rows: list[dict], path: Path, command: str) -> None:
    """FID against training seconds: one panel per latent space, one line per row (seed 0) through its budgets
    (rows of several budgets, as in a merged results file), at 1 NFE (edm-heun: 35)."""
    try:
        plt = common.pyplot()
    except ImportError:
        print("note: matplotlib is missing; no figure (the numbers are in the JSON)")
        return
    spaces = sorted({r["latents"] for r in rows})
    fig, axes = plt.subplots(1, max(1, len(spaces)), figsize=(7 * max(1, len(spaces)), 4.5), squeeze=False)
    for ax, space in zip(axes[0], spaces):
        names = list(dict.fromkeys(r["name"] for r in rows if r["latents"] == space))
        for i, name in enumerate(names):
            pts = sorted((r["seconds"], r["fid"].get("1", r["fid"].get("35"))) for r in rows
                         if r["latents"] == space and r["name"] == name and r["seed"] == 0)
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o^"[name == "edm-heun"], color=f"C{i % 10}",
                        label=name + (" (35 NFE)" if name == "edm-heun" else ""))
        ax.set_xlabel("training seconds (from each run's log)")
        ax.set_ylabel(f"FID at 1 NFE ({rows[0].get('features', 'fmnist').split(' (')[0] if rows else 'fmnist'} features)")
        ax.set_title(f"{space} latents, seed 0", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(command[-110:], fontsize=7)
    common.save_figure(fig, path, 120, bbox_inches="tight")
    print(f"figure: {path}")


def replot(out: Path, path: Path) -> None:
    """--replot: the figure of an existing results file (for example one that merges several budgets)."""
    try:
        report = json.loads(out.read_text())
        rows = [r for r in report["rows"] if {"latents", "name", "seed", "seconds", "fid"} <= set(r)]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: --replot: {out} is not a results file of this benchmark ({e})", file=sys.stderr)
        raise SystemExit(2) from None
    plot(rows, path, f"{out} (each row's command is in it)")


if __name__ == "__main__":
    main()
