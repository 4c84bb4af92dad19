"""Class-conditional generation against the guidance weight w, on Fashion-MNIST.

For each w and each step count: `per-class` samples of every class with
classifier-free guidance f_u + w (f_c - f_u); then, in the Fashion-MNIST
classifier's features (not Inception), the FID of each class's samples against
that class's training images, the FID of all samples against the training set,
and the classifier's accuracy on the samples (does a class-K sample look like K?).
Also the unconditional samples (the null class) as a reference row.

    python benchmarks/quality/conditional.py --run runs/fmnist-class --weights 0,1,1.5,2,3,4 --steps 1,2 \
        --per-class 500 --json docs/results/conditional_fmnist.json --figure docs/figures/conditional_fmnist.png \
        --grid docs/figures/conditional_fmnist_grid.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ilct.data import load_dataset
from ilct.latents import default_cache_dir
from ilct.io.grid import make_grid, save_png
from ilct.metrics.evaluate import reference_features
from ilct.metrics.features import load_fashion_features
from ilct.metrics.frechet import feature_stats, frechet_distance
from ilct.runs.opened import open_run
from ilct.generate import generate

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--weights", default="0,1,2,3")
    p.add_argument("--steps", default="1,2")
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--json", required=True)
    p.add_argument("--figure")
    p.add_argument("--grid", help="PNG: one row per class, 8 samples, for each w at 1 step")
    args = p.parse_args()

    t0 = time.time()
    run = open_run(args.run)
    K = run.cfg.model.num_classes
    if K <= 0:
        raise SystemExit(f"{args.run} is not class-conditional")
    extract = load_fashion_features()
    train = load_dataset("fashion_mnist", args.data_dir, "train", 32)
    real = reference_features(extract, train, default_cache_dir(), progress=False)
    real_labels = np.asarray(train.labels)
    per_class_ref = {k: feature_stats(real[real_labels == k]) for k in range(K)}
    all_ref = feature_stats(real)
    weights = [float(w) for w in args.weights.split(",")]
    steps = [int(s) for s in args.steps.split(",")]
    n = args.per_class
    labels = np.repeat(np.arange(K), n)
    rows, grids = [], []
    for s in steps:
        with torch.inference_mode():
            uncond = generate(run.model, run.autoencoder, run.stats, run.cfg, K * n, s, args.seed)
        f = extract(uncond)
        rows.append({"steps": s, "guidance": None, "fid_all": frechet_distance(*feature_stats(f), *all_ref)})
        print(json.dumps(rows[-1]), flush=True)
        for w in weights:
            with torch.inference_mode():
                images = generate(run.model, run.autoencoder, run.stats, run.cfg, K * n, s, args.seed,
                                  labels=labels, guidance=w)
            f = extract(images)
            pred = extract.predict(images)
            fid_class = [frechet_distance(*feature_stats(f[labels == k]), *per_class_ref[k]) for k in range(K)]
            rows.append({"steps": s, "guidance": w, "accuracy": float((pred == labels).mean()),
                         "fid_per_class": fid_class, "fid_class_mean": float(np.mean(fid_class)),
                         "fid_all": frechet_distance(*feature_stats(f), *all_ref)})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "fid_per_class"}), flush=True)
            if s == steps[0]:
                grids.append(np.concatenate([images[labels == k][:8] for k in range(K)]))
    report = {"command": "python " + " ".join(sys.argv), "run": args.run, "step": run.step,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
                         + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"),
              "features": extract.name, "classifier_test_accuracy": extract.meta["test_accuracy"],
              "per_class": n, "seed": args.seed, "wall_seconds": round(time.time() - t0, 1), "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.grid and grids:
        panels = [make_grid(g, cols=8) for g in grids]  # per w: one row per class, 8 samples
        gap = np.full((panels[0].shape[0], 12, panels[0].shape[2]), 255, np.uint8)
        save_png(np.concatenate([x for pn in panels for x in (pn, gap)][:-1], axis=1), args.grid, scale=2)
        report["grid"] = {"file": args.grid, "panels_guidance": weights, "steps": steps[0]}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.figure:
        plt = common.pyplot()

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for s in steps:
            r = [x for x in rows if x["steps"] == s and x["guidance"] is not None]
            a1.plot([x["guidance"] for x in r], [x["fid_class_mean"] for x in r], marker="o", label=f"{s} NFE, mean per-class FID")
            a1.plot([x["guidance"] for x in r], [x["fid_all"] for x in r], marker="s", ls="--", label=f"{s} NFE, FID of all")
            a2.plot([x["guidance"] for x in r], [x["accuracy"] for x in r], marker="o", label=f"{s} NFE")
            u = [x for x in rows if x["steps"] == s and x["guidance"] is None][0]
            a1.axhline(u["fid_all"], color="gray", lw=0.8, ls=":")
        a1.set_xlabel("guidance w")
        a1.set_ylabel("FID (Fashion-MNIST classifier features)")
        a1.set_title("FID vs guidance (dotted: unconditional, all classes)")
        a1.legend(fontsize=7)
        a2.set_xlabel("guidance w")
        a2.set_ylabel("classifier accuracy on samples")
        a2.set_ylim(0, 1)
        a2.set_title("does a class-K sample look like class K?")
        a2.legend(fontsize=7)
        fig.tight_layout()
        common.save_figure(fig, args.figure, 110)


if __name__ == "__main__":
    main()
