"""Image datasets: uint8 images by index, converted to float [-1, 1] NCHW per batch.

`ArrayImages` holds its images in memory (Fashion-MNIST, emoji); `FolderImages`
(ilct.data.folder) reads files on demand, so a large folder is never held in
memory; `ResizedImages` renders another dataset at another size and/or as RGB.
`read_at` is what an encoder reads through: the images that could be read and
the files that could not (a folder's damaged files), so those are skipped and
counted where they are decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Unreadable:
    """A file passed over while reading: its image index, its path and why, in one line."""

    index: int
    path: str
    reason: str


class ImageDataset:
    name: str  # identifies the data for the latent cache, e.g. "fashion_mnist/train@32"
    labels: np.ndarray  # (N,) int64; -1 where unlabelled
    shape: tuple[int, int, int]  # (C, H, W) of one image
    skipped: int = 0  # unreadable files passed over
    captions: list[str] | None = None  # one text per image where the dataset has them (emoji names)

    def __len__(self) -> int:
        return len(self.labels)

    def images_at(self, idx: np.ndarray) -> np.ndarray:
        """uint8 (n, H, W, C) images at the given indices."""
        raise NotImplementedError

    def read_at(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Unreadable]]:
        """(uint8 images of the readable ones, a bool mask of which were readable, the unreadable ones);
        here every image is readable."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return self.images_at(idx), np.ones(len(idx), bool), []

    def batch_indices(self, idx: np.ndarray) -> torch.Tensor:
        """float32 NCHW in [-1, 1]."""
        return to_float(self.images_at(np.asarray(idx)))

    def batch(self, start: int, stop: int) -> torch.Tensor:
        return self.batch_indices(np.arange(start, min(stop, len(self))))


class ArrayImages(ImageDataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, name: str, skipped: int = 0):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 (N, H, W, C) images, got {images.dtype} {images.shape}")
        self.images, self.labels, self.name, self.skipped = images, labels, name, skipped
        self.shape = (images.shape[3], images.shape[1], images.shape[2])

    def images_at(self, idx: np.ndarray) -> np.ndarray:
        return self.images[idx]


class ResizedImages(ImageDataset):
    """Another dataset rendered at `resolution` (bicubic) and, with rgb=True, as three channels."""

    def __init__(self, base: ImageDataset, resolution: int, rgb: bool):
        self.base, self.resolution, self.rgb = base, resolution, rgb
        self.labels, self.skipped, self.captions = base.labels, base.skipped, base.captions
        self.shape = (3 if rgb else base.shape[0], resolution, resolution)
        self.name = f"{base.name}->{resolution}{'rgb' if rgb else ''}"

    def images_at(self, idx: np.ndarray) -> np.ndarray:
        out = []
        for img in self.base.images_at(idx):
            im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            im = im.resize((self.resolution, self.resolution), Image.BICUBIC)
            im = im.convert("RGB") if self.rgb else im
            a = np.asarray(im)
            out.append(a[..., None] if a.ndim == 2 else a)
        return np.stack(out)


class Subset(ImageDataset):
    """The first n images of another dataset."""

    def __init__(self, base: ImageDataset, n: int):
        self.base = base
        self.labels = base.labels[: min(n, len(base))]
        self.shape, self.skipped = base.shape, base.skipped
        self.captions = base.captions[: len(self.labels)] if base.captions else None
        self.name = f"{base.name}[:{len(self.labels)}]"

    def images_at(self, idx: np.ndarray) -> np.ndarray:
        return self.base.images_at(idx)

    def read_at(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Unreadable]]:
        return self.base.read_at(idx)


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, H, W, C) -> float32 NCHW in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW -> uint8 NHWC (what grids and .npz files hold); clips (N, C, T, H, W) -> (N, T, H, W, C)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(1, -1).cpu().numpy()
