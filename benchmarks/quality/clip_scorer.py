"""The clip scorer validated on controls before any model is scored with it (issue 36, item 1).

Scores real clips and clips that no user wants, with the old scorer (ilct.metrics.clips.score_clips: the clip
classifier's class and motion heads on any clip) and the strict one (ilct.metrics.clip_verdicts: a garment must
be present, the class judged per frame, motion only with a garment and a net shift along the asked direction),
each against what the clip's caption asked:

    real       real clips of test garments, their own captions (what a perfect generator scores)
    shuffled   the same clips, asked for another clip's (class, motion): a generator that ignores the caption
    frozen     each real clip's first frame held for every frame (a model that does not move)
    blur       each real frame blurred (Gaussian, radius --blur): a blurry but right garment
    blur_light the same at half that radius
    blob       a Gaussian blob of the garment's size on the real clip's path (any moving blob)
    filament   a bright diagonal line segment on the real clip's path (the collapsed checkpoints' output)
    noise      uniform noise
    autoencoded  each real frame through the built-in autoencoder (--autoencoder DIR, encoded and decoded): the
               best a generator in its latent space can show (only with --autoencoder)

for the seen pairs (split `test`) and the held-out pairs (split `heldout`), --n clips each. The reference of
the presence test is built from real clips of the *train* garments (every direction), never scored. Every rate
has its 95 % Wilson interval.

    python benchmarks/quality/clip_scorer.py --out docs/results/clip_scorer_controls.json
    python benchmarks/quality/clip_scorer.py --tiny --data-dir DIR --cache-dir DIR --out x.json   # seconds
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402

CONTROLS = ("real", "shuffled", "frozen", "blur", "blur_light", "blob", "filament", "noise")


def sprite_on_path(data, n: int, sprite: np.ndarray) -> np.ndarray:
    """(n, T, R, R, 1) uint8: `sprite` (S x S) drawn at object 0's positions of the first n clips of `data`."""
    s, r, t = data.size, data.resolution, data.frames
    out = np.zeros((n, t, r, r), np.uint8)
    for i in range(n):
        for f, (x, y) in enumerate(data.positions(i, 0)):
            region = out[i, f, y : y + s, x : x + s]
            np.maximum(region, sprite, out=region)
    return out[..., None]


def blob(size: int) -> np.ndarray:
    g = np.arange(size) - (size - 1) / 2
    d2 = g[:, None] ** 2 + g[None, :] ** 2
    return (255 * np.exp(-d2 / (2 * (size / 4) ** 2))).astype(np.uint8)


def filament(size: int) -> np.ndarray:
    out = np.zeros((size, size), np.uint8)
    k = np.arange(size)
    out[k, k] = 255
    out[k[1:], k[:-1]] = 160
    return out


def blurred(clips: np.ndarray, radius: float) -> np.ndarray:
    from PIL import Image, ImageFilter

    n, t = clips.shape[:2]
    frames = [np.asarray(Image.fromarray(f[..., 0]).filter(ImageFilter.GaussianBlur(radius)))
              for f in clips.reshape(n * t, *clips.shape[2:])]
    return np.stack(frames).reshape(clips.shape)


