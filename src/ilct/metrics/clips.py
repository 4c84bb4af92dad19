"""Scoring generated clips: does the clip show the asked-for garment, moving the asked-for way?

A small classifier of moving Fashion-MNIST clips with two heads, trained here on real clips (no
pretrained video network can be downloaded offline):

    what  a 2D CNN on each frame (gray, 32x32); the clip's class logits are the mean over frames
    how   the frames stacked as channels (early fusion: the first convolution sees the displacement
          between frames); logits over the motions (ilct.data.clips.DIRECTIONS)

It is a measuring instrument, not a model under test, so it is trained on Fashion-MNIST *train*
garments moving in every direction: the `train` split's clips plus clips of the same garments in the
held-out directions (split `heldout` rendered from the train images). A scorer that never saw a
t-shirt move left would be biased against calling a generated one "left". Its accuracy is measured
on clips of the *test* garments: the `test` split (seen directions) and the `heldout` split (held-out
directions), and saved with it. Cached like the Fashion-MNIST feature classifier
(ilct.metrics.features): `<cache>/clip_classifier/<data key>/model.safetensors` + `config.json`
(accuracies, training time, fingerprint); a damaged cache is trained again with a note.

`score_clips` gives class and motion accuracy against what was asked, their chance levels, and the
temporal consistency (the fraction of clips whose per-frame class, by the Fashion-MNIST classifier of
ilct.metrics.features, is the same on every frame). `frame_fid` is the FID of all frames in that
classifier's features against real frames (not Inception FID).

Chance: the best accuracy a generator that ignores the asked-for class (motion) can expect, i.e. the
frequency of the most-asked class (motion) among the requests; 1/K when every value is asked equally
often (whatever such a generator draws, its expected accuracy is sum_k q(k) p(k) <= max_k q(k)).

One object per clip (the first object's class and motion are the labels).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ilct.data.clips import DIRECTIONS
from ilct.data.fashion_mnist import load_fashion_mnist
from ilct.data.moving_fmnist import MovingFashionMNIST, load_moving_fmnist
from ilct.errors import IlctError
from ilct.io.files import read_json, read_tensors, save_tensors, write_text
from ilct.metrics.features import FashionFeatures, to_gray32
from ilct.metrics.frechet import feature_stats, frechet_distance

CLASSES = 10
MOTIONS = DIRECTIONS  # the motion_names of moving_fmnist
FLIPPED = tuple(MOTIONS.index({"left": "right", "right": "left"}.get(d, d)) for d in MOTIONS)  # after a horizontal flip


def _conv(a: int, b: int) -> list[nn.Module]:
    return [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]


def _trunk(channels: int, outputs: int) -> nn.Sequential:
    """conv 32 @ 32x32, pool, conv 64 @ 16x16, pool, conv 64 @ 8x8, global average, linear."""
    return nn.Sequential(*_conv(channels, 32), nn.MaxPool2d(2), *_conv(32, 64), nn.MaxPool2d(2), *_conv(64, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, outputs))


class ClipClassifier(nn.Module):
    """Input x (N, T, 32, 32) in [-1, 1] (gray frames); outputs class logits (N, 10) and motion logits (N, 4)."""

    def __init__(self, frames: int, classes: int = CLASSES, motions: int = len(MOTIONS)):
        super().__init__()
        self.frames = frames
        self.what = _trunk(1, classes)  # per frame
        self.how = _trunk(frames, motions)  # frames as channels

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, t, 32, 32), any t frames -> (N, classes): the per-frame logits averaged over the frames."""
        n, t = x.shape[:2]
        return self.what(x.reshape(n * t, 1, *x.shape[2:])).reshape(n, t, -1).mean(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] != self.frames:
            raise ValueError(f"the clip classifier takes {self.frames}-frame clips, got {x.shape[1]} frames")
        return self.class_logits(x), self.how(x)


def clips_input(clips: np.ndarray) -> torch.Tensor:
    """uint8 (N, T, H, W, C) -> float (N, T, 32, 32) in [-1, 1] (each frame as ilct.metrics.features.to_gray32)."""
    if clips.dtype != np.uint8 or clips.ndim != 5:
        raise ValueError(f"expected uint8 (N, T, H, W, C) clips, got {clips.dtype} {clips.shape}")
    n, t = clips.shape[:2]
    return to_gray32(clips.reshape(n * t, *clips.shape[2:])).reshape(n, t, 32, 32)


