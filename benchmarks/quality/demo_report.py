"""Issue #16, "Must show": docs/results/demo.json, the demo's quality, its sweep and longer budgets, in one file.

It measures nothing itself; it gathers what other commands measured, each with its own command:

  --summary       runs/demo/summary.json of a timed `make demo` (`time make demo` on a fresh clone): the 1- and
                  2-step FID and recall on the test split, the autoencoder's floor, and the seconds of training;
  --make-demo-seconds  the wall time of that `make demo` (venv and install included), and --make-demo-command;
  --sweep         benchmarks/quality/demo_sweep.py's report: the configurations tried at the demo's CPU budget,
                  scored on the validation split (repeatable: parts of one sweep; the last part's winner is it);
  --budget PRESET=RUN_DIR:EVAL_DIR  (repeatable) a run of PRESET trained past the demo's budget with its
                  checkpoints scored by `ilct eval --split test --steps 1,2` into EVAL_DIR/step_XXXXXXXXX.json
                  (as benchmarks/quality/stability.py does): the checkpoints at 1x, 4x and 16x the demo's steps
                  become the budgets, with the training seconds from the run's log;
  --stability     or benchmarks/quality/stability.py's JSON: its runs' checkpoints at those steps (their seconds
                  estimated from the timed demo's training rate, as those runs shared the cores).

    python benchmarks/quality/demo_report.py --summary /tmp/demo-check/runs/demo/summary.json \\
        --make-demo-seconds 716 --sweep docs/results/demo_sweep.json \\
        --budget fmnist-ilct=runs/stability/runs/ilct-beta2:runs/stability/eval/ilct-beta2 --out docs/results/demo.json

A budget that has no scored checkpoint is left out, and `missing` lists what is not there yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEMO_STEPS = 2000
MULTIPLES = (1, 4, 16)


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


def budgets(specs: list[str]) -> tuple[list[dict], list[str]]:
    out, missing = [], []
    for spec in specs:
        preset, _, dirs = spec.partition("=")
        run, _, evals = dirs.partition(":")
        if not (preset and run and evals):
            raise ValueError(f"--budget expects PRESET=RUN_DIR:EVAL_DIR, got {spec!r}")
        for k in MULTIPLES:
            steps = k * DEMO_STEPS
            result = Path(evals) / f"step_{steps:09d}.json"
            seconds = run_seconds(Path(run), steps) if (Path(run) / "log.jsonl").is_file() else None
            if not result.is_file() or seconds is None:
                missing.append(f"{preset} at {k}x ({steps} steps)")
                continue
            m = json.loads(result.read_text())
            out.append({"preset": preset, "multiple": k, "steps": steps, "seconds": seconds, "run": run,
                        "split": m.get("split"), "n": m.get("n"), "fid": {s: m["fid"][s] for s in ("1", "2")},
                        "recall": {s: m["recall"][s] for s in ("1", "2")}})
    return out, missing


# the stability study's runs as changes to today's presets (s1 80 and beta2 0.99 since 2026-11-30; the study used s1 160)
OLD = {"consistency.s1": "160", "train.beta2": "0.999"}
STABILITY_RUNS = {"ict": ("fmnist-ict", OLD), "ict-beta2": ("fmnist-ict", {"consistency.s1": "160"}),
                  "ilct": ("fmnist-ilct", OLD), "ilct-beta2": ("fmnist-ilct", {"consistency.s1": "160"}),
                  "ilct-beta2-s1": ("fmnist-ilct", {"consistency.s1": "160", "train.seed": "1"})}


def stability_budgets(path: str, seconds_per_step: float) -> tuple[list[dict], list[str]]:
    """1x, 4x and 16x rows from benchmarks/quality/stability.py's curves (checkpoints scored on the test split).

    Those runs shared the cores with other jobs, so their own seconds are not speeds: a row's seconds are
    estimated as steps x the timed demo's quiet training rate, and say so."""
    study = json.loads(Path(path).read_text())
    curves, features = study["curves"], f"the classifier cached where the study ran ({study.get('machine', '?')})"
    out, missing = [], []
    for run, (preset, changes) in STABILITY_RUNS.items():
        for k in MULTIPLES:
            steps = k * DEMO_STEPS
            row = next((c for c in curves if c["run"] == run and c["step"] == steps), None)
            if row is None:
                missing.append(f"{preset} {changes} at {k}x ({steps} steps)")
                continue
            out.append({"preset": preset, "changes": changes, "multiple": k, "steps": steps,
                        "seconds": round(steps * seconds_per_step, 1), "seconds_estimated": True, "run": f"{path}:{run}",
                        "split": "test", "n": row["n"], "features": row.get("features_fingerprint", features),
                        "fid": row["fid"], "recall": row["recall"]})
    return out, missing


