"""Generated samples on disk: images as one PNG grid; clips as a PNG strip or one animated GIF of them all."""

from __future__ import annotations

import numpy as np

from ilct.io.animation import grid_frames, save_clip_strip, save_gif
from ilct.io.grid import make_grid, save_png


def save_samples(images: np.ndarray, out: str, gif: str | None, scale: int, duration: int) -> list[str]:
    """Images (n, H, W, C) as one PNG grid; clips (n, T, H, W, C) as a PNG strip (rows = samples, columns =
    frames) for a .png, and one animated GIF of every sample playing side by side for a .gif (`out` or `gif`).
    The paths written."""
    if images.ndim == 4:
        save_png(make_grid(images), out, scale=scale)
        return [out]
    for path in (out, gif):
        if path and path.lower().endswith(".gif"):
            save_gif(grid_frames(images), path, duration=duration, scale=scale)
        elif path:
            save_clip_strip(images, path, scale=scale)
    return [p for p in (out, gif) if p]
