"""Fashion-MNIST from the IDX gz files (Debian package dataset-fashion-mnist).

28x28 grayscale images, zero-padded to 32x32 (or to `resolution`), labels kept.

Splits: `train` (the 60,000 images of the training file) and `test` (the 10,000 of the test file), and
for choosing settings without touching the test split: `val`, the last twelfth of the training file (its
last 5,000 images), and `fit`, the others (train minus val). A model trained on `fit` never saw `val`.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ilct.data.images import ArrayImages
from ilct.errors import IlctError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "apt-get install dataset-fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
VAL_DIVISOR = 12  # the last n // 12 images of the training file (5,000 of 60,000): split val; the rest: split fit
SPLITS = ("train", "test", "fit", "val")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path: Path) -> np.ndarray:
    """Parse one (gzipped) IDX file of unsigned bytes."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise IlctError(f"cannot read {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise IlctError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IlctError(f"{path} is truncated")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    count = int(np.prod(dims))
    if len(data) - header != count:
        raise IlctError(f"{path} is truncated or corrupt: expected {count} values, found {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(root: str | Path = DEFAULT_ROOT, split: str = "train", resolution: int = 32) -> ArrayImages:
    """Images as (N, resolution, resolution, 1) uint8, centred by zero padding."""
    root = Path(root)
    if split not in SPLITS:
        raise IlctError(f"unknown Fashion-MNIST split {split!r} ({', '.join(SPLITS)})")
    if not root.is_dir():
        raise IlctError(f"Fashion-MNIST directory not found: {root} (install it with: {INSTALL_HINT}, or pass --data-dir)")
    img_file, lbl_file = (root / f for f in FILES["test" if split == "test" else "train"])
    for f in (img_file, lbl_file):
        if not f.is_file():
            raise IlctError(f"Fashion-MNIST file missing: {f} (install it with: {INSTALL_HINT}, or pass --data-dir)")
    images, labels = read_idx(img_file), read_idx(lbl_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise IlctError(f"Fashion-MNIST files in {root} have unexpected shapes {images.shape} / {labels.shape}")
    if split in ("fit", "val"):
        n_val = len(images) // VAL_DIVISOR
        if n_val < 1:
            raise IlctError(f"split {split}: the training file in {root} has {len(images)} images, too few to hold "
                            f"out a twelfth of them as val")
        keep = slice(len(images) - n_val, None) if split == "val" else slice(0, len(images) - n_val)
        images, labels = images[keep], labels[keep]
    if resolution < images.shape[1]:
        raise IlctError(f"resolution {resolution} is smaller than the 28x28 Fashion-MNIST images")
    pad = resolution - images.shape[1]
    lo, hi = pad // 2, pad - pad // 2
    images = np.pad(images, ((0, 0), (lo, hi), (lo, hi)))[..., None]
    return ArrayImages(images, labels.astype(np.int64), f"fashion_mnist/{split}@{resolution}")
