"""Side-by-side probes: several runs' checkpoints at one step, scored by video.py, in one file.

    python benchmarks/quality/video_probes.py \\
        --probe ict=runs/v39/I0_1200.json --probe loss-group=runs/v39/GA_1200.json ... \\
        --switches loss-group="--set method.metric=cauchy --set method.adaptive_c=true" \\
        --prereg runs/v39/prereg_groups.md --out docs/results/video_switch_probe.json

Each `--probe NAME=PATH` is one checkpoint scored by benchmarks/quality/video.py; `--switches NAME=TEXT` says
what that run changed. For every probe the file tabulates the rows at `--nfe` and `--guidance` (1 NFE, w = 1 by
default) of both caption splits: the clip classifier's loose class and motion with their chance rates, the
strict scorer's class, motion and garment presence with 95 % intervals, and the frame FID. Every report is kept
whole, and every `--prereg` file verbatim. Reports that cannot be compared (another clip classifier, data,
noise or clip count), a name given twice, switches for no probe, or a report without the asked rows are refused
in one line (exit 2) and nothing is written.

`--pool NAME=PROBE,PROBE,...` counts the clips of several probes (a recipe's seeds) together: each split's strict
class, motion and presence pooled with a Wilson interval, and between every two pools (in the order given) the
difference of each pooled measure with its 95 % interval (Newcombe's hybrid score interval), so that "A above B"
can be read off the file.

`--seeds NAME=PATH` adds a pool from a file of pooled seeds (benchmarks/quality/video_seeds.py's output, such as
docs/results/video.json): its seeds' strict counts at the same rows, for comparing probes with a headline whose
reports are not at hand. It must have been scored like the probes (the same data, clip counts, noise and clip
classifier), and it comes after the `--pool` pools in the differences (a probe pool minus it).
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
from benchmarks.quality.video_seeds import (  # noqa: E402
    MEASURES, BadInput, check_comparable, find_row, labelled, load_report, pooled)
from ilct.metrics.clip_verdicts import difference  # noqa: E402

SPLITS = ("seen", "heldout")


def summary_row(report: dict, split: str, nfe: int, guidance: float, where: str) -> dict:
    """The loose and strict measures of one report's row at (split, nfe, guidance), or a one-line refusal."""
    row = find_row(report, split, nfe, guidance, where)
    strict = row["strict"]
    return {"split": split, "n": row.get("n"),
            "loose_class": row.get("class_acc"), "class_chance": row.get("class_chance"),
            "loose_motion": row.get("motion_acc"), "motion_chance": row.get("motion_chance"),
            **{m: strict[m] for m in MEASURES}, "frame_fid": row.get("frame_fid")}


def parse_pools(pairs: list[str], probes: dict[str, str]) -> dict[str, list[str]]:
    """`["ilct=ilct0,ilct1", ...]` -> {"ilct": ["ilct0", "ilct1"]}, refusing unknown or repeated probes."""
    pools = {}
    for name, members in labelled(pairs, "--pool").items():
        names = [m.strip() for m in members.split(",")]
        unknown = [m for m in names if m not in probes]
        if unknown:
            raise BadInput(f"--pool {name} names no probe: {', '.join(unknown)}")
        if len(set(names)) != len(names):
            raise BadInput(f"--pool {name} names a probe twice")
        pools[name] = names
    return pools


