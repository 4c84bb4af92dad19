"""Sample grids as PNG (never JPEG) and sample arrays as .npz."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image


def make_grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (rows*H, cols*W, C) image with white padding."""
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = images[k]
    return out


def save_png(image: np.ndarray, path: str | Path, scale: int = 1) -> None:
    """Write atomically, always as PNG (lossless) whatever the file name says; grayscale stays single-channel."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def save_npz(images: np.ndarray, path: str | Path) -> None:
    """uint8 (N, H, W, C) samples, or (N, T, H, W, C) clips, written atomically under two keys: `images`,
    and `arr_0`, the key the ADM evaluator (guided-diffusion's evaluations/evaluator.py) reads sample
    batches from."""
    if images.dtype != np.uint8 or images.ndim not in (4, 5):
        raise ValueError(f"samples must be uint8 (N, H, W, C) or (N, T, H, W, C), got {images.dtype} {images.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npz")
    np.savez(tmp, images=images, arr_0=images)
    os.replace(tmp, path)
