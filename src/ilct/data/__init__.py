"""Datasets (uint8 images or clips by index, float [-1, 1] batches, integer labels) and latent directories."""

from __future__ import annotations

from ilct.data.clips import ArrayClips, ClipDataset, ClipFrames
from ilct.data.emoji import DEFAULT_FONT, load_emoji
from ilct.data.emoji_clips import load_emoji_clips
from ilct.data.fashion_mnist import load_fashion_mnist
from ilct.data.folder import MAX_PIXELS, load_image_folder
from ilct.data.images import ArrayImages, ImageDataset, ResizedImages
from ilct.data.moving_fmnist import load_moving_fmnist
from ilct.data.video_folder import load_video_folder
from ilct.errors import IlctError

DATASETS = ("fashion_mnist", "image_folder", "emoji")  # images
CLIP_DATASETS = ("moving_fmnist", "emoji_clips", "video_folder")  # clips (ilct.data.clips)


def load_dataset(
    dataset: str,
    root: str = "",
    split: str = "train",
    resolution: int = 32,
    rgb: bool = False,
    labels_from_subfolders: bool = False,
    frames: int = 8,
    frame_stride: int = 1,
    max_pixels: int | None = None,
) -> ImageDataset | ClipDataset:
    """One of DATASETS (an ImageDataset) or CLIP_DATASETS (a ClipDataset of `frames` frames
    `frame_stride` apart), rendered at `resolution` (and as RGB when asked). `max_pixels`: an image
    folder's limit on one file's pixels (default ilct.data.folder.MAX_PIXELS)."""
    if dataset == "fashion_mnist":
        base = load_fashion_mnist(root or "/usr/share/datasets/fashion-mnist", split, 32)
        return base if (resolution == 32 and not rgb) else ResizedImages(base, resolution, rgb)
    if dataset == "image_folder":
        return load_image_folder(root, resolution, labels_from_subfolders, max_pixels or MAX_PIXELS)
    if dataset == "emoji":
        return load_emoji(root or DEFAULT_FONT, resolution)[0]
    if dataset == "moving_fmnist":
        return load_moving_fmnist(root, split, resolution, frames, frame_stride, rgb)
    if dataset == "emoji_clips":
        return load_emoji_clips(root, split, resolution, frames, frame_stride)
    if dataset == "video_folder":
        return load_video_folder(root, resolution, frames, frame_stride)
    raise IlctError(f"unknown dataset {dataset!r} (datasets: {', '.join(DATASETS + CLIP_DATASETS)})")


__all__ = ["ArrayClips", "ArrayImages", "CLIP_DATASETS", "ClipDataset", "ClipFrames", "DATASETS", "ImageDataset",
           "ResizedImages", "load_dataset", "load_fashion_mnist"]
