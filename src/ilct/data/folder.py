"""A folder of images (recursive; png, jpg, webp): center crop and resize as ADM does, RGB.

Files are checked once when the folder is opened (unreadable ones are skipped
and counted, never a crash) and read again batch by batch, so a large folder
is never held in memory. With `labels_from_subfolders`, each first-level
sub-folder is a class (sorted names).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ilct.data.images import ImageDataset
from ilct.errors import IlctError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp"}
UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def center_crop_resize(img: Image.Image, size: int) -> np.ndarray:
    """ADM's recipe: halve with BOX while the short side is >= 2 size, BICUBIC to size, center crop."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(max(size, round(x * scale)) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


class FolderImages(ImageDataset):
    def __init__(self, root: str | Path, resolution: int, labels_from_subfolders: bool = False):
        root_path = Path(root) if root else None
        if root_path is None or not root_path.is_dir():
            raise IlctError(f"image folder not found: {root or '(empty path)'}")
        candidates = sorted(p for p in root_path.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        self.files: list[Path] = []
        for f in candidates:
            try:
                with Image.open(f) as im:
                    im.verify()
                self.files.append(f)
            except UNREADABLE:
                pass
        self.skipped = len(candidates) - len(self.files)
        if not self.files:
            raise IlctError(f"no readable images in {root_path} ({len(candidates)} image files, {self.skipped} unreadable)")
        rel = [f.relative_to(root_path).parts for f in self.files]
        classes = sorted({p[0] for p in rel if len(p) > 1})
        self.classes = classes if labels_from_subfolders else []
        self.labels = np.asarray(
            [classes.index(p[0]) if labels_from_subfolders and len(p) > 1 else -1 for p in rel], np.int64
        )
        self.resolution = resolution
        self.shape = (3, resolution, resolution)
        self.name = f"folder:{root_path.resolve()}@{resolution}"

    def images_at(self, idx: np.ndarray) -> np.ndarray:
        out = []
        for i in idx:
            try:
                with Image.open(self.files[i]) as im:
                    out.append(center_crop_resize(im.convert("RGB"), self.resolution))
            except UNREADABLE as e:
                raise IlctError(f"{self.files[i]} became unreadable while encoding: {e}") from None
        return np.stack(out)


def load_image_folder(root: str | Path, resolution: int, labels_from_subfolders: bool = False) -> FolderImages:
    return FolderImages(root, resolution, labels_from_subfolders)
