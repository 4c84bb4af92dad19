"""Choosing a checkpoint without touching the test set: FID during training (`train.fid_every`).

Every `fid_every` steps rank 0 draws `fid_n` samples of the EMA model with the objective's grid sampler
(1 step for consistency and MeanFlow runs) and scores them against the features of the *training* split
(for the Fashion-MNIST classifier features: Fashion-MNIST train; otherwise the run's own training images).
The number goes into the log (`"event": "fid"`); a new best is checkpointed at that step, kept out of the
checkpoint rotation, and named in `RUN/best.json`. The final number of a study is then measured once, on
the test split (`ilct eval --split test`), at the step chosen here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ilct.data.fashion_mnist import DEFAULT_ROOT
from ilct.errors import IlctError
from ilct.generate import generate
from ilct.io.files import read_json, write_text
from ilct.latents import default_cache_dir
from ilct.metrics.evaluate import make_extractor, reference_features, reference_set
from ilct.metrics.frechet import feature_stats, frechet_distance
from ilct.objectives import make_objective
from ilct.runs.folder import BEST_FILE


@dataclass
class Best:
    step: int
    fid: float


def read_best(run_dir: Path) -> Best | None:
    """The best step so far of a (resumed) run; None when there is none or best.json is unreadable."""
    path = run_dir / BEST_FILE
    if not path.is_file():
        return None
    try:
        d = read_json(path)
    except IlctError:
        return None
    if not isinstance(d, dict) or type(d.get("step")) is not int or type(d.get("fid")) not in (int, float):
        return None
    best = Best(d["step"], float(d["fid"]))
    return best if 1 <= best.step <= 999_999_999 and math.isfinite(best.fid) and best.fid >= 0 else None


class FidMonitor:
    """FID of the EMA model against cached training-split statistics; tracks the best step."""

    def __init__(self, cfg, run_dir: Path, resume: bool, progress: bool = False):
        t, d = cfg.train, cfg.data
        self.cfg, self.run_dir, self.n = cfg, run_dir, t.fid_n
        self.steps = make_objective(cfg).grid_steps
        cache = Path(d.cache_dir) if d.cache_dir else default_cache_dir()
        fm_root = d.root if d.dataset == "fashion_mnist" else DEFAULT_ROOT
        self.extract = make_extractor(t.fid_features, t.fid_inception_weights or None)
        reference = reference_set(t.fid_features, cfg, fm_root, None, "train")
        self.reference_name = f"{reference.name} ({len(reference)} images)"
        self.mu, self.sigma = feature_stats(reference_features(self.extract, reference, cache, progress))
        self.best = read_best(run_dir) if resume else None  # (a --force run's old best.json is not this run's)

    def measure(self, ema: torch.nn.Module, ae, stats, step: int) -> dict:
        """One measurement at `step`; `new_best` says whether it beat every earlier one."""
        with torch.inference_mode():
            images = generate(ema, ae, stats, self.cfg, self.n, self.steps, seed=0)
        mu, sigma = feature_stats(np.asarray(self.extract(images), dtype=np.float64))
        fid = frechet_distance(mu, sigma, self.mu, self.sigma)
        new_best = math.isfinite(fid) and (self.best is None or fid < self.best.fid)
        if new_best:
            self.best = Best(step, fid)
        return {"step": step, "event": "fid", "fid": fid, "nfe": self.steps, "n": self.n,
                "reference": self.reference_name, "best_step": self.best and self.best.step,
                "best_fid": self.best and self.best.fid, "new_best": new_best}

    def record_best(self) -> None:
        """RUN/best.json names the best step (written after its checkpoint is in place)."""
        b = self.best
        write_text(self.run_dir / BEST_FILE, json.dumps(
            {"step": b.step, "fid": b.fid, "nfe": self.steps, "n": self.n, "features": self.extract.name,
             "reference": self.reference_name, "checkpoint": f"checkpoints/step_{b.step:09d}"}, indent=2) + "\n")

