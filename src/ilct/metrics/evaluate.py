"""`ilct eval`: FID and precision/recall of a run's EMA samples at several step counts.

Reference features of the whole reference set are computed once per
(extractor, dataset) and cached as .npz; FID uses their mean and covariance,
precision/recall a seeded random subset of n of them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ilct.data.images import ImageDataset
from ilct.errors import IlctError
from ilct.metrics.frechet import feature_stats, frechet_distance
from ilct.metrics.precision_recall import precision_recall


def dataset_features(extract, data: ImageDataset, batch_size: int = 1000, progress: bool = True) -> np.ndarray:
    out = []
    for s in tqdm(range(0, len(data), batch_size), desc="reference features", disable=not progress, dynamic_ncols=True):
        out.append(extract(data.images_at(np.arange(s, min(s + batch_size, len(data))))))
    return np.concatenate(out)


def reference_features(extract, data: ImageDataset, cache_dir: Path, progress: bool = True) -> np.ndarray:
    key = hashlib.sha256(f"{extract.fingerprint()}|{data.name}|{len(data)}".encode()).hexdigest()[:20]
    path = cache_dir / "reference" / f"{key}.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["features"].astype(np.float64)
    feats = dataset_features(extract, data, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # concurrent evaluations do not collide
    mu, sigma = feature_stats(feats)
    np.savez(tmp, features=feats.astype(np.float32), mu=mu, sigma=sigma)
    tmp.replace(path)
    return feats


def scores(real: np.ndarray, fake: np.ndarray, n_pr: int, seed: int, k: int = 3) -> dict[str, float]:
    """FID against all reference features; precision/recall against n_pr of them."""
    mu_r, s_r = feature_stats(real)
    mu_f, s_f = feature_stats(fake)
    rng = np.random.default_rng(seed)
    sub = real[rng.choice(len(real), min(n_pr, len(real)), replace=False)]
    p, r = precision_recall(sub, fake, k)
    return {"fid": frechet_distance(mu_f, s_f, mu_r, s_r), "precision": p, "recall": r}


def make_extractor(kind: str, cache_dir: Path, data_root: str, inception_weights: str | None, progress: bool):
    if kind == "fmnist":
        from ilct.metrics.features import load_fashion_features

        return load_fashion_features(cache_dir, data_root, progress)
    if kind == "inception":
        from ilct.metrics.features import TorchScriptFeatures

        if not inception_weights:
            raise IlctError("--features inception needs --inception-weights FILE (a TorchScript FID Inception); "
                            "no weights can be downloaded here")
        return TorchScriptFeatures(inception_weights)
    raise IlctError(f"unknown --features {kind!r} (fmnist or inception)")


def evaluate_run(
    run_dir: str,
    steps: list[int],
    n: int,
    seed: int,
    features: str = "fmnist",
    inception_weights: str | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 256,
    device: str = "auto",
    progress: bool = True,
    checkpoint: str | None = None,
) -> dict:
    from ilct.data import load_dataset
    from ilct.data.fashion_mnist import DEFAULT_ROOT
    from ilct.data.latents import default_cache_dir
    from ilct.run import open_run
    from ilct.sampling import generate

    cache_dir = cache_dir or default_cache_dir()
    run = open_run(run_dir, checkpoint, device=device)
    d = run.cfg.data
    fm_root = d.root if d.dataset == "fashion_mnist" else DEFAULT_ROOT
    extract = make_extractor(features, cache_dir, fm_root, inception_weights, progress)
    if features == "fmnist":
        reference = load_dataset("fashion_mnist", fm_root, "train", 32)
    else:
        reference = load_dataset(d.dataset, d.root, d.split, d.resolution, d.rgb, d.labels_from_subfolders)
    real = reference_features(extract, reference, cache_dir, progress)
    out: dict = {"fid": {}, "precision": {}, "recall": {}, "n": n, "seed": seed, "features": extract.name,
                 "reference": f"{reference.name} ({len(reference)} images)", "run": str(run_dir),
                 "checkpoint": str(run.checkpoint), "step": run.step}
    if features == "fmnist":
        out["classifier_test_accuracy"] = extract.meta["test_accuracy"]
    for s in steps:
        with torch.inference_mode():
            images = generate(run.model, run.autoencoder, run.stats, run.cfg, n, s, seed, batch_size, progress=progress)
        m = scores(real, extract(images), n, seed)
        for key in ("fid", "precision", "recall"):
            out[key][str(s)] = m[key]
    return out
