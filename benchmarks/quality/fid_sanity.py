"""Sanity numbers for the Fashion-MNIST-classifier FID (issue: trustworthy evaluation).

FID / precision / recall against the 60,000 training images, in the features of
the project's Fashion-MNIST classifier (not Inception FID), for:
  - the 10,000 test images                   (the noise floor of the metric)
  - the autoencoder's reconstructions of them (the floor any latent model can reach)
  - blank (black) images and uniform noise    (clearly bad)

    python benchmarks/quality/fid_sanity.py --autoencoder runs/demo/autoencoder --out docs/results/fid_sanity.json

With --kind taesd (TAEF2, for example) the test images are rendered as 64x64 RGB, as `ilct encode
--resolution 64 --rgb` renders them for training, and the features turn the reconstructions back to grayscale.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ilct.autoencoders import load_autoencoder
from ilct.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist
from ilct.data.images import ResizedImages, to_uint8
from ilct.latents import default_cache_dir
from ilct.metrics.evaluate import make_extractor, reference_features, scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", required=True, help="autoencoder directory")
    p.add_argument("--kind", default="builtin", choices=["builtin", "taesd"], help="autoencoder.kind")
    p.add_argument("--resolution", type=int, default=64, help="with --kind taesd: the rendering of the images")
    p.add_argument("--data-dir", default=DEFAULT_ROOT)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/results/fid_sanity.json")
    args = p.parse_args()
    t0 = time.time()
    cache = default_cache_dir()
    extract = make_extractor("fmnist")
    train = load_fashion_mnist(args.data_dir, "train")
    test = load_fashion_mnist(args.data_dir, "test")
    real = reference_features(extract, train, cache)
    n = min(args.n, len(test))
    test_images = test.images[:n]
    ae = load_autoencoder(args.kind, args.autoencoder)
    source = test if args.kind == "builtin" else ResizedImages(test, args.resolution, rgb=True)
    with torch.no_grad():
        recon = np.concatenate([to_uint8(ae.decode(ae.encode(source.batch(s, min(s + 500, n))))) for s in range(0, n, 500)])
    rng = np.random.default_rng(args.seed)
    cases = {
        "test split": test_images,
        "autoencoder reconstructions of the test split": recon,
        "blank (all black)": np.zeros_like(test_images),
        "uniform noise": rng.integers(0, 256, test_images.shape, dtype=np.uint8),
    }
    rows = []
    for name, images in cases.items():
        m = scores(real, extract(images), n, args.seed)
        rows.append({"name": name, "n": n, **m})
        print(f"{name:>48}: FID {m['fid']:9.3f}  precision {m['precision']:.3f}  recall {m['recall']:.3f}", flush=True)
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, no GPU",
        "autoencoder": f"{args.kind}:{args.autoencoder}",
        "features": extract.name,
        "classifier_test_accuracy": extract.meta["test_accuracy"],
        "reference": f"fashion_mnist train ({len(train)} images)",
        "seconds": round(time.time() - t0, 1),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"classifier test accuracy {extract.meta['test_accuracy']:.4f}; written to {args.out}")


if __name__ == "__main__":
    main()