def sweep_rows(path: str) -> tuple[list[dict], str | None, list[str]]:
    if not path or not Path(path).is_file():
        return [], None, ["the sweep (benchmarks/quality/demo_sweep.py)"]
    report = json.loads(Path(path).read_text())
    rows = [{"name": r["name"], "settings": r["settings"], "autoencoder_steps": r["autoencoder_steps"],
             "steps": r["steps"], "val_fid": r.get("val_fid"), "val_recall": r.get("val_recall"),
             "test_fid": r.get("test_fid"), "sweep": path} for r in report["rows"]]
    return rows, report.get("winner"), [f"sweep: {r['name']} not scored" for r in rows if not r["val_fid"]]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--summary", required=True, help="runs/demo/summary.json of the timed make demo")
    p.add_argument("--make-demo-seconds", type=float, required=True, help="its wall time (time make demo)")
    p.add_argument("--make-demo-command", default="git clone <repo> /tmp/demo-check && cd /tmp/demo-check && time make demo")
    p.add_argument("--machine", required=True, help="where make demo ran, in words (CPU, cores, torch)")
    p.add_argument("--sweep", action="append", default=[], help="demo_sweep.py's JSON report (repeatable: parts of one sweep)")
    p.add_argument("--budget", action="append", default=[], metavar="PRESET=RUN_DIR:EVAL_DIR")
    p.add_argument("--stability", default="", help="benchmarks/quality/stability.py's JSON (docs/results/stability.json): "
                   "its 2,000-, 8,000- and 32,000-step checkpoints as budgets, seconds estimated from the demo's rate")
    p.add_argument("--seconds-per-step", type=float, default=0.0,
                   help="the training rate for --stability's estimates (default: the summary's, encoding included)")
    p.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    p.add_argument("--out", default="docs/results/demo.json")
    args = p.parse_args(argv)
    if args.make_demo_seconds <= 0:
        p.error("--make-demo-seconds must be > 0")
    try:
        summary = json.loads(Path(args.summary).read_text())
        quality = summary.get("quality") or {}
        if not quality.get("fid") or not summary.get("seconds", {}).get("train"):
            raise ValueError(f"{args.summary}: no quality step or no training seconds (an `ilct demo` that reused its run?)")
        parts = [sweep_rows(path) for path in args.sweep or [""]]
        sweep, missing_sweep = [r for rows, _, _ in parts for r in rows], [m for _, _, miss in parts for m in miss]
        winner = parts[-1][1]  # the last part decides: parts trained against other bases are not compared
        budget_rows, missing_budgets = budgets(args.budget)
        if args.stability:
            rate = args.seconds_per_step or summary["seconds"]["train"] / summary.get("train_steps", DEMO_STEPS)
            rows, missing = stability_budgets(args.stability, rate)
            budget_rows, missing_budgets = budget_rows + rows, missing_budgets + missing
    except (OSError, ValueError, KeyError) as e:  # json.JSONDecodeError is a ValueError
        p.error(str(e))
    report = {"command": "python " + " ".join(sys.argv), "make_demo_command": args.make_demo_command,
              "machine": args.machine, "preset": summary.get("preset"), "make_demo_seconds": args.make_demo_seconds,
              "train_seconds": summary["seconds"]["train"], "split": quality["split"], "n": quality["n"],
              "features": quality.get("features"), "fid": quality["fid"], "recall": quality.get("recall"),
              "autoencoder_floor_fid": quality.get("autoencoder_floor_fid"),
              "sweep": sweep, "sweep_winner": winner, "budgets": budget_rows,
              "missing": missing_sweep + missing_budgets, "notes": args.note}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {out}; missing: {', '.join(report['missing']) or 'nothing'}")


if __name__ == "__main__":
    main()
