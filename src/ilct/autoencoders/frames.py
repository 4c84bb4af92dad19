"""Any image autoencoder applied to clips frame by frame (issue #19, item 3).

Pixels (B, C, T, H, W) -> the frames as a batch of B*T images (B*T, C, H, W) -> the image
autoencoder -> latents (B, c, T, h, w), and back: T' = T (no temporal compression), and frame t of
a clip's latents is exactly the image autoencoder's latent of frame t. The built-in KL autoencoder,
the TAESD family (TAEF2) and diffusers' AutoencoderKL (SD-VAE) all work this way. At most `chunk`
frames go through the image autoencoder at once, so long clips fit in memory.
"""

from __future__ import annotations

from typing import Callable

import torch

from ilct.autoencoders.base import Autoencoder


class FrameByFrame(Autoencoder):
    takes_clips = True
    temporal_downsample = 1

    def __init__(self, image: Autoencoder, chunk: int = 64):
        super().__init__()
        if image.takes_clips:
            raise ValueError(f"{type(image).__name__} already takes clips")
        self.image = image
        self.chunk = chunk
        self.image_channels = image.image_channels
        self.latent_channels = image.latent_channels
        self.downsample = image.downsample
        self.has_posterior = image.has_posterior

    def per_frame(self, fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """fn (giving a tuple of per-image tensors) over every frame of x (B, C, T, H, W), each result
        back as a clip (B, C', T, H', W'); an image (B, C, H, W) is one call fn(x)."""
        if x.ndim == 4:
            return fn(x)
        B, C, T, H, W = x.shape
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)  # frame t of clip b is row b*T + t
        parts = [fn(part) for part in frames.split(self.chunk)]
        return tuple(torch.cat(ys).reshape(B, T, *ys[0].shape[1:]).transpose(1, 2).contiguous() for ys in zip(*parts))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.per_frame(lambda f: (self.image.encode(f),), x)[0]

    def posterior_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.per_frame(self.image.posterior_moments, x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.per_frame(lambda f: (self.image.decode(f),), z)[0]

    def fingerprint(self) -> str:
        """The image autoencoder's, marked: clip latents are not image latents (another shape)."""
        return f"frames-{self.image.fingerprint()}"


def for_clips(ae: Autoencoder) -> Autoencoder:
    """An autoencoder that takes clips: `ae` itself if it does (a video VAE), else `ae` frame by frame."""
    return ae if ae.takes_clips else FrameByFrame(ae)
