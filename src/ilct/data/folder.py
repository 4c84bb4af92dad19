"""A folder of images (recursive): center crop and resize, RGB (ADM-style preprocessing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ilct.data.images import ImageDataset
from ilct.errors import IlctError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp"}


def center_crop_resize(img: Image.Image, size: int) -> np.ndarray:
    """ADM's recipe: halve with BOX while large, then BICUBIC to size on the short side, center crop."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def load_image_folder(root: str | Path, resolution: int) -> ImageDataset:
    root = Path(root) if root else None
    if root is None or not root.is_dir():
        raise IlctError(f"image folder not found: {root or '(data.root is empty)'}; set --set data.root=DIR")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    images, skipped = [], 0
    for f in files:
        try:
            with Image.open(f) as im:
                images.append(center_crop_resize(im.convert("RGB"), resolution))
        except (UnidentifiedImageError, OSError, ValueError):
            skipped += 1
    if not images:
        raise IlctError(f"no readable images in {root} ({len(files)} candidate files, {skipped} unreadable)")
    return ImageDataset(np.stack(images), np.full(len(images), -1, dtype=np.int64), f"folder:{root.resolve()}@{resolution}")
