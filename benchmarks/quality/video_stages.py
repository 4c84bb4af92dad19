"""Issue 36's "no collapse" check: every checkpoint of one recipe's seeds, scored by video.py, in one file.

    python benchmarks/quality/video_stages.py --recipe "fmnist-video-ilct, beta2 0.99, 3,000 steps" \\
        --report seed0:600=runs/v37/V0_600.json --report seed0:1200=runs/v37/V0_1200.json ... \\
        --report seed1:600=runs/v37/V1_600.json ... --prereg runs/v37/prereg.md --out docs/results/video_stages.json

Each `--report LABEL:STEP=PATH` is one checkpoint of one training seed, scored by benchmarks/quality/video.py
under the strict scorer (ilct.metrics.clip_verdicts). The criterion is issue 36's, made exact before scoring:
a checkpoint **collapses** if, in the criterion's row (seen captions, `--nfe`, `--guidance`: 1 NFE, w = 1 by
default), its strict class or its garment presence is below the previous checkpoint's of the same seed by more
than the larger of

- the half-width of the previous checkpoint's 95 % Wilson interval, and
- the seed spread at the previous step (max - min over the seeds scored there; 0 with one seed).

The file holds every report whole, a table of the criterion's row per seed and step with each drop and what it
was allowed, and `collapsed` (which seed and step, if any). Reports that cannot be compared (another clip
classifier, data, noise or clip count), a label without a step, a step given twice, or a report without the
criterion's row are refused in one line (exit 2) and nothing is written.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402
from benchmarks.quality.video_seeds import BadInput, check_comparable, find_row, load_report  # noqa: E402

CRITERION = ("class", "garment")  # the strict measures whose drop counts as a collapse


def parse_reports(pairs: list[str]) -> dict[str, dict[int, str]]:
    """`["seed0:600=a.json", ...]` -> {"seed0": {600: "a.json"}, ...}, refusing malformed or repeated entries."""
    out: dict[str, dict[int, str]] = {}
    for pair in pairs:
        head, sep, path = pair.partition("=")
        label, colon, step = head.rpartition(":")
        if not sep or not path or not colon or not label or not step.isdigit():
            raise BadInput(f"--report must look like LABEL:STEP=PATH, got {pair!r}")
        if int(step) in out.setdefault(label, {}):
            raise BadInput(f"--report: {label} step {int(step)} is given twice")
        out[label][int(step)] = path
    if not out:
        raise BadInput("give at least one --report LABEL:STEP=PATH")
    return out


def criterion_row(report: dict, nfe: int, guidance: float, where: str) -> dict:
    """The seen-caption row at (nfe, guidance) of one report, or a one-line refusal."""
    return find_row(report, "seen", nfe, guidance, where)


def half_width(rate: dict) -> float:
    lo, hi = rate["ci95"]
    return (hi - lo) / 2


def stage_table(rows: dict[str, dict[int, dict]]) -> tuple[list[dict], list[dict]]:
    """Per seed and step, the criterion's measures, each drop from the previous step and its allowance.

    `rows[label][step]` is the criterion row of that checkpoint. Returns the table and the collapses found."""
    spread = {}
    for step in sorted({s for by_step in rows.values() for s in by_step}):
        scored = [by_step[step]["strict"] for by_step in rows.values() if step in by_step]
        spread[step] = {m: max(r[m]["acc"] for r in scored) - min(r[m]["acc"] for r in scored) for m in CRITERION}
    table, collapses = [], []
    for label, by_step in rows.items():
        prev = None
        for step in sorted(by_step):
            strict = by_step[step]["strict"]
            entry = {"seed": label, "step": step, **{m: strict[m] for m in ("class", "motion", "garment")}}
            for m in CRITERION:
                if prev is None:
                    continue
                p_step, p_strict = prev
                drop = p_strict[m]["acc"] - strict[m]["acc"]
                allowed = max(half_width(p_strict[m]), spread[p_step][m])
                entry[f"{m}_drop"], entry[f"{m}_allowed"] = round(drop, 4), round(allowed, 4)
                if drop > allowed:
                    collapses.append({"seed": label, "step": step, "measure": m, "from_step": p_step,
                                      "drop": round(drop, 4), "allowed": round(allowed, 4)})
            table.append(entry)
            prev = (step, strict)
    return table, collapses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", action="append", default=[], help="LABEL:STEP=PATH: one checkpoint's video.py report")
    p.add_argument("--nfe", type=int, default=1, help="the criterion's NFE (default 1)")
    p.add_argument("--guidance", type=float, default=1.0, help="the criterion's w (default 1: unguided)")
    p.add_argument("--recipe", default="", help="what was trained, in words")
    p.add_argument("--train-command", default="", help="how the seeds were trained (one command, SEED for the seed)")
    p.add_argument("--prereg", default="", help="a text file of what was predicted before scoring (kept whole)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        paths = parse_reports(args.report)
        reports = {f"{label}:{step}": load_report(path) for label, by in paths.items() for step, path in by.items()}
        check_comparable(reports)
        rows = {label: {step: criterion_row(reports[f"{label}:{step}"], args.nfe, args.guidance, path)
                        for step, path in by.items()} for label, by in paths.items()}
        prereg = Path(args.prereg).read_text() if args.prereg else ""
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as e:
        print(f"error: cannot read --prereg {args.prereg} ({type(e).__name__})", file=sys.stderr)
        return 2
    table, collapses = stage_table(rows)
    first = next(iter(reports.values()))
    out = {"command": "python " + shlex.join(["benchmarks/quality/video_stages.py"] + (argv or sys.argv[1:])),
           "date": datetime.date.today().isoformat(), "recipe": args.recipe, "train_command": args.train_command,
           "machine": "; ".join(sorted({str(r.get("machine")) for r in reports.values()})),
           "criterion": {"split": "seen", "nfe": args.nfe, "guidance": args.guidance, "measures": list(CRITERION),
                         "rule": "drop from the previous checkpoint of the same seed > max(half-width of its "
                                 "95 % interval, the seed spread at that step)"},
           "real": first.get("real"), "stages": table, "collapsed": collapses, "prereg": prereg,
           "reports": {key: r for key, r in reports.items()}}
    common.write_json(Path(args.out), out)
    verdict = "no collapse" if not collapses else f"{len(collapses)} collapse(s)"
    print(f"wrote {args.out}: {len(table)} checkpoints of {len(rows)} seed(s), {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
