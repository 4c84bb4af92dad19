"""Emoji clips: Noto Color Emoji glyphs sliding, zooming and turning on white, captioned with name + motion.

Each clip shows one glyph (ilct.data.emoji: the real colour bitmaps, named from
Unicode) doing one of MOTIONS:

- sliding left/right/up/down: the glyph at half the canvas, 1-3 pixels per
  frame, bouncing off the edges, started so that the clip ends further along
  its direction than it began (ilct.data.clips.net_starts);
- zooming in/out: centred, its side growing from 35% to 95% of the canvas
  (or shrinking back) linearly over the clip, whatever `frame_stride`;
- turning clockwise/counterclockwise: centred at 70% of the canvas, upright in
  the first frame, 10-20 degrees per frame.

`frame_stride` s shows every s-th frame of slides and turns. Caption:
"grinning face sliding left". Held out: one motion per caption name,
`heldout_motion(name)` (the CRC-32 of the name modulo 8, so two glyphs with one
name share it); `train` and `test` never show a held-out (name, motion) pair,
`heldout` shows only those. `train` and `test` differ only in their draws.
Deterministic from (seed, split), clip i the same whatever the number of
clips; clip i shows glyph i % n.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ilct.data.clips import (DIRECTION_STEPS, DIRECTIONS, ClipDataset, check_clip_size, check_split, net_starts, track,
                             uniforms)
from ilct.data.emoji import DEFAULT_FONT, load_emoji
from ilct.errors import IlctError

MOTIONS = tuple(f"sliding {d}" for d in DIRECTIONS) + (
    "zooming in", "zooming out", "turning clockwise", "turning counterclockwise")
SPEEDS = (1, 2, 3)  # sliding, pixels per frame
TURNS = (10, 15, 20)  # turning, degrees per frame
ZOOM = (0.35, 0.95)  # zooming, the glyph's side as a fraction of the canvas
SLIDE_SIZE, TURN_SIZE = 0.5, 0.7  # the glyph's side as a fraction of the canvas
WHITE = 255


def heldout_motion(name: str) -> int:
    """The index into MOTIONS of the motion that training never shows with this caption name."""
    return zlib.crc32(name.encode("utf-8")) % len(MOTIONS)


class EmojiClips(ClipDataset):
    """Clips rendered on demand from a table of per-clip parameters drawn at construction."""

    motion_names = MOTIONS

    def __init__(self, glyphs: np.ndarray, names: list[str], split: str = "train", resolution: int = 32,
                 frames: int = 8, frame_stride: int = 1, count: int | None = None, seed: int = 0,
                 source: str = "emoji"):
        check_split(split, "emoji_clips")
        check_clip_size(frames, frame_stride)
        if glyphs.ndim != 4 or glyphs.shape[-1] != 3 or glyphs.dtype != np.uint8 or len(glyphs) != len(names):
            raise ValueError(f"expected uint8 (n, h, w, 3) glyphs with n names, got {glyphs.dtype} {glyphs.shape}")
        count = len(glyphs) if count is None else count
        if count < 1:
            raise IlctError(f"emoji_clips: count must be >= 1, got {count}")
        if resolution < 8:
            raise IlctError(f"emoji_clips: resolution must be >= 8, got {resolution}")
        self.glyphs, self.class_names = glyphs, tuple(names)
        self.resolution, self.frames, self.frame_stride, self.split = resolution, frames, frame_stride, split
        self.shape = (3, frames, resolution, resolution)
        self.name = f"emoji_clips:{source}/{split}@{resolution}x{frames}s{frame_stride}n{count}seed{seed}"

        u = uniforms(seed, split, count, 1, 5)[..., 0]  # (5, count); clip i's draws do not depend on count
        self.labels = np.arange(count, dtype=np.int64) % len(glyphs)  # the glyph index
        held = np.asarray([heldout_motion(n) for n in names])[self.labels]
        if split == "heldout":
            motion = held
        else:  # one of the other motions, uniformly
            motion = (u[0] * (len(MOTIONS) - 1)).astype(np.int64)
            motion = motion + (motion >= held)
        self.motions = motion.astype(np.int64)
        self.speed = np.asarray(SPEEDS)[(u[1] * len(SPEEDS)).astype(np.int64)]
        self.turn = np.asarray(TURNS)[(u[2] * len(TURNS)).astype(np.int64)]
        self.across = (u[3] * (self._slide_length() + 1)).astype(np.int64)
        self.along = np.zeros(count, np.int64)
        for s in SPEEDS:
            for d, name in enumerate(DIRECTIONS):
                at = (self.speed == s) & (self.motions == d)
                if at.any():
                    starts = net_starts(sum(DIRECTION_STEPS[name]), s * frame_stride, frames, self._slide_length())
                    self.along[at] = starts[(u[4][at] * len(starts)).astype(np.int64)]
        self.captions = [f"{names[g]} {MOTIONS[m]}" for g, m in zip(self.labels, self.motions)]

    def _slide_length(self) -> int:
        return self.resolution - round(SLIDE_SIZE * self.resolution)

    def _sprite(self, glyph: np.ndarray, side: int) -> Image.Image:
        return Image.fromarray(glyph).resize((max(side, 1), max(side, 1)), Image.LANCZOS)

    def _render(self, i: int) -> np.ndarray:
        r, t = self.resolution, self.frames
        glyph, motion = self.glyphs[self.labels[i]], MOTIONS[self.motions[i]]
        out = np.full((t, r, r, 3), WHITE, np.uint8)
        if motion.startswith("sliding"):
            dx, dy = DIRECTION_STEPS[motion.split()[1]]
            side = round(SLIDE_SIZE * r)
            moving = track(int(self.along[i]), dx + dy, int(self.speed[i]) * self.frame_stride, t, r - side)
            fixed = np.full(t, self.across[i])
            xs, ys = (moving, fixed) if dx else (fixed, moving)
            sprite = np.asarray(self._sprite(glyph, side))
            for f in range(t):
                out[f, ys[f] : ys[f] + side, xs[f] : xs[f] + side] = sprite
        elif motion.startswith("zooming"):
            lo, hi = ZOOM if motion.endswith("in") else ZOOM[::-1]
            for f in range(t):
                side = round(r * (lo + (hi - lo) * f / max(t - 1, 1)))
                at = (r - side) // 2
                out[f, at : at + side, at : at + side] = np.asarray(self._sprite(glyph, side))
        else:  # turning; PIL's rotate turns counterclockwise for positive angles
            sign = -1 if motion.endswith(" clockwise") else 1
            side = round(TURN_SIZE * r)
            at = (r - side) // 2
            sprite = self._sprite(glyph, side)
            for f in range(t):
                angle = sign * int(self.turn[i]) * self.frame_stride * f
                turned = sprite.rotate(angle, Image.BICUBIC, fillcolor=(WHITE,) * 3)
                out[f, at : at + side, at : at + side] = np.asarray(turned)
        return out

    def clips_at(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx).reshape(-1)
        c, t, h, w = self.shape
        return np.stack([self._render(int(i)) for i in idx]) if len(idx) else np.zeros((0, t, h, w, c), np.uint8)


def load_emoji_clips(font: str | Path = "", split: str = "train", resolution: int = 32, frames: int = 8,
                     frame_stride: int = 1, **options) -> EmojiClips:
    """Emoji clips from the Noto Color Emoji font (ilct.data.emoji). `options`: count, seed."""
    check_split(split, "emoji_clips")
    glyphs, names = load_emoji(font or DEFAULT_FONT, resolution)
    return EmojiClips(glyphs.images, names, split, resolution, frames, frame_stride, source=Path(font or DEFAULT_FONT).name,
                      **options)
