"""Issue #37, part 2: the FID scale's anchors, measured with the protocol of `ilct eval --split test`.

Every row is scored as `ilct eval --split test` scores samples: features of the Fashion-MNIST classifier shipped
with ilct, FID against all 10,000 test images, precision/recall against n of them (seeded), n images per draw.
Each row is drawn with several seeds, so it also gives the spread of the estimator at that n:

  - data vs data: n random training images (the anchor at the bottom: what a perfect generator scores, and the
    seed spread of the estimator for it);
  - autoencoder floors: n random training images encoded and decoded by the built-in autoencoder (--autoencoder,
    e.g. the demo's: `ilct autoencoder --out runs/ae`, 1,000 steps) and by TAEF2 (--taef2; the images rendered as
    64x64 RGB, as `ilct encode --resolution 64 --rgb` renders them for training): the best a latent model in that
    space can do;
  - broken controls: the same training images with their pixels shuffled (each image's own pixels, so the
    intensities stay), and uniform noise: the top of the scale;
  - with --run, a trained run's 1-step samples drawn with each seed: the spread of a model's FID at that n
    (its training fixed; the spread between trainings is larger).

A draw of n with seed s takes the first n of numpy's default_rng(s).permutation of the training images; a
reconstruction is a function of the image only (the mean of the built-in autoencoder's posterior; TAEF2 has
none), so each image is encoded once, however many draws hold it. What docs/results/fid_anchors.json holds
(54 min on 2 CPU cores; TAEF2's encoder, 0.07 s an image there, is most of it, hence its fewer large draws):

    python benchmarks/quality/fid_anchors.py --autoencoder runs/fid-anchors-demo/autoencoder \\
        --taef2 ../shared/weights/taef2 --run runs/fid-anchors-demo/run --taef2-draws 2000:0,1,2,3,4 10000:0,1 \\
        --cache-dir runs/fid-anchors-cache --out docs/results/fid_anchors.json

(`ilct autoencoder --out runs/fid-anchors-ae`, copied to runs/fid-anchors-demo/autoencoder, and
`ilct demo --out runs/fid-anchors-demo` made the autoencoder and the run: docs/evaluation.md.)

`--tiny` is a seconds-long run for the tests (n = 16 and 32, two seeds).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ilct.autoencoders import load_autoencoder
from ilct.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist
from ilct.data.images import ResizedImages, to_uint8
from ilct.generate import generate
from ilct.latents import default_cache_dir
from ilct.metrics.evaluate import make_extractor, reference_features, scores
from ilct.runs.opened import open_run

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402

BATCH = 500  # images per encode/decode batch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"{gpu}, torch {torch.__version__}, Python {platform.python_version()}")


def draw(n_train: int, n: int, seed: int) -> np.ndarray:
    """The training images of draw `seed`: the first n of a seeded permutation (so a smaller draw of a seed is the
    start of a larger one, and the images a slow autoencoder must encode are fewer)."""
    return np.random.default_rng(seed).permutation(n_train)[:n]


def parse_draws(specs: list[str], ns: list[int], seeds: list[int]) -> dict[int, list[int]]:
    """`N:S,S,...` items (seeds per n) or, without them, every n with `seeds`."""
    if not specs:
        return {n: seeds for n in ns}
    out = {}
    for spec in specs:
        n, _, ss = spec.partition(":")
        out[int(n)] = [int(v) for v in ss.split(",")]
    return out


def summary(values: list[float]) -> dict:
    """mean, sample standard deviation (ddof 1), min, max and the values themselves."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "min": float(a.min()),
            "max": float(a.max()), "values": [float(v) for v in a]}


