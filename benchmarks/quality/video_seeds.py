"""Issue 36's headline: one recipe's video reports (benchmarks/quality/video.py), one per training seed, in one file.

    python benchmarks/quality/video_seeds.py --recipe "MeanFlow + Cauchy + OT, guidance trained in" \\
        --report seed0=runs/v36b/C0_1750.json --report seed1=runs/v36/B_1750.json --out docs/results/video.json

For every (split, NFE, w) row that all reports share, under the strict scorer (ilct.metrics.clip_verdicts):

- each seed's strict class, motion and garment presence with their 95 % intervals;
- the seeds pooled (the clips of every seed counted together, a Wilson interval) and the seed spread (max - min);
- beside them the real clips and the frozen real clips of the same split (the first report's `real`);
- the strict class of every garment, pooled over the seeds.

`bars` checks issue 36's must-show (1 NFE, seen captions: class >= 0.70 and motion >= 0.90; held-out captions:
class >= 0.60) on every seed and pooled; a bar counts as reached only where every seed passes at one w.
Reports of different data, clip classifiers, clip counts or sampling noise are refused (one line, exit 2):
their numbers could not be pooled. `--train-command LABEL=CMD` records how each seed was trained.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402
from ilct.metrics.clip_verdicts import wilson  # noqa: E402

# issue 36's must-show: (split, NFE, measure, at least)
BARS = (("seen", 1, "class", 0.70), ("seen", 1, "motion", 0.90), ("heldout", 1, "class", 0.60))
MEASURES = ("class", "motion", "garment")
# what every report of one headline must share
SAME = ("data", "per_prompt", "seed", "strict_reference")


class BadInput(Exception):
    """A report that cannot be combined: one line for the user."""


def labelled(pairs: list[str], what: str) -> dict[str, str]:
    """`["seed0=a.json", ...]` -> {"seed0": "a.json", ...}, refusing a missing `=` or a repeated label."""
    out: dict[str, str] = {}
    for pair in pairs:
        label, sep, value = pair.partition("=")
        if not sep or not label or not value:
            raise BadInput(f"{what} must look like LABEL=VALUE, got {pair!r}")
        if label in out:
            raise BadInput(f"{what}: the label {label!r} is given twice")
        out[label] = value
    return out


def load_report(path: str) -> dict:
    """One benchmarks/quality/video.py report, checked to carry strict rows."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"no report at {path}")
    try:
        report = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"{path} is not a JSON report ({type(e).__name__})")
    rows = report.get("rows") if isinstance(report, dict) else None
    if not rows or not all(isinstance(r, dict) and "strict" in r for r in rows) or "real" not in report:
        raise BadInput(f"{path} is not a strict-scored video report (no rows with 'strict', or no 'real')")
    return report


def check_comparable(reports: dict[str, dict]) -> None:
    """Every report must share the data, the clip counts, the noise and the clip classifier."""
    first_label, first = next(iter(reports.items()))
    for label, r in reports.items():
        for key in SAME:
            if r.get(key) != first.get(key):
                raise BadInput(f"{label} and {first_label} differ in {key!r}: they cannot be pooled")
        finger = (r.get("clip_classifier") or {}).get("fingerprint")
        if finger != (first.get("clip_classifier") or {}).get("fingerprint"):
            raise BadInput(f"{label} and {first_label} were scored by different clip classifiers")


def find_row(report: dict, split: str, nfe: int, guidance: float, where: str) -> dict:
    """The row of one report at (split, nfe, guidance), or a one-line refusal."""
    for row in report["rows"]:
        if row["split"] == split and int(row["nfe"]) == nfe and float(row["guidance"]) == guidance:
            return row
    raise BadInput(f"{where} has no {split} row at {nfe} NFE and w = {guidance:g}")


def _key(row: dict) -> tuple[str, int, float]:
    return (row["split"], int(row["nfe"]), float(row["guidance"]))


def pooled(rates: list[dict]) -> dict:
    """Successes of several seeds' rates ({"k", "n"}) counted together, with their Wilson interval."""
    k, n = sum(r["k"] for r in rates), sum(r["n"] for r in rates)
    lo, hi = wilson(k, n)
    return {"acc": k / n if n else float("nan"), "ci95": [round(lo, 4), round(hi, 4)], "k": k, "n": n}