class ClipScorer:
    """A trained ClipClassifier with its record (`meta`: accuracies on real clips, data, fingerprint)."""

    def __init__(self, model: ClipClassifier, meta: dict):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.eval().to(self.device)
        self.meta = meta

    @torch.no_grad()
    def predict(self, clips: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """(classes (N,), motions (N,)) predicted for uint8 (N, T, H, W, C) clips."""
        cls, mot = [], []
        for s in range(0, len(clips), batch_size):
            a, b = self.model(clips_input(clips[s : s + batch_size]).to(self.device))
            cls.append(a.argmax(1).cpu().numpy())
            mot.append(b.argmax(1).cpu().numpy())
        return np.concatenate(cls), np.concatenate(mot)

    def fingerprint(self) -> str:
        return self.meta["fingerprint"]


@dataclass(frozen=True)
class ClipData:
    """The clips the classifier is for: those of the run being scored (its data.resolution, data.frames,
    data.frame_stride)."""

    resolution: int = 32
    frames: int = 8
    frame_stride: int = 1

    def key(self) -> str:
        return f"moving_fmnist-{self.resolution}x{self.frames}s{self.frame_stride}"


def training_clips(root: str, data: ClipData, seed: int = 0):
    """Train garments in every direction: the train split and the held-out directions of the same images."""
    base = load_fashion_mnist(root, "train", 28)
    images, labels = base.images[..., 0], base.labels
    args = dict(resolution=data.resolution, frames=data.frames, frame_stride=data.frame_stride, seed=seed)
    seen = MovingFashionMNIST(images, labels, "train", **args)
    # one held-out direction per class against three seen ones: a third as many clips keeps directions even
    held = MovingFashionMNIST(images, labels, "heldout", count=max(1, len(images) // 3), **args)
    return seen, held


def accuracy(scorer: ClipScorer, clips: np.ndarray, labels: np.ndarray, motions: np.ndarray) -> dict[str, float]:
    c, m = scorer.predict(clips)
    return {"class": float((c == labels).mean()), "motion": float((m == motions).mean()), "clips": len(clips)}


def train_clip_classifier(root: str, out: Path, data: ClipData = ClipData(), steps: int = 400, batch_size: int = 128,
                          eval_clips: int = 2000, seed: int = 0, progress: bool = True) -> ClipScorer:
    """Adam with a one-cycle schedule; each step draws `batch_size` clips of the training mixture, flips half
    of them horizontally (left <-> right), and trains `what` on two random frames of each clip and `how` on
    the whole clip. Then measures the accuracy on `eval_clips` clips of the test and heldout splits (test
    garments) and saves weights + record in `out`."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    seen, held = training_clips(root, data, seed)
    n_seen, n_all = len(seen), len(seen) + len(held)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = ClipClassifier(data.frames).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    flipped = torch.tensor(FLIPPED)
    bar = tqdm(total=steps, desc="clip classifier", disable=not progress, dynamic_ncols=True)
    for _ in range(steps):
        idx = torch.randint(0, n_all, (batch_size,), generator=g).numpy()
        from_seen = idx < n_seen
        clips = np.concatenate([seen.clips_at(idx[from_seen]), held.clips_at(idx[~from_seen] - n_seen)])
        y = torch.from_numpy(np.concatenate([seen.labels[idx[from_seen]], held.labels[idx[~from_seen] - n_seen]]))
        m = torch.from_numpy(np.concatenate([seen.motions[idx[from_seen]], held.motions[idx[~from_seen] - n_seen]]))
        x = clips_input(clips)  # (B, T, 32, 32)
        flip = torch.rand(len(x), generator=g) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        m = torch.where(flip, flipped[m], m)
        pick = torch.randint(0, data.frames, (len(x), min(2, data.frames)), generator=g)  # two frames per clip
        what = model.class_logits(torch.gather(x, 1, pick[..., None, None].expand(-1, -1, *x.shape[2:])))
        loss = F.cross_entropy(what, y) + F.cross_entropy(model.how(x), m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    train_seconds, train_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    model.eval()
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.cpu().numpy().tobytes())
    meta = {"data": data.key(), "resolution": data.resolution, "frames": data.frames, "frame_stride": data.frame_stride,
            "trained_on": "Fashion-MNIST train garments, every (class, direction) pair (train split + heldout split "
                          "rendered from the train images)",
            "steps": steps, "batch_size": batch_size, "seed": seed, "train_seconds": round(train_seconds, 1),
            "train_cpu_seconds": round(train_cpu, 1), "threads": torch.get_num_threads(),
            "fingerprint": "clip-cls-" + h.hexdigest()[:16]}
    scorer = ClipScorer(model, meta)
    for split in ("test", "heldout"):  # test garments, seen and held-out directions
        real = load_moving_fmnist(root, split, data.resolution, data.frames, data.frame_stride)
        n = min(eval_clips, len(real))
        meta[f"{split}_accuracy"] = accuracy(scorer, real.clips_at(np.arange(n)), real.labels[:n], real.motions[:n])
    save_tensors(model.state_dict(), out / "model.safetensors")
    write_text(out / "config.json", json.dumps(meta, indent=2))
    return scorer


def classifier_folder(cache_dir: Path, data: ClipData, train_options: dict) -> Path:
    extra = "".join(f"-{k}{v}" for k, v in sorted(train_options.items()))
    return Path(cache_dir) / "clip_classifier" / f"{data.key()}{extra}"


def load_clip_classifier(cache_dir: Path, data_root: str, data: ClipData = ClipData(), progress: bool = True,
                         **train_options) -> ClipScorer:
    """The cached clip classifier for `data`, trained on first use (a few CPU minutes). Training options other
    than the defaults (the tests' few steps) name their own folder, so they never stand in for the real one."""
    out = classifier_folder(cache_dir, data, train_options)
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        try:
            model = ClipClassifier(data.frames)
            model.load_state_dict(read_tensors(out / "model.safetensors"))
            meta = read_json(out / "config.json")
            if isinstance(meta, dict) and "test_accuracy" in meta and "heldout_accuracy" in meta:
                return ClipScorer(model, meta)
        except (IlctError, RuntimeError, ValueError):
            pass
        print(f"note: the cached clip classifier in {out} is damaged; training it again", file=sys.stderr)
    print(f"training the moving Fashion-MNIST clip classifier (cached in {out})", file=sys.stderr)
    return train_clip_classifier(data_root, out, data, progress=progress, **train_options)


def chance(wanted: np.ndarray) -> float:
    """The best expected accuracy of a generator that ignores the request: the most-asked value's frequency."""
    wanted = np.asarray(wanted)
    if not len(wanted):
        raise ValueError("no requests")
    return float(np.unique(wanted, return_counts=True)[1].max() / len(wanted))


def frame_classes(clips: np.ndarray, features: FashionFeatures) -> np.ndarray:
    """(N, T) Fashion-MNIST classifier labels of every frame."""
    n, t = clips.shape[:2]
    return features.predict(clips.reshape(n * t, *clips.shape[2:])).reshape(n, t)


def temporal_consistency(clips: np.ndarray, features: FashionFeatures) -> float:
    """The fraction of clips whose frames all get the same Fashion-MNIST classifier label."""
    c = frame_classes(clips, features)
    return float((c == c[:, :1]).all(1).mean())


def frame_stats(clips: np.ndarray, features: FashionFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the Fashion-MNIST classifier features of every frame of uint8 (N, T, H, W, C) clips."""
    n, t = clips.shape[:2]
    return feature_stats(features(clips.reshape(n * t, *clips.shape[2:])))


def frame_fid(clips: np.ndarray, real: np.ndarray | tuple[np.ndarray, np.ndarray], features: FashionFeatures) -> float:
    """FID of every frame of `clips` against every frame of `real` (uint8 clips, or their frame_stats), in the
    Fashion-MNIST classifier's features (not Inception FID)."""
    ref = frame_stats(real, features) if isinstance(real, np.ndarray) else real
    return frechet_distance(*frame_stats(clips, features), *ref)


def score_clips(clips: np.ndarray, want_class: np.ndarray, want_motion: np.ndarray, classifier: ClipScorer,
                features: FashionFeatures) -> dict[str, float]:
    """Class and motion accuracy of uint8 (N, T, H, W, C) clips against what each was asked to show (want_motion:
    indices into MOTIONS), their chance levels, the temporal consistency, and `class_confusion`: counts of clips
    by asked class (row) and predicted class (column), which says where the misses go."""
    want_class, want_motion = np.asarray(want_class).reshape(-1), np.asarray(want_motion).reshape(-1)
    if not len(want_class) == len(want_motion) == len(clips):
        raise ValueError(f"{len(clips)} clips, {len(want_class)} classes and {len(want_motion)} motions asked")
    c, m = classifier.predict(clips)
    return {"class_acc": float((c == want_class).mean()), "motion_acc": float((m == want_motion).mean()),
            "class_chance": chance(want_class), "motion_chance": chance(want_motion),
            "temporal_consistency": temporal_consistency(clips, features), "n": len(clips),
            "class_confusion": confusion(want_class, c, CLASSES)}


def confusion(want: np.ndarray, got: np.ndarray, classes: int) -> list[list[int]]:
    """counts[i][j]: how many items asked for class i were predicted as class j."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(want, dtype=np.int64), np.asarray(got, dtype=np.int64)), 1)
    return counts.tolist()
