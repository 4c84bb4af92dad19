"""What a training run reads: its dataset (images, or clips), and its latents (a given latent directory, or the
cache, encoded on first use).
"""

from __future__ import annotations

import torch

from ilct.autoencoders import Autoencoder
from ilct.schema import Config
from ilct.data import load_dataset as load
from ilct.data.clips import ClipDataset
from ilct.data.images import ImageDataset
from ilct.errors import IlctError
from ilct.latents import LatentDir, LatentShards, cached_latents
from ilct.training.readers import READERS


def load_dataset(cfg: Config) -> ImageDataset | ClipDataset:
    """The images, or the clips (ilct.data.CLIP_DATASETS: data.frames frames data.frame_stride apart), of
    a run's config."""
    d = cfg.data
    return load(d.dataset, d.root, d.split, d.resolution, d.rgb, d.labels_from_subfolders, d.frames, d.frame_stride)


def load_latents(cfg: Config, ae: Autoencoder, device: torch.device, progress: bool) -> LatentDir | LatentShards:
    """The run's latents: a given latent directory (opened as data.reader reads it), or the cache (encoding on
    first use). Never a clip dataset's `heldout` split: it holds only the held-out (class, motion) pairs, never
    trained on."""
    if cfg.data.split == "heldout" and not cfg.data.latents:
        raise IlctError(f"data.split=heldout: {cfg.data.dataset}'s held-out (class, motion) pairs are never trained on "
                        "(train on split train; sample their captions with `ilct sample --prompt`)")
    if cfg.data.latents:
        latents = READERS[cfg.data.reader].opens(cfg.data.latents)
        latents.check_autoencoder(ae)
        if (latents.meta.get("data") or {}).get("split") == "heldout":
            raise IlctError(f"data.latents={latents.path} holds the held-out split of {latents.meta.get('dataset', '?')}: "
                            "its (class, motion) pairs are never trained on (encode split train)")
        return latents
    return cached_latents(ae, load_dataset(cfg), cfg.data.cache_dir or None, device=device, progress=progress)