def combine_row(rows: dict[str, dict], real: dict) -> dict:
    """One (split, NFE, w): each seed's strict measures, pooled, the spread, the real and frozen controls."""
    some = next(iter(rows.values()))
    out = {"split": some["split"], "nfe": int(some["nfe"]), "guidance": float(some["guidance"]), "seeds": {}}
    for label, row in rows.items():
        out["seeds"][label] = {m: row["strict"][m] for m in MEASURES}
    for m in MEASURES:
        rates = [row["strict"][m] for row in rows.values()]
        accs = [r["acc"] for r in rates]
        out[m] = {"pooled": pooled(rates), "spread": round(max(accs) - min(accs), 4)}
    ctrl = real.get(some["split"], {})
    out["real"] = {m: ctrl.get("strict", {}).get(m) for m in MEASURES}
    out["frozen_real"] = {m: ctrl.get("frozen_strict", {}).get(m) for m in MEASURES}
    return out


def per_class(rows: dict[str, dict]) -> dict[str, dict]:
    """The strict class accuracy of every garment at one (split, NFE, w), pooled over the seeds."""
    classes = sorted({c for row in rows.values() for c in row["strict"].get("per_class", {})}, key=int)
    return {c: pooled([row["strict"]["per_class"][c] for row in rows.values() if c in row["strict"]["per_class"]])
            for c in classes}


def check_bars(table: list[dict]) -> list[dict]:
    """Each bar of BARS: the best w's pooled value, whether every seed passes at one w, and the worst seed there."""
    verdicts = []
    for split, nfe, measure, least in BARS:
        rows = [r for r in table if r["split"] == split and r["nfe"] == nfe]
        if not rows:
            verdicts.append({"split": split, "nfe": nfe, "measure": measure, "at_least": least, "scored": False})
            continue
        best = max(rows, key=lambda r: min(s[measure]["acc"] for s in r["seeds"].values()))
        worst = min(s[measure]["acc"] for s in best["seeds"].values())
        verdicts.append({"split": split, "nfe": nfe, "measure": measure, "at_least": least, "scored": True,
                         "best_guidance": best["guidance"], "pooled": best[measure]["pooled"]["acc"],
                         "worst_seed": worst, "reached": worst >= least})
    return verdicts


def combine(reports: dict[str, dict]) -> dict:
    """The headline of several seeds' reports: the shared rows combined, per-class tables and the bars."""
    check_comparable(reports)
    keyed = {label: {_key(r): r for r in rep["rows"]} for label, rep in reports.items()}
    shared = sorted(set.intersection(*(set(k) for k in keyed.values())))
    if not shared:
        raise BadInput("the reports share no (split, NFE, w) row")
    real = next(iter(reports.values()))["real"]
    table, classes = [], {}
    for key in shared:
        rows = {label: keyed[label][key] for label in reports}
        table.append(combine_row(rows, real))
        classes[f"{key[0]} nfe{key[1]} w{key[2]:g}"] = per_class(rows)
    return {"rows": table, "per_class": classes, "bars": check_bars(table)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", action="append", default=[], help="LABEL=PATH: one seed's video.py report (repeatable)")
    p.add_argument("--train-command", action="append", default=[], help="LABEL=COMMAND: how that seed was trained")
    p.add_argument("--recipe", default="", help="what was trained, in words")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        paths = labelled(args.report, "--report")
        if len(paths) < 1:
            raise BadInput("give at least one --report LABEL=PATH")
        trained = labelled(args.train_command, "--train-command")
        if set(trained) - set(paths):
            raise BadInput(f"--train-command for unknown label(s): {', '.join(sorted(set(trained) - set(paths)))}")
        reports = {label: load_report(path) for label, path in paths.items()}
        result = combine(reports)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    head = {"command": "python " + shlex.join(["benchmarks/quality/video_seeds.py"] + (argv or sys.argv[1:])),
            "date": datetime.date.today().isoformat(), "recipe": args.recipe,
            "sources": {label: {"report": paths[label], "command": r.get("command"), "machine": r.get("machine"),
                                "date": r.get("date"), "sampler": r.get("sampler"),
                                "train_command": trained.get(label)} for label, r in reports.items()}}
    first = next(iter(reports.values()))
    head["machine"] = "; ".join(sorted({str(r.get("machine")) for r in reports.values()}))  # where they were scored
    head.update({k: first.get(k) for k in SAME + ("clip_classifier", "features")})
    common.write_json(Path(args.out), {**head, **result})
    print(f"wrote {args.out}: {len(result['rows'])} rows from {len(reports)} seed(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
