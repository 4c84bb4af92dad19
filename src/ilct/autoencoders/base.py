"""The autoencoder protocol every backend implements.

Images cross this boundary as float32 NCHW in [-1, 1]; latents as raw
(unnormalized) float32 NCHW. Latent normalization (METHOD.md section 3) is not
the autoencoder's business: see ilct.latents.

Clips: an autoencoder with `takes_clips` (ilct.autoencoders.frames.FrameByFrame around any image
autoencoder, or a diffusers video VAE, ilct.autoencoders.diffusers_video) takes pixels
(B, C, T, H, W) and gives latents (B, c, T', h, w), T' = `latent_frames(T)`; it also takes an image
(B, C, H, W) as a clip of one frame and gives (B, c, h, w).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from ilct.errors import IlctError


class Autoencoder(nn.Module, ABC):
    image_channels: int
    latent_channels: int
    downsample: int  # image side / latent side
    has_posterior: bool = False  # a KL autoencoder's encoder predicts a Gaussian q(z|x); TAESD's does not
    takes_clips: bool = False  # encode / decode take clips (B, C, T, H, W) (and images as one-frame clips)
    temporal_downsample: int = 1  # clip frames per latent frame, after the first (causal video VAEs)

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

    def latent_frames(self, frames: int) -> int:
        """T' latent frames of a clip of T = `frames` frames: T (frame by frame), or 1 + (T - 1) / k for a
        causal video VAE that keeps the first frame and compresses the rest k = temporal_downsample times
        (T must then be 1 + a multiple of k, which decodes back to T frames)."""
        k = self.temporal_downsample
        if frames < 1 or (frames - 1) % k:
            raise IlctError(f"{type(self).__name__} compresses time {k}x after the first frame: clips need 1 + a "
                            f"multiple of {k} frames (1, {1 + k}, {1 + 2 * k}, ...), got {frames}")
        return 1 + (frames - 1) // k

    def clip_latent_shape(self, image_size: int, frames: int) -> tuple[int, int, int, int]:
        """(c, T', h, w) of a clip of `frames` square frames of side image_size."""
        c, h, w = self.latent_shape(image_size)
        return (c, self.latent_frames(frames), h, w)
