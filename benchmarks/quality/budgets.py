"""Issue #16, item 6: the fmnist presets at 1x, 4x and 16x the demo's training budget, FID against wall-clock.

Each budget is a run of its own, `ilct train --config PRESET --set train.total_steps=k x D`, where D is the demo's
steps (the demo preset's train.total_steps, or --demo-steps): the curriculum's stages scale with
train.total_steps (K' = K / (log2(s1/s0) + 1)), so the step-D checkpoint of a longer run
is not what a user with the 1x budget gets. Every run keeps a checkpoint at each quarter of its steps, and every
checkpoint is scored with `ilct eval --split test --steps 1,2 --n N` in the Fashion-MNIST classifier features,
so a run also gives its own curve. All runs train on the demo's data (the whole training split, encoded with
--autoencoder).

Seconds are the runs' own (elapsed_s of log.jsonl, summed over resumes): speeds only when a run had the cores
to itself (--parallel 1 and nothing else running); the report records --parallel and OMP_NUM_THREADS.

    python benchmarks/quality/budgets.py --autoencoder runs/demo/autoencoder --multiples 1,4
    python benchmarks/quality/budgets.py --autoencoder runs/demo/autoencoder --multiples 16   # ~2.3 h a preset here
    python benchmarks/quality/budgets.py --autoencoder runs/demo/autoencoder --dry-run       # the commands

Results: --out (default docs/results/budgets.json), written after every evaluation; run again, it resumes the
trainings and skips what is scored; with --score-only it trains nothing and scores the checkpoints there are (a
run still training elsewhere gives its quarters so far, its budget stays under `missing`). Per run: the preset,
the multiple, steps, seconds, the final checkpoint's FID and recall at 1 and 2 NFE, and its curve; `missing`
lists what is not measured yet, `notes` the --note lines. `--tiny` is a seconds-long
run for the tests (DiT-T/4, batch 8, a 4-step demo budget, --n 10).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ilct.runs.checkpoint import list_checkpoints, step_of
from ilct.demo import preset_steps
from ilct.latents.directory import is_complete

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402


PRESETS = "fmnist-ict,fmnist-ilct"
TINY_SETS = ["model.arch=DiT-T/4", "train.batch_size=8", "train.device=cpu"]


def run_seconds(run: Path, step: int) -> float | None:
    """Training seconds up to `step` from the run's log.jsonl (elapsed_s restarts when a run is resumed)."""
    total, last = 0.0, 0.0
    for line in (run / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "elapsed_s" not in row or "step" not in row:
            continue
        if row["elapsed_s"] < last:  # a new process: the previous one's clock ends at `last`
            total += last
        last = row["elapsed_s"]
        if row["step"] >= step:
            return round(total + last, 1)
    return None  # the run never got there


def runs(args) -> list[tuple[str, str, int]]:
    """(run name, preset, multiple), the shorter budgets first."""
    return [(f"{p}-{m}x", p, m) for m in args.multiples for p in args.presets]


def steps_of(args, multiple: int) -> int:
    return multiple * args.demo_steps


def run_sets(args, multiple: int) -> list[str]:
    steps = steps_of(args, multiple)
    return [f"data.latents={Path(args.work) / 'latents'}", f"train.total_steps={steps}",
            f"train.ckpt_every={max(1, steps // 4)}", "train.keep_checkpoints=5", "train.sample_every=0",
            f"train.log_every={max(1, min(50, steps // 10))}"] + (TINY_SETS if args.tiny else []) + args.set


def train_cmd(args, ilct: list[str], name: str, preset: str, multiple: int) -> list[str]:
    out, sets = Path(args.work) / "runs" / name, run_sets(args, multiple)
    if (out / "config.yaml").exists():  # run again: go on where it stopped (same_run checked it is this budget's)
        return ilct + ["train", "--out", str(out), "--resume", "--no-progress"]
    cmd = ilct + ["train", "--config", preset, "--out", str(out), "--autoencoder", args.autoencoder, "--no-progress"]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    return cmd + common.set_flags(sets)


def same_runs(args) -> None:
    """Exit 2 when a run folder in --work holds another configuration than the one asked for now (a preset that
    changed since, or other --set): resuming or scoring it would report that run under this budget's name. The
    comparison is `ilct train --resume`'s: every key but the run-time ones."""
    from ilct.training.build import absolute_paths
    from ilct.config import load_config
    from ilct.runs.folder import changed_settings

    given = [f"autoencoder.path={args.autoencoder}"] + ([f"data.root={args.data_dir}"] if args.data_dir else [])
    for name, preset, multiple in runs(args):
        run = Path(args.work) / "runs" / name
        if not (run / "config.yaml").is_file():
            continue
        want = load_config(preset, run_sets(args, multiple) + given)  # as train_cmd's `ilct train` builds it
        absolute_paths(want)
        changed = changed_settings(want, run)
        if changed:
            print(f"budgets.py: {run} was trained with other {', '.join(changed[:4])} than {preset} with these "
                  "settings asks for now: give another --work", file=sys.stderr)
            sys.exit(2)


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    """The run's checkpoints that hold a state.json, by step (a run another process is training may be deleting one)."""
    return [(step_of(p), p) for p in list_checkpoints(run) if (p / "state.json").is_file()]


def eval_cmd(args, ilct: list[str], run: Path, ckpt: Path, out_json: Path) -> list[str]:
    cmd = ilct + ["eval", "--run", str(run), "--checkpoint", str(ckpt), "--split", "test", "--steps", "1,2",
                  "--n", str(args.n), "--seed", "0", "--json", str(out_json), "--no-progress"]
    return cmd + common.fid_flags(args)


def report(args, t0: float) -> dict:
    """Per run: its curve of scored checkpoints and, once its last checkpoint is scored, its budget's row."""
    rows, missing = [], []
    for name, preset, multiple in runs(args):
        run, steps = Path(args.work) / "runs" / name, steps_of(args, multiple)
        curve = []
        for step, ck in checkpoints(run):
            ev = Path(args.work) / "eval" / name / f"{ck.name}.json"
            if ev.is_file():
                m = json.loads(ev.read_text())
                curve.append({"step": step, "seconds": run_seconds(run, step), "fid": m["fid"], "recall": m["recall"],
                              "features": m.get("features")})
        last = curve[-1] if curve and curve[-1]["step"] == steps else None
        if last is None:
            missing.append(f"{preset} at {multiple}x ({steps} steps)")
        rows.append({"preset": preset, "multiple": multiple, "steps": steps, "run": str(run), "sets": args.set,
                     "seconds": last and last["seconds"], "fid": last and last["fid"],
                     "recall": last and last["recall"], "curve": curve})
    return {"command": "python " + " ".join(sys.argv), "machine": common.machine(), "split": "test", "n": args.n,
            "demo_steps": args.demo_steps, "parallel": args.parallel,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"), "autoencoder": args.autoencoder,
            "wall_seconds": round(time.time() - t0, 1), "rows": rows, "missing": missing, "notes": args.note}


def write_report(args, t0: float) -> None:
    common.write_json(Path(args.out), report(args, t0))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", required=True, help="the demo's built-in autoencoder directory")
    p.add_argument("--data-dir", default="", help="Fashion-MNIST IDX files (default: the preset's data.root)")
    p.add_argument("--presets", default=PRESETS, help=f"comma-separated (default {PRESETS})")
    p.add_argument("--multiples", default="1,4,16", help="budgets in multiples of --demo-steps (default 1,4,16)")
    p.add_argument("--demo-steps", type=int, default=0, help="the 1x budget in steps (default: the demo preset's)")
    p.add_argument("--set", action="append", default=[], help="a config change for every run (repeatable)")
    p.add_argument("--n", type=int, default=2000, help="samples per FID")
    p.add_argument("--parallel", type=int, default=1, help="jobs at once (1: the seconds are speeds)")
    p.add_argument("--features", default="fmnist", choices=["fmnist", "inception"])
    p.add_argument("--inception-weights", default="")
    p.add_argument("--cache-dir", default="", help="eval's reference-feature cache (default $ILCT_CACHE)")
    p.add_argument("--work", default="runs/budgets", help="latents, runs, evaluations, logs")
    p.add_argument("--out", default="docs/results/budgets.json")
    p.add_argument("--tiny", action="store_true", help="a 4-step demo budget, DiT-T/4, batch 8, CPU, --n 10")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--note", action="append", default=[],
                   help="a line for the report's notes, e.g. how runs trained by earlier invocations ran (repeatable)")
    p.add_argument("--score-only", action="store_true",
                   help="train nothing: score the checkpoints the runs have and list the rest under `missing` "
                        "(a report of all budgets while one is still training in another --out)")
    args = p.parse_args(argv)
    args.presets = [x.strip() for x in args.presets.split(",") if x.strip()]
    try:
        args.multiples = sorted({int(x) for x in args.multiples.split(",") if x.strip()})
    except ValueError:
        p.error(f"--multiples must be comma-separated integers, got {args.multiples!r}")
    if not args.presets or not args.multiples or min(args.multiples) < 1:
        p.error("--presets and --multiples must name at least one preset and budget, each multiple >= 1")
    args.demo_steps = args.demo_steps or preset_steps()
    if args.demo_steps < 1 or args.n < 10 or args.parallel < 1:
        p.error("--demo-steps and --parallel must be >= 1 and --n >= 10")
    if args.tiny:
        args.demo_steps, args.n = 4, 10
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0, work, ilct = time.time(), Path(args.work), [sys.executable, "-m", "ilct"]
    data = f"fashion_mnist:{args.data_dir}" if args.data_dir else "fashion_mnist"
    encode = ilct + ["encode", "--data", data, "--autoencoder", f"builtin:{args.autoencoder}", "--out",
                     str(work / "latents"), "--no-progress"] + (["--device", "cpu"] if args.tiny else [])
    if args.dry_run:
        print(" ".join(encode))
    else:
        same_runs(args)
        if not args.score_only and not is_complete(work / "latents"):
            subprocess.run(encode, check=True)
    jobs = [(f"train {name}", train_cmd(args, ilct, name, preset, m), work / "logs" / f"{name}.train.log")
            for name, preset, m in runs(args)
            if not args.score_only
            and not (work / "runs" / name / "checkpoints" / f"step_{steps_of(args, m):09d}" / "state.json").is_file()]
    common.pool(jobs, args.parallel, args.dry_run)
    if args.dry_run:
        print("then per checkpoint (each quarter of a run): ilct eval --run R --checkpoint C --split test --steps 1,2 ...")
        return
    todo = [(f"eval {name}/{ck.name}", eval_cmd(args, ilct, work / "runs" / name, ck, work / "eval" / name / f"{ck.name}.json"),
             work / "logs" / f"{name}_{ck.name}.eval.log")
            for name, _, _ in runs(args) for _, ck in checkpoints(work / "runs" / name)
            if not (work / "eval" / name / f"{ck.name}.json").is_file()]
    if todo:  # the first alone: it computes the cached reference features the others read
        common.pool(todo[:1], 1, False)
    for i in range(1, len(todo), args.parallel):
        common.pool(todo[i:i + args.parallel], args.parallel, False)
        write_report(args, t0)
    write_report(args, t0)
    print(f"written {args.out}", flush=True)


if __name__ == "__main__":
    main()