def reconstruction_features(extract, ae, source, indices: np.ndarray, label: str) -> dict[int, np.ndarray]:
    """Features of the autoencoder's reconstruction of each image in `indices` (each encoded once)."""
    out, t0 = {}, time.time()
    for s in range(0, len(indices), BATCH):
        idx = indices[s : s + BATCH]
        with torch.inference_mode():
            recon = to_uint8(ae.decode(ae.encode(source.batch_indices(idx))))
        for i, f in zip(idx, extract(recon)):
            out[int(i)] = f
        done = min(s + BATCH, len(indices))
        print(f"  {label}: {done}/{len(indices)} reconstructions ({time.time() - t0:.0f} s)", flush=True)
    return out


def shuffled_pixels(images: np.ndarray, seed: int) -> np.ndarray:
    """Each image's pixels in a random order of its own (its intensities kept, its structure gone)."""
    rng = np.random.default_rng(seed)
    flat = images.reshape(len(images), -1)
    return np.take_along_axis(flat, rng.permuted(np.tile(np.arange(flat.shape[1]), (len(flat), 1)), axis=1),
                              axis=1).reshape(images.shape)


def score_row(name: str, what: str, real: np.ndarray, n: int, seeds: list[int], features_of) -> dict:
    """One anchor: `features_of(seed)` gives the features of draw `seed`; scored as `ilct eval` scores samples."""
    t0 = time.time()
    per_seed = [scores(real, features_of(s), n, s) for s in seeds]
    row = {"name": name, "what": what, "n": n, "seeds": seeds,
           **{k: summary([m[k] for m in per_seed]) for k in ("fid", "precision", "recall")},
           "seconds": round(time.time() - t0, 1)}
    f = row["fid"]
    print(f"{name:>34} n={n:>6}: FID {f['mean']:10.2f} +- {f['std']:7.2f} (min {f['min']:.2f}, max {f['max']:.2f}), "
          f"recall {row['recall']['mean']:.3f} +- {row['recall']['std']:.3f}  [{row['seconds']:.0f} s]", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", required=True, help="a built-in autoencoder directory (ilct autoencoder --out)")
    p.add_argument("--taef2", default="", help="a TAESD-family directory (TAEF2): its floor too")
    p.add_argument("--run", default="", help="a trained fmnist run: the spread of its 1-step FID over the seeds")
    p.add_argument("--data-dir", default=DEFAULT_ROOT)
    p.add_argument("--n", default="2000,10000", help="images per draw, comma-separated")
    p.add_argument("--seeds", default="0,1,2,3,4", help="draw seeds, comma-separated")
    p.add_argument("--ae-seeds", default="", help="seeds of the autoencoder rows (default: --seeds)")
    p.add_argument("--taef2-draws", nargs="*", default=[], metavar="N:SEEDS",
                   help="TAEF2's draws, e.g. 2000:0,1,2 10000:0,1 (its encoder is slow on a CPU; default: as the others)")
    p.add_argument("--cache-dir", default="", help="reference-feature cache (default: $ILCT_CACHE)")
    p.add_argument("--tiny", action="store_true", help="n = 16,32, seeds 0,1, on the CPU: for the tests")
    p.add_argument("--out", default="docs/results/fid_anchors.json")
    args = p.parse_args()
    if args.tiny:
        args.n, args.seeds = "16,32", "0,1"
    ns = [int(v) for v in args.n.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    ae_seeds = [int(v) for v in args.ae_seeds.split(",")] if args.ae_seeds else seeds
    taef2_draws = parse_draws(args.taef2_draws, ns, ae_seeds)
    if any(len(set(s)) < 2 for s in [seeds, ae_seeds, *taef2_draws.values()]) or min(ns + list(taef2_draws)) < 2:
        raise SystemExit("fid_anchors: a spread needs at least two distinct seeds and n >= 2")

    t0 = time.time()
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    extract = make_extractor("fmnist")
    train = load_fashion_mnist(args.data_dir, "train")
    test = load_fashion_mnist(args.data_dir, "test")
    if max(ns) > len(train):
        raise SystemExit(f"fid_anchors: n = {max(ns)} is more than the {len(train)} training images")
    real = reference_features(extract, test, cache, progress=False)  # the reference of `ilct eval --split test`
    train_feats = reference_features(extract, train, cache, progress=False)
    print(f"features: {extract.fingerprint()}; reference: {test.name} ({len(real)} images); "
          f"{len(train_feats)} training images [{time.time() - t0:.0f} s]", flush=True)

    rows: list[dict] = []
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine_line(),
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "features": extract.name,
        "features_fingerprint": extract.fingerprint(),
        "classifier_test_accuracy": extract.meta["test_accuracy"],
        "protocol": "ilct eval --split test: FID against all test images, precision/recall (k = 3) against n of them "
                    "chosen with the draw's seed; std is the sample standard deviation over the seeds (ddof 1)",
        "reference": f"{test.name} ({len(real)} images)",
        "data": f"{train.name} ({len(train)} images); a draw of n with seed s: the first n of "
                "numpy.random.default_rng(s).permutation",
        "autoencoders": {},
        "model": None,
        "complete": False,
        "wall_seconds": None,
        "rows": rows,
    }

    def add(row: dict) -> None:  # the report is rewritten after every row: a stopped run keeps what it measured
        rows.append(row)
        result["wall_seconds"] = round(time.time() - t0, 1)
        common.write_json(Path(args.out), result)

    for n in ns:
        add(score_row("data vs data", "n random training images", real, n, seeds,
                      lambda s, n=n: train_feats[draw(len(train), n, s)]))

    images = train.images
    for n in ns:
        add(score_row("shuffled pixels", "n random training images, each one's pixels shuffled", real, n, seeds,
                      lambda s, n=n: extract(shuffled_pixels(images[draw(len(train), n, s)], s))))
        add(score_row("uniform noise", "n images of uniform uint8 noise", real, n, seeds,
                      lambda s, n=n: extract(np.random.default_rng(s).integers(0, 256, (n, *images.shape[1:]),
                                                                               dtype=np.uint8))))

    if args.run:
        run = open_run(args.run, device="cpu" if args.tiny else "auto")
        result["model"] = {"run": args.run, "checkpoint": str(run.checkpoint), "step": run.step,
                           "arch": run.cfg.model.arch}

        def samples(s: int, n: int) -> np.ndarray:
            with torch.inference_mode():
                return extract(generate(run.model, run.autoencoder, run.stats, run.cfg, n, 1, seed=s))

        for n in ns:
            add(score_row("trained run, 1 step", f"n 1-step samples of {args.run} (step {run.step}), sampling seed s",
                          real, n, seeds, lambda s, n=n: samples(s, n)))

    autoencoders = [("builtin autoencoder floor", "builtin", args.autoencoder, train, {n: ae_seeds for n in ns})]
    if args.taef2:  # rendered as `ilct encode --resolution 64 --rgb` renders them; the features turn them gray
        autoencoders.append(("TAEF2 floor", "taesd", args.taef2, ResizedImages(train, 64, rgb=True), taef2_draws))
    for name, kind, path, source, draws in autoencoders:
        needed = np.unique(np.concatenate([draw(len(train), n, s) for n, ss in draws.items() for s in ss]))
        ae = load_autoencoder(kind, path)
        started = time.time()
        feats = reconstruction_features(extract, ae, source, needed, name)
        result["autoencoders"][name] = {"autoencoder": f"{kind}:{path}", "images_encoded": len(needed),
                                        "encode_seconds": round(time.time() - started, 1)}
        for n, ss in draws.items():
            add(score_row(name, f"n random training images encoded and decoded by {kind}:{path}", real, n, ss,
                          lambda s, n=n: np.stack([feats[int(i)] for i in draw(len(train), n, s)])))

    result["complete"], result["wall_seconds"] = True, round(time.time() - t0, 1)
    common.write_json(Path(args.out), result)
    print(f"written to {args.out} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
