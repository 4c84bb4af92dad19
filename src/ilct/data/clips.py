"""Clip datasets: uint8 clips by index, converted to float [-1, 1] per batch.

The video counterpart of ilct.data.images. One clip is T frames of H x W x C:
`clips_at(idx)` gives uint8 (n, T, H, W, C) (what GIFs, strips and .npz files
hold), `batch_indices(idx)` float32 (n, C, T, H, W) in [-1, 1] (channels
first, as torch's Conv3d and ilct.nets.dit take clips). Each clip has a caption (where the dataset has
them), a class label and a motion label (index into `motion_names`; -1 where
unknown), so a benchmark can score "what" and "how it moves" separately.

Datasets: `moving_fmnist` (ilct.data.moving_fmnist), `emoji_clips`
(ilct.data.emoji_clips), `video_folder` (ilct.data.video_folder). The
procedural ones keep a set of held-out (class, motion) pairs: split `train`
and `test` never show them, split `heldout` shows only them.

This module also holds what the procedural generators share: the split names,
the bouncing motion along one axis, and `ClipFrames`, every frame of a clip
dataset as an image dataset (to encode clips frame by frame with an image
autoencoder).
"""

from __future__ import annotations

import numpy as np
import torch

from ilct.data.images import ImageDataset, Subset
from ilct.errors import IlctError

SPLITS = ("train", "test", "heldout")  # heldout: only the held-out (class, motion) pairs
DIRECTIONS = ("left", "right", "up", "down")
# (dx, dy) per direction in image coordinates (y grows downwards)
DIRECTION_STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


class ClipDataset:
    name: str  # identifies the data, e.g. "moving_fmnist/train@32x8s1"
    labels: np.ndarray  # (N,) int64 class of the (first) object; -1 where unlabelled
    motions: np.ndarray  # (N,) int64 index into motion_names of the (first) object's motion; -1 where unknown
    shape: tuple[int, int, int, int]  # (C, T, H, W) of one clip in a batch
    class_names: tuple[str, ...] = ()
    motion_names: tuple[str, ...] = ()
    skipped: int = 0  # unreadable files passed over
    captions: list[str] | None = None  # one text per clip where the dataset has them

    def __len__(self) -> int:
        return len(self.labels)

    def clips_at(self, idx: np.ndarray) -> np.ndarray:
        """uint8 (n, T, H, W, C) clips at the given indices."""
        raise NotImplementedError

    def batch_indices(self, idx: np.ndarray) -> torch.Tensor:
        """float32 (n, C, T, H, W) in [-1, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(self.clips_at(np.asarray(idx))))  # (n, T, H, W, C)
        return x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0

    def batch(self, start: int, stop: int) -> torch.Tensor:
        return self.batch_indices(np.arange(start, min(stop, len(self))))


class ArrayClips(ClipDataset):
    """Clips held in memory."""

    def __init__(self, clips: np.ndarray, labels: np.ndarray, name: str, motions: np.ndarray | None = None,
                 captions: list[str] | None = None):
        if clips.ndim != 5 or clips.dtype != np.uint8:
            raise ValueError(f"expected uint8 (N, T, H, W, C) clips, got {clips.dtype} {clips.shape}")
        self.clips, self.labels, self.name, self.captions = clips, np.asarray(labels, np.int64), name, captions
        self.motions = np.full(len(clips), -1, np.int64) if motions is None else np.asarray(motions, np.int64)
        n, t, h, w, c = clips.shape
        self.shape = (c, t, h, w)

    def clips_at(self, idx: np.ndarray) -> np.ndarray:
        return self.clips[idx]


class ClipSubset(ClipDataset):
    """The first n clips of another clip dataset (ilct.data.images.Subset for clips)."""

    def __init__(self, base: ClipDataset, n: int):
        self.base = base
        self.labels, self.motions = base.labels[: min(n, len(base))], base.motions[: min(n, len(base))]
        self.shape, self.skipped = base.shape, base.skipped
        self.class_names, self.motion_names = base.class_names, base.motion_names
        self.captions = base.captions[: len(self.labels)] if base.captions else None
        self.name = f"{base.name}[:{len(self.labels)}]"

    def clips_at(self, idx: np.ndarray) -> np.ndarray:
        return self.base.clips_at(idx)


def subset(data, n: int):
    """The first n images or clips of a dataset."""
    return ClipSubset(data, n) if isinstance(data, ClipDataset) else Subset(data, n)


class ClipFrames(ImageDataset):
    """Every frame of a clip dataset as an image: image k is frame k % T of clip k // T (labels and
    captions repeated), so clips can be encoded with an image autoencoder into (N*T, c, h, w) latents."""

    def __init__(self, base: ClipDataset):
        self.base = base
        self.frames = base.shape[1]
        self.labels = np.repeat(base.labels, self.frames)
        self.captions = [c for c in base.captions for _ in range(self.frames)] if base.captions else None
        c, t, h, w = base.shape
        self.shape, self.skipped = (c, h, w), base.skipped
        self.name = f"{base.name}/frames"

    def images_at(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        clip, frame = np.divmod(idx, self.frames)
        uniq, inv = np.unique(clip, return_inverse=True)
        return self.base.clips_at(uniq)[inv.reshape(-1), frame]


def check_split(split: str, dataset: str) -> None:
    if split not in SPLITS:
        raise IlctError(f"unknown {dataset} split {split!r} ({', '.join(SPLITS)})")


def check_clip_size(frames: int, frame_stride: int) -> None:
    if frames < 1:
        raise IlctError(f"frames must be >= 1, got {frames}")
    if frame_stride < 1:
        raise IlctError(f"frame_stride must be >= 1, got {frame_stride}")


def uniforms(seed: int, split: str, n: int, k: int, fields: int) -> np.ndarray:
    """(fields, n, k) uniforms in [0, 1): field f from its own generator seeded with (seed, split, f),
    so row i (clip i) is the same whatever n (numpy's random() fills arrays in order)."""
    split_code = SPLITS.index(split)
    return np.stack([np.random.default_rng([seed, split_code, f]).random((n, k)) for f in range(fields)])


def bounce(p: np.ndarray, length: int) -> np.ndarray:
    """Positions on an unbounded line folded into [0, length] by reflection at both ends (a triangle
    wave of period 2 length): an object moving at constant speed that bounces off the canvas edges."""
    p = np.asarray(p)
    if length == 0:
        return np.zeros_like(p)
    q = np.mod(p, 2 * length)
    return np.where(q <= length, q, 2 * length - q)


def track(start: int, sign: int, step: int, frames: int, length: int) -> np.ndarray:
    """(frames,) positions along the motion axis: start + sign * step * k, bouncing in [0, length]."""
    return bounce(start + sign * step * np.arange(frames), length)


def net_starts(sign: int, step: int, frames: int, length: int) -> np.ndarray:
    """The start positions in [0, length] from which the object ends the clip further along `sign`
    than it began (so "moving left" is true of the clip as a whole, bounces included), and moves that
    way on its first step. Every start when none qualifies (a motion that returns exactly)."""
    starts = np.arange(length + 1)
    ends = np.stack([track(s, sign, step, frames, length) for s in starts])  # (length + 1, frames)
    first = ends[:, min(1, frames - 1)] - starts
    ok = (np.sign(ends[:, -1] - starts) == sign) & (np.sign(first) == sign)
    return starts[ok] if ok.any() else starts
