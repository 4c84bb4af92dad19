"""Moving Fashion-MNIST: real garments sliding across a black canvas, captioned with what and where.

Moving MNIST (Srivastava et al., 2015) with Fashion-MNIST garments: each clip
shows `objects` garments (the real 28x28 images, resized to `object_size`,
default half the canvas) moving left, right, up or down at 1-3 pixels per
frame, bouncing off the edges; overlapping garments combine by maximum.
Caption: "a sneaker moving left" (two objects: "... and a bag moving up").
The start is drawn so that the clip ends further along its direction than it
began and moves that way on its first step, so the caption is true of the
clip as a whole, but it may bounce on the way. With the presets' 8 frames on
a 32 canvas (positions 0-16), of the starts allowed in each direction 3 of 13
bounce at speed 1, 6 of 9 at speed 2 and all 6 at speed 3, counted by
comparing `track` with the unfolded line for every start `net_starts` allows.
Starts are drawn uniformly from those, so these are the shares of clips.

`frame_stride` s shows every s-th frame of the motion (s times the speed).

Held out: one direction per class, `HELDOUT[class]` (the direction `class % 4`:
t-shirt left, trouser right, pullover up, dress down, coat left, ...). Splits
`train` (Fashion-MNIST train images) and `test` (test images) never show a
held-out (class, direction) pair; `heldout` (test images) shows only those,
for every object of the clip. Every draw comes from generators seeded with
(seed, split), so the same seed gives identical clips and captions, and clip
i is the same whatever the number of clips; its first garment is image i % n
of the split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ilct.data.clips import (DIRECTION_STEPS, DIRECTIONS, ClipDataset, check_clip_size, check_split, net_starts, track,
                             uniforms)
from ilct.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist
from ilct.errors import IlctError

# Caption names of the ten classes (ilct.data.fashion_mnist.CLASSES, as a phrase after "a"/"an").
NAMES = ("t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
HELDOUT = tuple(DIRECTIONS[c % len(DIRECTIONS)] for c in range(len(NAMES)))
SPEEDS = (1, 2, 3)  # pixels per frame (before frame_stride)


def heldout_pairs() -> list[tuple[int, str]]:
    """The (class, direction) pairs that training never sees."""
    return [(c, d) for c, d in enumerate(HELDOUT)]


def allowed_directions(label: int, split: str) -> tuple[str, ...]:
    if split == "heldout":
        return (HELDOUT[label],)
    return tuple(d for d in DIRECTIONS if d != HELDOUT[label])


def phrase(label: int, direction: str) -> str:
    name = NAMES[label]
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} moving {direction}"


class MovingFashionMNIST(ClipDataset):
    """Clips rendered on demand from a table of per-object parameters drawn at construction."""

    class_names = NAMES
    motion_names = DIRECTIONS

    def __init__(self, garments: np.ndarray, garment_labels: np.ndarray, split: str = "train", resolution: int = 32,
                 frames: int = 8, frame_stride: int = 1, count: int | None = None, objects: int = 1, seed: int = 0,
                 object_size: int | None = None, rgb: bool = False, source: str = "fashion_mnist"):
        check_split(split, "moving_fmnist")
        check_clip_size(frames, frame_stride)
        if garments.ndim != 3 or garments.dtype != np.uint8 or len(garments) != len(garment_labels) or not len(garments):
            raise ValueError(f"expected uint8 (n, h, w) garments with n labels, got {garments.dtype} {garments.shape}")
        size = object_size or resolution // 2
        if not 4 <= size < resolution:
            raise IlctError(f"moving_fmnist: object size {size} must be in 4..{resolution - 1} (resolution {resolution})")
        if objects not in (1, 2):
            raise IlctError(f"moving_fmnist: objects must be 1 or 2, got {objects}")
        count = len(garments) if count is None else count
        if count < 1:
            raise IlctError(f"moving_fmnist: count must be >= 1, got {count}")
        self.garments, self.garment_labels = garments, np.asarray(garment_labels, np.int64)
        self.resolution, self.size, self.rgb, self.split = resolution, size, rgb, split
        self.frames, self.frame_stride = frames, frame_stride
        self.shape = (3 if rgb else 1, frames, resolution, resolution)
        self.name = (f"moving_fmnist:{source}/{split}@{resolution}x{frames}s{frame_stride}"
                     f"o{objects}n{count}z{size}seed{seed}{'rgb' if rgb else ''}")

        length = resolution - size  # positions 0..length keep the garment inside the canvas
        n, k = count, objects
        u = uniforms(seed, split, n, k, 5)  # (5, n, k); clip i's draws do not depend on count
        image = np.empty((n, k), np.int64)
        image[:, 0] = np.arange(n) % len(garments)
        image[:, 1:] = (u[0, :, 1:] * len(garments)).astype(np.int64)
        label = self.garment_labels[image]
        direction = np.empty((n, k), np.int64)
        for c in np.unique(label):
            allowed = [DIRECTIONS.index(d) for d in allowed_directions(int(c), split)]
            at = label == c
            direction[at] = np.asarray(allowed)[(u[1][at] * len(allowed)).astype(np.int64)]
        speed = np.asarray(SPEEDS)[(u[2] * len(SPEEDS)).astype(np.int64)]
        across = (u[3] * (length + 1)).astype(np.int64)  # position on the other axis, fixed
        along = np.empty((n, k), np.int64)
        for s in SPEEDS:
            for d, name in enumerate(DIRECTIONS):
                at = (speed == s) & (direction == d)
                if at.any():
                    starts = net_starts(sum(DIRECTION_STEPS[name]), s * frame_stride, frames, length)
                    along[at] = starts[(u[4][at] * len(starts)).astype(np.int64)]
        self.image, self.object_labels, self.object_motions = image, label, direction
        self.speed, self.along, self.across = speed, along, across
        self.labels, self.motions = label[:, 0].copy(), direction[:, 0].copy()
        self.captions = [" and ".join(phrase(int(label[i, j]), DIRECTIONS[direction[i, j]]) for j in range(k))
                         for i in range(n)]

    def positions(self, i: int, j: int) -> np.ndarray:
        """(T, 2) top-left (x, y) of object j of clip i in each frame."""
        name = DIRECTIONS[self.object_motions[i, j]]
        dx, dy = DIRECTION_STEPS[name]
        length = self.resolution - self.size
        moving = track(int(self.along[i, j]), dx + dy, int(self.speed[i, j]) * self.frame_stride, self.frames, length)
        fixed = np.full(self.frames, self.across[i, j])
        return np.stack([moving, fixed] if dx else [fixed, moving], axis=1)

    def clips_at(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx).reshape(-1)
        c, t, h, w = self.shape
        out = np.zeros((len(idx), t, h, w), np.uint8)
        s = self.size
        for row, i in enumerate(idx):
            for j in range(self.image.shape[1]):
                sprite = np.asarray(Image.fromarray(self.garments[self.image[i, j]]).resize((s, s), Image.BICUBIC))
                for f, (x, y) in enumerate(self.positions(int(i), j)):
                    region = out[row, f, y : y + s, x : x + s]
                    np.maximum(region, sprite, out=region)
        out = out[..., None]
        return np.repeat(out, 3, axis=-1) if self.rgb else out


def load_moving_fmnist(root: str | Path = "", split: str = "train", resolution: int = 32, frames: int = 8,
                       frame_stride: int = 1, rgb: bool = False, **options) -> MovingFashionMNIST:
    """Moving Fashion-MNIST from the Fashion-MNIST files in `root` (train images for split train,
    test images for test and heldout). `options`: count, objects, seed, object_size."""
    check_split(split, "moving_fmnist")
    root = root or DEFAULT_ROOT
    base = load_fashion_mnist(root, "train" if split == "train" else "test", 28)
    return MovingFashionMNIST(base.images[..., 0], base.labels, split, resolution, frames, frame_stride, rgb=rgb,
                              source=base.name, **options)
