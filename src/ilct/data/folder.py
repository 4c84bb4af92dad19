"""A folder of images (recursive; png, jpg, webp): center crop and resize as ADM does, RGB.

Opening the folder only lists its files; each file is decoded once, when its
batch is read (`read_at`), and a file that cannot be decoded there (not an
image, damaged data, more pixels than `max_pixels`) is passed over and reported
with its reason, never a crash; `images_at` refuses such a file instead. With
`labels_from_subfolders`, each first-level sub-folder is a class (sorted names).

Every Pillow mode becomes uint8 RGB with its real range: 16-bit greyscale
("I;16*", and "I", taken as 16-bit data) maps 0..65535 to 0..255 (x / 257,
rounded; "I" clipped to that range), "F" maps 0..1 to 0..255 (clipped),
palettes are expanded, and an alpha channel (LA, RGBA, a palette's
transparency) is composited on white, as the emoji are.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from ilct.data.images import ImageDataset, Unreadable
from ilct.errors import IlctError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp"}
# Pillow's own refusal threshold (2 x Image.MAX_IMAGE_PIXELS, about 13,400 x 13,400): nothing Pillow opens by
# default is refused, and one such image decoded as RGB takes about 0.5 GB (images are decoded one at a time).
MAX_PIXELS = 178_956_970
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
              Image.DecompressionBombError, Image.DecompressionBombWarning)
ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}


def center_crop_resize(img: Image.Image, size: int) -> np.ndarray:
    """ADM's recipe: halve with BOX while the short side is >= 2 size, BICUBIC to size, center crop."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(max(size, round(x * scale)) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 4) -> (H, W, 3): c a / 255 + 255 (1 - a / 255), rounded."""
    c, a = rgba[..., :3].astype(np.float64), rgba[..., 3:].astype(np.float64) / 255.0
    return np.round(c * a + 255.0 * (1.0 - a)).astype(np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """A decoded image of any Pillow mode as 8-bit RGB with its real range (see the module docstring)."""
    if im.mode.startswith("I;16") or im.mode == "I":
        v = np.clip(np.asarray(im, dtype=np.int32), 0, 65535)
        return Image.fromarray(((v + 128) // 257).astype(np.uint8)).convert("RGB")  # round(v / 257)
    if im.mode == "F":
        grey = np.round(np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0) * 255.0)
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    if im.mode in ALPHA_MODES or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        return Image.fromarray(_on_white(np.asarray(im.convert("RGBA"))))
    return im if im.mode == "RGB" else im.convert("RGB")


@contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """Pillow's decompression-bomb guard off (its warning never printed) while read_image applies its own
    limit; Pillow's limit is a process-wide setting, restored on the way out."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image at `path` as 8-bit RGB; an exception of UNREADABLE when it cannot be decoded or has more
    than `max_pixels` pixels (checked from the header, before anything is decoded)."""
    with _own_pixel_limit(), Image.open(path) as im:
        w, h = im.size
        if w * h > max_pixels:
            raise Image.DecompressionBombError(f"{w}x{h} = {w * h:,} pixels, more than the limit of {max_pixels:,} "
                                               "(--max-pixels)")
        im.load()
        return to_rgb(im)


def reason(e: BaseException) -> str:
    """One line saying why a file could not be read."""
    text = getattr(e, "strerror", None) if isinstance(e, OSError) else None
    return " ".join(str(text or e).split()) or type(e).__name__


class FolderImages(ImageDataset):
    def __init__(self, root: str | Path, resolution: int, labels_from_subfolders: bool = False,
                 max_pixels: int = MAX_PIXELS):
        root_path = Path(root) if root else None
        if root_path is None or not root_path.is_dir():
            raise IlctError(f"image folder not found: {root or '(empty path)'}")
        self.files = sorted(p for p in root_path.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        if not self.files:
            raise IlctError(f"no readable images in {root_path} (no {', '.join(sorted(EXTENSIONS))} files)")
        rel = [f.relative_to(root_path).parts for f in self.files]
        classes = sorted({p[0] for p in rel if len(p) > 1})
        self.classes = classes if labels_from_subfolders else []
        self.labels = np.asarray(
            [classes.index(p[0]) if labels_from_subfolders and len(p) > 1 else -1 for p in rel], np.int64
        )
        self.resolution, self.max_pixels = resolution, max_pixels
        self.shape = (3, resolution, resolution)
        self.name = f"folder:{root_path.resolve()}@{resolution}"

    def read_at(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Unreadable]]:
        """Each file decoded once: (uint8 images of the readable ones, which were readable, the unreadable ones)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        images, ok, bad = [], np.zeros(len(idx), bool), []
        for k, i in enumerate(idx):
            try:
                images.append(center_crop_resize(read_image(self.files[i], self.max_pixels), self.resolution))
                ok[k] = True
            except UNREADABLE as e:
                bad.append(Unreadable(int(i), str(self.files[i]), reason(e)))
        empty = np.empty((0, self.resolution, self.resolution, 3), np.uint8)
        return (np.stack(images) if images else empty), ok, bad

    def images_at(self, idx: np.ndarray) -> np.ndarray:
        images, _, bad = self.read_at(idx)
        if bad:
            raise IlctError(f"unreadable image {bad[0].path}: {bad[0].reason}")
        return images


def load_image_folder(root: str | Path, resolution: int, labels_from_subfolders: bool = False,
                      max_pixels: int = MAX_PIXELS) -> FolderImages:
    return FolderImages(root, resolution, labels_from_subfolders, max_pixels)
