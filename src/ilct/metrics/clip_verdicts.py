"""Verdicts on generated clips that output no user wants cannot pass (issue 36).

`ilct.metrics.clips.score_clips` asks the clip classifier two questions of every clip, which class and which
motion, and any clip gets an answer: a moving blob passes the motion head, a blurry top is called "shirt". Here a
clip must first show a garment:

    present   frame f of clip i shows a recognisable garment when its features (the clip classifier's
              per-frame trunk, before its last layer) lie inside the k-NN ball of some real frame
              (Kynkaanniemi et al.'s manifold test, with each ball's radius measured to frames of other
              clips; `Reference`, built from real clips of other garments than those scored)
    class     the clip shows class c when at least half of its frames are present *and* classified c
    motion    the clip moves as asked when at least half of its frames are present, the motion head
              says the asked direction, and the garment's centre of brightness gets, in some frame, at least
              `min_shift` pixels further along that direction than in the first (a frozen clip cannot pass;
              the largest excursion, not the last frame's, because real garments bounce off the edges: the
              last frame's shift is under 1 px in 3-5 % of real clips, the largest in none)

A clip with no garment in most of its frames is wrong for both. `strict_scores` reports both accuracies with
95 % Wilson intervals from the number of clips, the share of clips with a garment, the accuracy per asked
class and the confusion matrix (a clip without a garment counted in its own column, "none").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ilct.data.clips import DIRECTION_STEPS, DIRECTIONS
from ilct.metrics.clips import CLASSES, ClipData, ClipScorer, clips_input, confusion, training_clips

MIN_PRESENT = 0.5  # the share of frames that must show a garment (and, for the class, the asked one)
MIN_SHIFT = 1.0  # pixels along the asked direction, first frame to last, at the classifier's 32x32
REFERENCE_CLIPS = 2000  # real clips (8 frames each at the presets' clips: 16,000 reference frames)
K = 10  # the presence test's neighbours: k = 3 (precision/recall's) found a garment in 69 % of real clips


@torch.no_grad()
def frame_features(scorer: ClipScorer, clips: np.ndarray, batch_size: int = 256) -> tuple[torch.Tensor, np.ndarray]:
    """(features (N, T, D) float64 on the CPU, classes (N, T)) of every frame of uint8 (N, T, H, W, C) clips, by
    the clip classifier's per-frame trunk (`what`)."""
    trunk, head = scorer.model.what[:-1], scorer.model.what[-1]
    feats, classes = [], []
    for s in range(0, len(clips), batch_size):
        x = clips_input(clips[s : s + batch_size]).to(scorer.device)
        n, t = x.shape[:2]
        f = trunk(x.reshape(n * t, 1, *x.shape[2:]))
        feats.append(f.double().cpu().reshape(n, t, -1))
        classes.append(head(f).argmax(1).cpu().numpy().reshape(n, t))
    return torch.cat(feats), np.concatenate(classes)


