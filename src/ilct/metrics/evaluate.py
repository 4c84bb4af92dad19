"""`ilct eval`: FID and precision/recall of a run's EMA samples at several step counts
(and, for 2 steps, several intermediate sigmas tau).

Reference features are computed once per (extractor, reference set) and cached
as .npz: for an image folder the first 50,000 images (all, if fewer), for the
built-in datasets all of them, unless `--ref-n` says otherwise;
FID uses their mean and covariance, precision/recall a seeded random subset of n
of them. The result records the detector, its protocol and the reference count.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ilct.data import load_dataset
from ilct.data.fashion_mnist import DEFAULT_ROOT
from ilct.data.images import ImageDataset, Subset
from ilct.errors import IlctError
from ilct.generate import generate
from ilct.latents import default_cache_dir
from ilct.metrics.features import load_fashion_features, TorchScriptFeatures
from ilct.metrics.frechet import feature_stats, frechet_distance
from ilct.metrics.precision_recall import precision_recall
from ilct.objectives import make_objective
from ilct.runs.opened import open_run, run_config


def dataset_features(extract, data: ImageDataset, batch_size: int = 1000, progress: bool = True) -> np.ndarray:
    """Features of every readable image (an unreadable file of an image folder is passed over and counted)."""
    out, skipped = [], []
    for s in tqdm(range(0, len(data), batch_size), desc="reference features", disable=not progress, dynamic_ncols=True):
        images, _, bad = data.read_at(np.arange(s, min(s + batch_size, len(data))))
        skipped += bad
        if len(images):
            out.append(extract(images))
    if skipped:
        print(f"note: {len(skipped)} unreadable reference file(s) passed over; first: {skipped[0].path} "
              f"({skipped[0].reason})", file=sys.stderr)
    if not out:
        raise IlctError(f"no readable reference images in {data.name}")
    return np.concatenate(out)


def reference_features(extract, data: ImageDataset, cache_dir: Path, progress: bool = True) -> np.ndarray:
    key = hashlib.sha256(f"{extract.fingerprint()}|{data.name}|{len(data)}".encode()).hexdigest()[:20]
    path = cache_dir / "reference" / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                cached = f["features"].astype(np.float64)
            if cached.ndim == 2 and 0 < len(cached) <= len(data) and np.isfinite(cached).all():  # <: files passed over
                return cached
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass
        print(f"note: the cached reference features {path} are damaged; computing them again", file=sys.stderr)
    feats = dataset_features(extract, data, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # concurrent evaluations do not collide
    mu, sigma = feature_stats(feats)
    np.savez(tmp, features=feats.astype(np.float32), mu=mu, sigma=sigma)
    tmp.replace(path)
    return feats


def check_cache_dir(cache_dir: Path) -> None:
    """The reference-feature cache can be written (checked before any feature is computed)."""
    folder = Path(cache_dir) / "reference"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise IlctError(f"the feature cache {folder} cannot be written ({e.strerror or e}): give a writable "
                        "--cache-dir (or $ILCT_CACHE)") from None


def scores(real: np.ndarray, fake: np.ndarray, n_pr: int, seed: int, k: int = 3) -> dict[str, float]:
    """FID against all reference features; precision/recall against n_pr of them."""
    mu_r, s_r = feature_stats(real)
    mu_f, s_f = feature_stats(fake)
    rng = np.random.default_rng(seed)
    sub = real[rng.choice(len(real), min(n_pr, len(real)), replace=False)]
    p, r = precision_recall(sub, fake, k)
    return {"fid": frechet_distance(mu_f, s_f, mu_r, s_r), "precision": p, "recall": r}


def make_extractor(kind: str, inception_weights: str | None = None):
    """The FID feature extractor: the Fashion-MNIST classifier shipped with ilct, or a TorchScript Inception file."""
    if kind == "fmnist":
        return load_fashion_features()
    if kind == "inception":
        if not inception_weights:
            raise IlctError("--features inception needs --inception-weights FILE (a TorchScript FID Inception); "
                            "no weights can be downloaded here")
        return TorchScriptFeatures(inception_weights)
    raise IlctError(f"unknown --features {kind!r} (fmnist or inception)")


FOLDER_REFERENCE_N = 50_000  # reference images of an image folder for FID statistics (all, if fewer)


@dataclass(frozen=True)
class EvalPoint:
    """One sampler setting to score: `key` names it in the result ("1", "2", "2@tau=1.382")."""

    key: str
    steps: int
    sigmas: list[float] | None  # None: the sampler's default (or Heun steps, for an EDM run)
    tau: float | None = None


def eval_points(steps: list[int], taus: list[float] | None, cfg) -> list[EvalPoint]:
    """The settings of `ilct eval`: one per step count, and with `taus` one 2-step setting per tau
    (sigmas [sigma_max, tau], checked by the objective). Raises IlctError for taus that cannot be used."""
    if not taus:
        return [EvalPoint(str(s), s, None) for s in steps]
    objective = make_objective(cfg)
    per_tau = {t: objective.sigmas(2, [t]) for t in taus}  # refused by an objective that takes no tau
    if 2 not in steps:
        raise IlctError(f"--tau sets the intermediate sigma of 2-step sampling: add 2 to --steps (got {steps})")
    if len(set(taus)) != len(taus):
        raise IlctError(f"--tau has repeated values: {taus}")
    points = []
    for s in steps:
        if s == 2:
            points += [EvalPoint(f"2@tau={t:g}", 2, sigmas, t) for t, sigmas in per_tau.items()]
        else:
            points.append(EvalPoint(str(s), s, None))
    return points


SPLITS = ("train", "test", "val")  # val: Fashion-MNIST only (ilct.data.fashion_mnist)


def reference_set(features: str, cfg, fm_root: str, ref_n: int | None, split: str = "train") -> ImageDataset:
    """The real images: Fashion-MNIST `split` for the classifier features, else the run's own data (its
    `split` for Fashion-MNIST; other datasets have one split, train); the first ref_n of them (all when
    ref_n is 0 or the set is smaller). ref_n None: 50,000 for an image folder, all images of the built-in
    datasets (the protocol of the numbers in docs/)."""
    d = cfg.data
    if split not in SPLITS:
        raise IlctError(f"--split must be train, test or val, got {split!r}")
    if features == "fmnist":
        reference = load_dataset("fashion_mnist", fm_root, split, 32)
    elif d.dataset == "fashion_mnist":
        reference = load_dataset(d.dataset, d.root, split, d.resolution, d.rgb)
    elif split != "train":
        raise IlctError(f"--split {split}: the {d.dataset} dataset has no test split (use --features fmnist or --split train)")
    else:
        reference = load_dataset(d.dataset, d.root, d.split, d.resolution, d.rgb, d.labels_from_subfolders)
    if ref_n is None:
        ref_n = FOLDER_REFERENCE_N if features != "fmnist" and d.dataset == "image_folder" else 0
    return Subset(reference, ref_n) if 0 < ref_n < len(reference) else reference


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
    taus: list[float] | None = None,
    ref_n: int | None = None,
    split: str = "train",
    allow_other_autoencoder: bool = False,
    allow_other_checkpoint: bool = False,
) -> dict:
    """FID, precision and recall per sampler setting (eval_points), against the reference set.

    `fid`, `precision`, `recall` map each setting's key to its number; `rows` holds the same
    numbers with the setting spelled out (steps, tau, sigmas). Samples go to the features as
    the exact uint8 arrays the decoder produced (no file, no lossy format in between).
    """
    if ref_n is not None and ref_n < 0:
        raise IlctError(f"--ref-n must be >= 0 (0 = all), got {ref_n}")
    if split not in SPLITS:
        raise IlctError(f"--split must be train, test or val, got {split!r}")
    cfg = run_config(run_dir)  # everything that can be refused is refused before the model is built
    if cfg.model.frames:
        raise IlctError(f"{run_dir} is a clip run (model.frames = {cfg.model.frames}): `ilct eval` measures FID on "
                        "images only; clips are scored by the video benchmark (docs/video.md)")
    points = eval_points(steps, taus, cfg)
    cache_dir = cache_dir or default_cache_dir()
    check_cache_dir(cache_dir)
    run = open_run(run_dir, checkpoint, device, allow_other_autoencoder, allow_other_checkpoint)
    d = run.cfg.data
    fm_root = d.root if d.dataset == "fashion_mnist" else DEFAULT_ROOT
    extract = make_extractor(features, inception_weights)
    reference = reference_set(features, run.cfg, fm_root, ref_n, split)
    real = reference_features(extract, reference, cache_dir, progress)
    out: dict = {"fid": {}, "precision": {}, "recall": {}, "rows": [], "n": n, "seed": seed, "features": extract.name,
                 "features_fingerprint": extract.fingerprint(), "reference": f"{reference.name} ({len(reference)} images)",
                 "reference_n": len(reference), "split": split, "samples": "uint8 arrays straight from the decoder (no image files)",
                 "run": str(run_dir), "checkpoint": str(run.checkpoint), "step": run.step}
    if features == "fmnist":
        out["classifier_test_accuracy"] = extract.meta["test_accuracy"]
    objective = make_objective(run.cfg)
    for p in points:
        with torch.inference_mode():
            images = generate(run.model, run.autoencoder, run.stats, run.cfg, n, p.steps, seed, batch_size, p.sigmas,
                              progress=progress)
        m = scores(real, extract(images), n, seed)
        for key in ("fid", "precision", "recall"):
            out[key][p.key] = m[key]
        sigmas = p.sigmas or objective.sigmas(p.steps)  # None where the sampler takes no sigmas
        out["rows"].append({"key": p.key, "steps": p.steps, "tau": p.tau, "sigmas": sigmas, **m})
    return out
