"""Validate the emoji strict scorer (ilct.metrics.emoji_verdicts) on controls, before any model is scored.

The emoji kept out of the classifier and the reference (every fifth of a seeded permutation, with a group),
each asked for itself, as they are (`real`), through TAEF2 (`autoencoded`: the ceiling a latent model can
reach) and broken: box-blurred 8x (`blur8`), the training emoji's mean image (`mean`), random colour blobs
on white (`blobs`), uniform noise (`noise`), a white canvas (`white`), and one autoencoded emoji for every
prompt (`one`). For each presence K, the share present, of the asked group and of the asked emoji.

Rule for K (written before any model was scored, runs/v36c/prereg.md of the session): the smallest K in
{3, 5, 10} for which `autoencoded` is present >= 0.90 and every broken control is present <= 0.10.
`mean` and `white` are of the kinds the classifier's "none" class trained on (`negatives`); `blobs`, `noise`
and `blur8` are not (its blur is 5-9 pixels at 32x32, its fields smooth 4x4 noise).

    python benchmarks/quality/emoji_scorer_controls.py --autoencoder ../shared/weights/taef2 \\
        --out docs/results/emoji_scorer_controls.json
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402
from benchmarks.quality.emoji_strict import blobs, roundtrip  # noqa: E402


def controls(data, ae, seed: int) -> dict[str, np.ndarray]:
    from ilct.data.images import to_float, to_uint8

    ko = np.flatnonzero(data.kept_out & (data.groups >= 0))
    raw = data.images[ko]
    n, side = len(raw), raw.shape[1]
    rec = roundtrip(ae, raw)
    blur = to_uint8(F.interpolate(F.avg_pool2d(to_float(raw), 8), scale_factor=8, mode="bilinear"))
    mean = data.images[~data.kept_out].mean(0).round().astype(np.uint8)
    rng = np.random.default_rng(seed)
    return {"real": raw, "autoencoded": rec, "blur8": blur, "mean": np.repeat(mean[None], n, 0),
            "blobs": blobs(n, side, seed), "noise": rng.integers(0, 256, raw.shape).astype(np.uint8),
            "white": np.full_like(raw, 255), "one": np.repeat(rec[:1], n, 0)}


def main() -> None:
    from ilct.autoencoders import load_autoencoder
    from ilct.metrics.emoji_verdicts import EmojiSet, Judge, image_verdicts, load_emoji_classifier

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", required=True, help="the TAEF2 weights folder")
    p.add_argument("--ks", default="3,5,10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "ilct"))
    p.add_argument("--out", required=True)
    args = p.parse_args()
    data = EmojiSet.load()
    scorer = load_emoji_classifier(Path(args.cache_dir), data)
    ae = load_autoencoder("taesd", args.autoencoder).eval()
    sets = controls(data, ae, args.seed)
    ko = np.flatnonzero(data.kept_out & (data.groups >= 0))
    bases = data.bases()
    rows = []
    for k in [int(x) for x in args.ks.split(",")]:
        judge = Judge.of(data, scorer, k)
        for name, x in sets.items():
            v = image_verdicts(x, data.groups[ko], [bases[i] for i in ko], judge)
            rows.append({"k": k, "control": name, "n": len(x), **{key: round(float(v[f"{key}_ok" if key != "present" else key].mean()), 4)
                                                                   for key in ("present", "group", "emoji")}})
            print(rows[-1], flush=True)
    common.write_json(Path(args.out), {"command": "python " + " ".join(sys.argv), "machine": common.machine(),
                                       "date": datetime.date.today().isoformat(), "classifier": scorer.meta,
                                       "torch_threads": torch.get_num_threads(), "rows": rows})


if __name__ == "__main__":
    main()
