"""Clips as animated GIFs and as PNG strips (rows = clips, columns = frames), written atomically.

Clips are uint8 (N, T, H, W, C) arrays (C = 1 or 3), one (T, H, W, C) clip at a
time for a GIF. Layout comes from ilct.io.grid.make_grid; .npz files of clips
come from ilct.io.grid.save_npz. GIF holds at most 256 colours per frame:
grayscale and clips with few colours round-trip exactly, others are quantized,
so use the PNG strip or the .npz for anything measured. Pillow merges a frame
identical to the one before it into that frame (their durations add up), so
a GIF may hold fewer frames than the clip while playing for as long.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ilct.io.grid import make_grid, save_png


def _check_clip(clip: np.ndarray) -> None:
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] not in (1, 3) or not len(clip):
        raise ValueError(f"a clip must be uint8 (T, H, W, C) with T >= 1 and C 1 or 3, got {clip.dtype} {clip.shape}")


def _check_clips(clips: np.ndarray) -> None:
    if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] not in (1, 3) or not clips.shape[0] * clips.shape[1]:
        raise ValueError(f"clips must be uint8 (N, T, H, W, C) with C 1 or 3, got {clips.dtype} {clips.shape}")


def save_gif(clip: np.ndarray, path: str | Path, duration: int | Sequence[int] = 125, scale: int = 1) -> None:
    """One uint8 (T, H, W, C) clip as an animated GIF that loops forever, `duration` milliseconds per
    frame (one value, or one per frame), each frame enlarged `scale` times (nearest); written atomically."""
    _check_clip(clip)
    durations = [int(duration)] * len(clip) if isinstance(duration, (int, np.integer)) else [int(d) for d in duration]
    if len(durations) != len(clip) or min(durations) < 1:
        raise ValueError(f"duration must be one positive value or one per frame ({len(clip)}), got {duration!r}")
    frames = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in clip]
    if scale > 1:
        frames = [f.resize((f.width * scale, f.height * scale), Image.NEAREST) for f in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], loop=0, duration=durations)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def clip_strip(clips: np.ndarray, pad: int = 2) -> np.ndarray:
    """uint8 (N, T, H, W, C) -> one image: row n holds the T frames of clip n, left to right."""
    _check_clips(clips)
    n, t, h, w, c = clips.shape
    return make_grid(clips.reshape(n * t, h, w, c), cols=t, pad=pad)


def save_clip_strip(clips: np.ndarray, path: str | Path, scale: int = 1, pad: int = 2) -> None:
    """The PNG of clip_strip (lossless, atomic, as ilct.io.grid.save_png)."""
    save_png(clip_strip(clips, pad), path, scale)


def grid_frames(clips: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (N, T, H, W, C) -> (T, H', W', C): frame k is the grid of every clip's frame k, for one GIF
    of many clips playing side by side."""
    _check_clips(clips)
    return np.stack([make_grid(clips[:, k], cols, pad) for k in range(clips.shape[1])])