def radii_across_clips(features: torch.Tensor, clip: np.ndarray, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance from each frame to its k-th nearest frame of *another* clip. A clip's own frames show the same
    garment a pixel or two apart; counted as neighbours they shrink every ball to that clip (the first version of
    this test did so and found a garment in 23 % of real clips)."""
    clip_t = torch.as_tensor(np.asarray(clip))
    out = []
    for s in range(0, len(features), chunk):
        d = torch.cdist(features[s : s + chunk], features)
        d[clip_t[s : s + chunk, None] == clip_t[None, :]] = float("inf")
        out.append(d.kthvalue(k, dim=1).values)
    return torch.cat(out)


@dataclass
class Reference:
    """Real frames' features with their k-NN radii (across clips): what a garment looks like, whatever its
    class; which class it shows is the classifier's per-frame answer."""

    features: torch.Tensor  # (F, D)
    radii: torch.Tensor  # (F,)
    k: int
    clips: int

    @classmethod
    def of(cls, scorer: ClipScorer, clips: np.ndarray, k: int = K) -> "Reference":
        """From real clips: every frame is a reference point, its radius the distance to its k-th nearest frame
        of another clip."""
        if len(clips) <= k:
            raise ValueError(f"the presence test needs more than k = {k} real clips, got {len(clips)}")
        feats, _ = frame_features(scorer, clips)
        n, t, d = feats.shape
        flat = feats.reshape(n * t, d)
        return cls(flat, radii_across_clips(flat, np.repeat(np.arange(n), t), k), k, n)

    @classmethod
    def from_training(cls, scorer: ClipScorer, root: str, data: ClipData, clips: int = REFERENCE_CLIPS,
                      seed: int = 0, k: int = K) -> "Reference":
        """From `clips` real clips of the Fashion-MNIST *train* garments (half in the seen directions, half in
        the held-out ones): garments no scored clip shows."""
        seen, held = training_clips(root, data, seed)
        half = clips // 2
        return cls.of(scorer, np.concatenate([seen.clips_at(np.arange(half)),
                                              held.clips_at(np.arange(clips - half))]), k)

    def inside(self, feats: torch.Tensor, chunk: int = 2048) -> np.ndarray:
        """(N, T) whether each frame lies inside the ball of some real frame."""
        n, t, d = feats.shape
        flat = feats.reshape(-1, d)
        out = [(torch.cdist(flat[s : s + chunk], self.features) <= self.radii[None, :]).any(1).numpy()
               for s in range(0, len(flat), chunk)]
        return np.concatenate(out).reshape(n, t)


def centre_path(clips: np.ndarray) -> np.ndarray:
    """(N, T, 2) the (dx, dy) of each frame's centre of brightness from the first frame's, in pixels of the
    classifier's 32x32 gray frames (a blank frame's centre is the canvas centre)."""
    x = (clips_input(clips).numpy() + 1) / 2  # (N, T, 32, 32) in [0, 1]
    mass = x.sum((2, 3))
    grid = np.arange(32, dtype=np.float64) + 0.5
    cx = np.where(mass > 0, (x.sum(2) * grid).sum(2) / np.maximum(mass, 1e-12), 16.0)
    cy = np.where(mass > 0, (x.sum(3) * grid).sum(2) / np.maximum(mass, 1e-12), 16.0)
    return np.stack([cx - cx[:, :1], cy - cy[:, :1]], axis=2)


def excursion(clips: np.ndarray, want_motion: np.ndarray) -> np.ndarray:
    """(N,) how far (pixels) each clip's centre of brightness gets along its asked direction, at most, from the
    first frame."""
    steps = np.array([DIRECTION_STEPS[d] for d in DIRECTIONS], dtype=np.float64)[np.asarray(want_motion)]
    return (centre_path(clips) * steps[:, None, :]).sum(2).max(1)


def clip_verdicts(clips: np.ndarray, want_class: np.ndarray, want_motion: np.ndarray, scorer: ClipScorer,
                  reference: Reference, min_present: float = MIN_PRESENT,
                  min_shift: float = MIN_SHIFT) -> dict[str, np.ndarray]:
    """Per clip: `garment` (a garment in at least min_present of its frames), `shown_class` (the most frequent
    class of its present frames, -1 without a garment), `class_ok`, `motion_ok`, and `present_frames` (the share
    of its frames with a garment)."""
    want_class, want_motion = np.asarray(want_class).reshape(-1), np.asarray(want_motion).reshape(-1)
    if not len(want_class) == len(want_motion) == len(clips):
        raise ValueError(f"{len(clips)} clips, {len(want_class)} classes and {len(want_motion)} motions asked")
    feats, classes = frame_features(scorer, clips)
    present = reference.inside(feats)
    share = present.mean(1)
    garment = share >= min_present
    asked = ((classes == want_class[:, None]) & present).mean(1) >= min_present
    counts = np.stack([((classes == c) & present).sum(1) for c in range(CLASSES)], axis=1)
    shown = np.where(garment, counts.argmax(1), -1)
    _, motion = scorer.predict(clips)
    along = excursion(clips, want_motion)
    return {"garment": garment, "present_frames": share, "shown_class": shown, "class_ok": garment & asked,
            "motion_ok": garment & (motion == want_motion) & (along >= min_shift), "shift_along": along}


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion of k successes in n trials."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def difference(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """The 95 % interval of p1 - p2 for two independent proportions (Newcombe's hybrid score interval, his
    method 10): each side widened by the two Wilson intervals' distances from their own proportions."""
    if n1 <= 0 or n2 <= 0:
        return (-1.0, 1.0)
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson(k1, n1), wilson(k2, n2)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def _rate(ok: np.ndarray) -> dict:
    k, n = int(ok.sum()), int(ok.size)
    lo, hi = wilson(k, n)
    return {"acc": k / n if n else float("nan"), "ci95": [round(lo, 4), round(hi, 4)], "k": k, "n": n}


def summary(v: dict[str, np.ndarray], want_class: np.ndarray) -> dict:
    """Verdicts (`clip_verdicts`) summed up: class and motion accuracy with 95 % intervals, the share of clips
    with a garment, the class accuracy per asked class, and the confusion of asked (rows) against shown class
    (columns; the last, "none": no garment)."""
    want_class = np.asarray(want_class).reshape(-1)
    shown = np.where(v["shown_class"] < 0, CLASSES, v["shown_class"])
    per_class = {str(c): _rate(v["class_ok"][want_class == c]) for c in range(CLASSES) if (want_class == c).any()}
    return {"class": _rate(v["class_ok"]), "motion": _rate(v["motion_ok"]), "garment": _rate(v["garment"]),
            "present_frames": float(v["present_frames"].mean()), "per_class": per_class,
            "confusion": confusion(want_class, shown, CLASSES + 1)[:CLASSES],
            "n": len(want_class)}


def strict_scores(clips: np.ndarray, want_class: np.ndarray, want_motion: np.ndarray, scorer: ClipScorer,
                  reference: Reference, **limits) -> dict:
    """`summary` of the clips' verdicts."""
    return summary(clip_verdicts(clips, want_class, want_motion, scorer, reference, **limits), want_class)