def seeds_pool(path: str, nfe: int, guidance: float) -> tuple[dict, dict]:
    """A video_seeds.py file as a pool (its seeds' strict counts at the rows), and the file itself."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"--seeds {path} is not a JSON file of pooled seeds ({type(e).__name__})")
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not isinstance(data.get("sources"), dict):
        raise BadInput(f"--seeds {path} is not a file of pooled seeds (benchmarks/quality/video_seeds.py: rows, sources)")
    rows = []
    for split in SPLITS:
        seeds = find_row(data, split, nfe, guidance, path).get("seeds") or {}
        if not seeds:
            raise BadInput(f"--seeds {path} has no seeds in its {split} row")
        rows.append({"split": split, **{m: pooled([s[m] for s in seeds.values()]) for m in MEASURES}})
    return {"probes": [], "seeds_file": path, "seeds": sorted(data["sources"]), "rows": rows}, data


def pool_rows(pools: dict[str, list[str]], table: list[dict], extra: dict[str, dict] | None = None) -> tuple[dict, list[dict]]:
    """Each pool's strict measures per split (its probes' clips counted together), then the `extra` pools
    (seeds_pool), and every pair's differences."""
    rows = {p["probe"]: {r["split"]: r for r in p["rows"]} for p in table}
    out = {name: {"probes": names, "rows": [{"split": split, **{m: pooled([rows[n][split][m] for n in names])
                                                                for m in MEASURES}} for split in SPLITS]}
           for name, names in pools.items()}
    out.update(extra or {})
    diffs = []
    order = list(out)
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            for ra, rb in zip(out[a]["rows"], out[b]["rows"]):
                for m in MEASURES:
                    x, y = ra[m], rb[m]
                    lo, hi = difference(x["k"], x["n"], y["k"], y["n"])
                    diffs.append({"a": a, "b": b, "split": ra["split"], "measure": m,
                                  "difference": round(x["acc"] - y["acc"], 4), "ci95": [round(lo, 4), round(hi, 4)]})
    return out, diffs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probe", action="append", default=[], help="NAME=PATH: one checkpoint's video.py report")
    p.add_argument("--switches", action="append", default=[], help="NAME=TEXT: what probe NAME changed")
    p.add_argument("--nfe", type=int, default=1, help="the rows' NFE (default 1)")
    p.add_argument("--guidance", type=float, default=1.0, help="the rows' w (default 1: unguided)")
    p.add_argument("--train-command", default="", help="how the probes were trained")
    p.add_argument("--prereg", action="append", default=[], help="a text file of what was predicted (kept whole)")
    p.add_argument("--pool", action="append", default=[], help="NAME=PROBE,PROBE,...: probes counted together")
    p.add_argument("--seeds", action="append", default=[],
                   help="NAME=PATH: a video_seeds.py file (e.g. docs/results/video.json) as one more pool")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        paths = labelled(args.probe, "--probe")
        if not paths:
            raise BadInput("give at least one --probe NAME=PATH")
        switches = labelled(args.switches, "--switches")
        unknown = sorted(set(switches) - set(paths))
        if unknown:
            raise BadInput(f"--switches names no probe: {', '.join(unknown)}")
        reports = {name: load_report(path) for name, path in paths.items()}
        pools = parse_pools(args.pool, paths)
        seeds_paths = labelled(args.seeds, "--seeds")
        taken = sorted(set(seeds_paths) & set(pools))
        if taken:
            raise BadInput(f"--seeds {taken[0]} is also a --pool name")
        extra, seeds_files = {}, {}
        for name, path in seeds_paths.items():
            extra[name], seeds_files[name] = seeds_pool(path, args.nfe, args.guidance)
        check_comparable({**reports, **seeds_files})
        table = [{"probe": name, "switches": switches.get(name, ""),
                  "rows": [summary_row(reports[name], split, args.nfe, args.guidance, paths[name])
                           for split in SPLITS]} for name in paths]
        pooled_rows, differences = pool_rows(pools, table, extra)
        prereg = {}
        for path in args.prereg:
            try:
                prereg[path] = Path(path).read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise BadInput(f"cannot read --prereg {path} ({type(e).__name__})")
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = {"command": "python " + shlex.join(["benchmarks/quality/video_probes.py"] + (argv or sys.argv[1:])),
           "date": datetime.date.today().isoformat(), "train_command": args.train_command,
           "machine": "; ".join(sorted({str(r.get("machine")) for r in reports.values()})),
           "rows_at": {"nfe": args.nfe, "guidance": args.guidance}, "real": next(iter(reports.values())).get("real"),
           "probes": table, "pools": pooled_rows, "differences": differences, "prereg": prereg, "reports": reports}
    common.write_json(Path(args.out), out)
    print(f"wrote {args.out}: {len(table)} probes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
