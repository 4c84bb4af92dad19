"""Issue #16, "Must show": docs/results/demo.json, the demo's quality, its sweep and longer budgets, in one file.

It measures nothing itself; it gathers what other commands measured, each with its own command:

  --summary       runs/demo/summary.json of a timed `make demo` (`time make demo` on a fresh clone): the 1- and
                  2-step FID and recall on the test split, the autoencoder's floor, and the seconds of training;
  --make-demo-seconds  the wall time of that `make demo` (venv and install included), and --make-demo-command;
  --sweep         benchmarks/quality/demo_sweep.py's report: the configurations tried at the demo's CPU budget,
                  scored on the validation split (repeatable: parts of one sweep; the last part's winner is it);
  --budgets       benchmarks/quality/budgets.py's report: a run of each preset at 1x, 4x and 16x the demo's
                  steps, its last checkpoint scored by `ilct eval --split test --steps 1,2`, with its seconds;
  --stability     and benchmarks/quality/stability.py's JSON: its base runs' last checkpoints (8,000 steps, with
                  the presets' old s1 and beta2; seconds estimated from the timed demo's rate, as those runs
                  shared the cores).

    python benchmarks/quality/demo_report.py --summary /tmp/demo-check/runs/demo/summary.json \\
        --make-demo-seconds 716 --sweep docs/results/demo_sweep.json \\
        --budgets docs/results/budgets.json --out docs/results/demo.json

A budget whose run has no scored last checkpoint is left out, and `missing` lists what is not there yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MULTIPLES = (1, 4, 16)
DIT_DEMO_STEPS = 2000  # the demo's steps while the presets used DiT-T/2 (until 2026-11-30): the stability study's unit


def budgets(path: str) -> tuple[list[dict], list[str]]:
    """The rows of benchmarks/quality/budgets.py's report: one run per preset and budget, its final checkpoint.
    `missing` names the budgets of today's presets that no run measured."""
    if not path:
        from ilct.demo import preset_steps

        return [], [f"{p} at {k}x ({k * preset_steps()} steps)" for k in MULTIPLES for p in ("fmnist-ict", "fmnist-ilct")]
    report = json.loads(Path(path).read_text())
    unit = report.get("demo_steps", DIT_DEMO_STEPS)
    rows = [{"preset": r["preset"], "changes": dict(s.split("=", 1) for s in r.get("sets", [])),
             "multiple": r["multiple"], "steps": r["steps"], "seconds": r["seconds"], "run": r["run"], "split": report["split"],
             "n": report["n"], "parallel": report["parallel"], "features": r["curve"][-1].get("features"), "fid": r["fid"],
             "recall": r["recall"], "source": path} for r in report["rows"] if r["fid"]]
    ran = {(r["preset"], r["multiple"]) for r in report["rows"]}  # budgets.py's missing: the runs it was asked for
    presets = dict.fromkeys(r["preset"] for r in report["rows"])
    return rows, list(report["missing"]) + [f"{p} at {k}x ({k * unit} steps)" for k in MULTIPLES for p in presets
                                            if (p, k) not in ran]


# the stability study's runs as changes to today's presets (ADM-T, s1 80 and beta2 0.99 since 2026-11-30; the study
# used DiT-T/2 and s1 160)
DIT = {"model.arch": "DiT-T/2", "consistency.s1": "160"}
OLD = {**DIT, "train.beta2": "0.999"}
STABILITY_RUNS = {"ict": ("fmnist-ict", OLD), "ict-beta2": ("fmnist-ict", DIT),
                  "ilct": ("fmnist-ilct", OLD), "ilct-beta2": ("fmnist-ilct", DIT),
                  "ilct-beta2-s1": ("fmnist-ilct", {**DIT, "train.seed": "1"})}


def stability_budgets(path: str, seconds_per_step: float) -> list[dict]:
    """The last checkpoint of each of benchmarks/quality/stability.py's base runs (8,000 steps: the 4x budget),
    scored on the test split. Only the last: a checkpoint inside a run is not the model of that budget, since
    the curriculum's stages scale with the run's steps.

    Those runs shared the cores with other jobs, so their own seconds are not speeds: a row's seconds are
    estimated as steps x the timed demo's quiet training rate, and say so."""
    study = json.loads(Path(path).read_text())
    curves, features = study["curves"], f"the classifier cached where the study ran ({study.get('machine', '?')})"
    out = []
    for run, (preset, changes) in STABILITY_RUNS.items():
        points = [c for c in curves if c["run"] == run]
        row = max(points, key=lambda c: c["step"]) if points else None
        if row is None or row["step"] % DIT_DEMO_STEPS:
            continue
        out.append({"preset": preset, "changes": changes, "multiple": row["step"] // DIT_DEMO_STEPS, "steps": row["step"],
                    "seconds": round(row["step"] * seconds_per_step, 1), "seconds_estimated": True,
                    "run": f"{path}:{run}", "split": "test", "n": row["n"],
                    "features": row.get("features_fingerprint", features), "fid": row["fid"], "recall": row["recall"]})
    return out


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
    p.add_argument("--budgets", action="append", default=[],
                   help="benchmarks/quality/budgets.py's JSON (docs/results/budgets.json; repeatable: the budgets of "
                        "earlier presets too, their rows' changes saying how they differ)")
    p.add_argument("--stability", default="", help="benchmarks/quality/stability.py's JSON (docs/results/stability.json): "
                   "its base runs' last checkpoints as budgets, seconds estimated from the demo's rate")
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
        parts = [budgets(path) for path in args.budgets or [""]]
        budget_rows, missing_budgets = [r for rows, _ in parts for r in rows], parts[0][1]  # the first: today's
        if args.stability:
            rate = args.seconds_per_step or summary["seconds"]["train"] / summary.get("train_steps", DIT_DEMO_STEPS)
            budget_rows = budget_rows + stability_budgets(args.stability, rate)
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
