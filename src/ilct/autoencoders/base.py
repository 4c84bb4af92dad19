"""The autoencoder protocol every backend implements.

Images cross this boundary as float32 NCHW in [-1, 1]; latents as raw
(unnormalized) float32 NCHW. Latent normalization (METHOD.md section 3) is not
the autoencoder's business: see ilct.latents.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class Autoencoder(nn.Module, ABC):
    image_channels: int
    latent_channels: int
    downsample: int  # image side / latent side
    has_posterior: bool = False  # a KL autoencoder's encoder predicts a Gaussian q(z|x); TAESD's does not

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> latents (the posterior mean for KL autoencoders)."""

    def posterior_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the Gaussian posterior q(z|x), in the units `encode` returns (its mean)."""
        raise NotImplementedError(f"{type(self).__name__} has a deterministic encoder: no posterior to sample")

    @abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] (not clamped)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A short string that changes whenever the weights or architecture change."""

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        if image_size % self.downsample:
            raise ValueError(f"image side {image_size} is not divisible by {self.downsample}")
        side = image_size // self.downsample
        return (self.latent_channels, side, side)
