"""Re-score kept clips (`video.py --clips-out`, e.g. docs/results/video_clips_1nfe.npz) with this machine's strict scorer.

    python benchmarks/quality/rescore_clips.py --clips docs/results/video_clips_1nfe.npz --out runs/rescore.json

The npz holds generated clips with their captions and the verdicts of the scorer that kept them. This script
judges the same clips again (ilct.metrics.clip_verdicts, the cached clip classifier and its real-frame
reference) and reports, per caption split, both scorers' rates (class, motion, garment present, with 95 %
intervals) and how often their per-clip verdicts agree. Two clip classifiers trained from the same recipe on
different machines are not bitwise equal (their fingerprints differ); this measures what that changes on
generated clips, which lie off the real-clip manifold where two classifiers disagree most.

A missing or damaged npz, or one without the keys `video.py --clips-out` writes, is refused in one line
(exit 2) before anything is written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import zipfile
from pathlib import Path

import numpy as np

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402
from ilct.metrics.clip_verdicts import _rate, clip_verdicts  # noqa: E402

VERDICTS = ("class_ok", "motion_ok", "garment")
KEYS = ("clips", "split", "want_class", "want_motion", *VERDICTS)


class BadInput(Exception):
    pass


def load_kept(path: str) -> dict[str, np.ndarray]:
    """The npz's arrays, checked to be what `video.py --clips-out` writes."""
    try:
        with np.load(path, allow_pickle=False) as f:
            kept = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise BadInput(f"{path} is not a readable npz of kept clips ({type(e).__name__})")
    missing = [k for k in KEYS if k not in kept]
    if missing:
        raise BadInput(f"{path} lacks {', '.join(missing)}: not written by video.py --clips-out")
    clips, n = kept["clips"], len(kept["clips"])
    if clips.dtype != np.uint8 or clips.ndim != 5 or not n:
        raise BadInput(f"{path}: clips must be uint8 (N, T, H, W, C), got {clips.dtype} {clips.shape}")
    if any(len(kept[k]) != n for k in KEYS):
        raise BadInput(f"{path}: its arrays do not all hold {n} clips")
    return kept


def compare(kept: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> list[dict]:
    """Per split: the kept and the new verdicts' rates, and their per-clip agreement."""
    rows = []
    for split in sorted(set(kept["split"].tolist())):
        at = kept["split"] == split
        row = {"split": split, "clips": int(at.sum())}
        for v in VERDICTS:
            old, now = kept[v][at].astype(bool), new[v][at].astype(bool)
            row[v] = {"kept": _rate(old), "rescored": _rate(now), "agree": round(float((old == now).mean()), 4),
                      "kept_only": int((old & ~now).sum()), "rescored_only": int((~old & now).sum())}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", required=True, help="npz written by video.py --clips-out")
    p.add_argument("--out", required=True, help="JSON report")
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX folder")
    p.add_argument("--cache", default="", help="ilct cache folder (default: the ilct cache)")
    p.add_argument("--tiny", action="store_true", help="the tests' classifier of a few steps (video.py --tiny's)")
    args = p.parse_args(argv)
    try:
        kept = load_kept(args.clips)
        if Path(args.out).resolve() == Path(args.clips).resolve():
            raise BadInput("--out would overwrite --clips")
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from ilct.latents import default_cache_dir
    from ilct.metrics.clip_verdicts import Reference
    from ilct.metrics.clips import ClipData, load_clip_classifier

    clips = kept["clips"]
    data = ClipData(resolution=clips.shape[2], frames=clips.shape[1])
    cache = Path(args.cache) if args.cache else default_cache_dir()
    from benchmarks.quality.video import TINY_CLASSIFIER, TINY_REFERENCE

    scorer = load_clip_classifier(cache, args.root, data, progress=False, **(TINY_CLASSIFIER if args.tiny else {}))
    reference = Reference.from_training(scorer, args.root, data, *([TINY_REFERENCE] if args.tiny else []))
    new = clip_verdicts(clips, kept["want_class"], kept["want_motion"], scorer, reference)
    report = {"command": "python " + shlex.join(["benchmarks/quality/rescore_clips.py"] + (argv or sys.argv[1:])), "date": datetime.date.today().isoformat(), "machine": common.machine(),
              "clips_file": args.clips, "nfe": kept.get("nfe", np.array(-1)).item(),
              "kept_by": str(kept["clip_classifier"]) if "clip_classifier" in kept else "not recorded in the npz",
              "rescored_by": scorer.fingerprint(), "strict_reference": {"clips": reference.clips, "k": reference.k},
              "rows": compare(kept, new), **({"tiny": True} if args.tiny else {})}
    common.write_json(Path(args.out), report)
    for row in report["rows"]:
        print(json.dumps({"split": row["split"], **{v: (row[v]["kept"]["acc"], row[v]["rescored"]["acc"], row[v]["agree"])
                                                    for v in VERDICTS}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