@torch.no_grad()
def autoencoded(clips: np.ndarray, autoencoder, batch: int = 512) -> np.ndarray:
    """Every frame of uint8 (N, T, H, W, 1) clips encoded and decoded by a frame autoencoder."""
    n, t = clips.shape[:2]
    frames = torch.from_numpy(clips.reshape(n * t, *clips.shape[2:])).permute(0, 3, 1, 2).float() / 127.5 - 1
    out = [autoencoder.decode(autoencoder.encode(frames[s : s + batch])) for s in range(0, len(frames), batch)]
    x = ((torch.cat(out).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return x.reshape(clips.shape)


def controls(data, n: int, seed: int, blur: float) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each control's (clips, asked classes, asked motions)."""
    rng = np.random.default_rng(seed)
    clips, cls, mot = data.clips_at(np.arange(n)), data.labels[:n], data.motions[:n]
    perm = rng.permutation(n)
    while n > 1 and (perm == np.arange(n)).any():  # a derangement: no clip keeps its own caption
        perm = rng.permutation(n)
    noise = rng.integers(0, 256, clips.shape, dtype=np.uint8)
    return {"real": (clips, cls, mot), "shuffled": (clips, cls[perm], mot[perm]),
            "frozen": (np.repeat(clips[:, :1], clips.shape[1], axis=1), cls, mot),
            "blur": (blurred(clips, blur), cls, mot), "blur_light": (blurred(clips, blur / 2), cls, mot),
            "blob": (sprite_on_path(data, n, blob(data.size)), cls, mot),
            "filament": (sprite_on_path(data, n, filament(data.size)), cls, mot), "noise": (noise, cls, mot)}


def main(argv: list[str] | None = None) -> dict:
    from ilct.autoencoders import load_autoencoder
    from ilct.data.moving_fmnist import load_moving_fmnist
    from ilct.latents.directory import default_cache_dir
    from ilct.metrics.clip_verdicts import Reference, strict_scores, wilson
    from ilct.metrics.clips import ClipData, load_clip_classifier, score_clips
    from ilct.metrics.features import load_fashion_features

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--cache-dir", default=None, help="where the clip classifier is cached (default $ILCT_CACHE)")
    p.add_argument("--n", type=int, default=1000, help="clips per control and split")
    p.add_argument("--reference", type=int, default=2000, help="real train-garment clips of the presence test")
    p.add_argument("--blur", type=float, default=1.5, help="Gaussian blur radius of the blur control (pixels)")
    p.add_argument("--autoencoder", help="a built-in autoencoder's folder (ilct autoencoder): adds the autoencoded row")
    p.add_argument("--controls", default=",".join(CONTROLS),
                   help=f"comma-separated, of {', '.join(CONTROLS)} (autoencoded comes with --autoencoder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON report")
    p.add_argument("--tiny", action="store_true", help="seconds: 16 clips, a clip classifier of a few steps")
    args = p.parse_args(argv)
    chosen = [c for c in args.controls.split(",") if c]
    if not chosen or set(chosen) - set(CONTROLS):
        p.error(f"--controls {args.controls}: choose from {', '.join(CONTROLS)}")
    t0 = time.perf_counter()
    options = {"steps": 3, "batch_size": 16, "eval_clips": 8} if args.tiny else {}
    if args.tiny:
        args.n, args.reference = 16, 32
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    autoencoder = load_autoencoder("builtin", args.autoencoder).eval() if args.autoencoder else None
    data = ClipData()
    scorer = load_clip_classifier(cache, args.data_dir, data, progress=False, **options)
    features = load_fashion_features()
    reference = Reference.from_training(scorer, args.data_dir, data, args.reference, args.seed)
    report = {"command": "python " + " ".join(["benchmarks/quality/clip_scorer.py",
                                               *(argv if argv is not None else sys.argv[1:])]),
              "machine": common.machine(), "date": datetime.date.today().isoformat(),
              "clip_classifier": {k: scorer.meta.get(k) for k in ("fingerprint", "test_accuracy", "heldout_accuracy")},
              "reference": {"clips": reference.clips, "frames": len(reference.features), "k": reference.k,
                            "garments": "Fashion-MNIST train (every direction), never scored"},
              "autoencoder": ({"path": args.autoencoder, "fingerprint": autoencoder.fingerprint()}
                              if autoencoder is not None else None),
              "n": args.n, "blur_radius": args.blur, "controls": chosen, "rows": []}
    for split in ("test", "heldout"):
        real = load_moving_fmnist(args.data_dir, split, data.resolution, data.frames, data.frame_stride,
                                  count=args.n)
        every = controls(real, args.n, args.seed, args.blur)
        rows = {k: every[k] for k in chosen}
        if autoencoder is not None:
            clips, cls, mot = every["real"]
            rows["autoencoded"] = (autoencoded(clips, autoencoder), cls, mot)
        for name, (clips, cls, mot) in rows.items():
            old = score_clips(clips, cls, mot, scorer, features)
            n = len(clips)
            row = {"split": "seen" if split == "test" else "heldout", "control": name,
                   "old": {"class": {"acc": old["class_acc"], "ci95": [round(x, 4) for x in
                                                                       wilson(round(old["class_acc"] * n), n)]},
                           "motion": {"acc": old["motion_acc"], "ci95": [round(x, 4) for x in
                                                                         wilson(round(old["motion_acc"] * n), n)]},
                           "temporal_consistency": old["temporal_consistency"]},
                   "strict": strict_scores(clips, cls, mot, scorer, reference)}
            report["rows"].append(row)
            s = row["strict"]
            print(f"{row['split']:8s} {name:9s} old class {old['class_acc']:.3f} motion {old['motion_acc']:.3f} | "
                  f"strict class {s['class']['acc']:.3f} motion {s['motion']['acc']:.3f} "
                  f"garment {s['garment']['acc']:.3f}", flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if args.out:
        common.write_json(Path(args.out), report)
    return report


if __name__ == "__main__":
    main()
