"""Datasets (uint8 images by index, float [-1, 1] batches, integer labels) and latent directories."""

from __future__ import annotations

from ilct.data.fashion_mnist import load_fashion_mnist
from ilct.data.images import ArrayImages, ImageDataset, ResizedImages
from ilct.errors import IlctError

DATASETS = ("fashion_mnist", "image_folder", "emoji")


def load_dataset(
    dataset: str,
    root: str = "",
    split: str = "train",
    resolution: int = 32,
    rgb: bool = False,
    labels_from_subfolders: bool = False,
) -> ImageDataset:
    """One of DATASETS, rendered at `resolution` (and as RGB when asked)."""
    if dataset == "fashion_mnist":
        base = load_fashion_mnist(root or "/usr/share/datasets/fashion-mnist", split, 32)
        return base if (resolution == 32 and not rgb) else ResizedImages(base, resolution, rgb)
    if dataset == "image_folder":
        from ilct.data.folder import load_image_folder

        return load_image_folder(root, resolution, labels_from_subfolders)
    if dataset == "emoji":
        from ilct.data.emoji import DEFAULT_FONT, load_emoji

        return load_emoji(root or DEFAULT_FONT, resolution)[0]
    raise IlctError(f"unknown dataset {dataset!r} (datasets: {', '.join(DATASETS)})")


__all__ = ["ArrayImages", "DATASETS", "ImageDataset", "ResizedImages", "load_dataset", "load_fashion_mnist"]
