"""The latent cache and the latent normalization of METHOD.md section 3.

A dataset is encoded once per (autoencoder, dataset) pair and cached as one
safetensors file keyed by both; runs copy the statistics they were trained
with into their run directory so they never depend on the cache afterwards.

Normalization (authors' code): per-element mean m and std s over the training
set (tensors of shape C x H x W), z = sigma_d (latent - m) / s.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm import tqdm

from ilct.autoencoders.base import Autoencoder
from ilct.data.images import ImageDataset
from ilct.errors import IlctError
from ilct.files import read_tensors, save_tensors


@dataclass
class LatentStats:
    mean: torch.Tensor  # (C, H, W) m
    std: torch.Tensor  # (C, H, W) s

    def normalize(self, latent: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
        """z = sigma_d (latent - m) / s."""
        return sigma_data * (latent - self.mean.to(latent.device)) / self.std.to(latent.device)

    def denormalize(self, z: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
        """latent = z s / sigma_d + m (the inverse of normalize)."""
        return z * self.std.to(z.device) / sigma_data + self.mean.to(z.device)

    @classmethod
    def of(cls, latents: torch.Tensor) -> "LatentStats":
        latents = latents.double()
        return cls(latents.mean(0).float(), latents.std(0).clamp_min(1e-6).float())

    def save(self, path: str | Path) -> None:
        save_tensors({"mean": self.mean, "std": self.std}, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> "LatentStats":
        t = read_tensors(path)
        if "mean" not in t or "std" not in t:
            raise IlctError(f"{path} holds no latent statistics")
        return cls(t["mean"], t["std"])


@dataclass
class LatentSet:
    latents: torch.Tensor  # raw latents (N, C, H, W) float32
    labels: torch.Tensor  # (N,) int64
    stats: LatentStats
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.latents.shape[1:])  # type: ignore[return-value]


def default_cache_dir() -> Path:
    return Path(os.environ.get("ILCT_CACHE", Path.home() / ".cache" / "ilct"))


def cache_key(ae: Autoencoder, data: ImageDataset) -> str:
    h = hashlib.sha256(f"{ae.fingerprint()}|{data.name}|{len(data)}|{data.shape}".encode())
    return h.hexdigest()[:20]


@torch.no_grad()
def encode_dataset(
    ae: Autoencoder, data: ImageDataset, batch_size: int = 256, device: str | torch.device = "cpu", progress: bool = True
) -> torch.Tensor:
    """All images through the encoder, in batches, with a progress bar."""
    if len(data) == 0:
        raise IlctError(f"dataset {data.name} is empty")
    if data.shape[0] != ae.image_channels:
        raise IlctError(f"dataset {data.name} has {data.shape[0]} channels, the autoencoder expects {ae.image_channels}")
    ae = ae.to(device).eval()
    out = []
    for s in tqdm(range(0, len(data), batch_size), desc="encode", disable=not progress, dynamic_ncols=True):
        out.append(ae.encode(data.batch(s, s + batch_size).to(device)).float().cpu())
    return torch.cat(out)


def cached_latents(
    ae: Autoencoder,
    data: ImageDataset,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> LatentSet:
    """The encoded dataset from the cache, encoding and caching it on first use."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache_dir / "latents" / f"{cache_key(ae, data)}.safetensors"
    if path.is_file():
        try:
            t = load_file(str(path))
            return LatentSet(t["latents"], t["labels"], LatentStats(t["mean"], t["std"]), path)
        except (SafetensorError, OSError, KeyError):
            pass  # a damaged cache entry is simply rebuilt
    latents = encode_dataset(ae, data, device=device, progress=progress)
    labels = torch.from_numpy(data.labels).long()
    stats = LatentStats.of(latents)
    try:
        save_tensors(
            {"latents": latents, "labels": labels, "mean": stats.mean, "std": stats.std},
            path,
            metadata={"autoencoder": ae.fingerprint(), "dataset": data.name},
        )
    except OSError as e:
        raise IlctError(f"cannot write the latent cache {path}: {e}") from None
    return LatentSet(latents, labels, stats, path)
