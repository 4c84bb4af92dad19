"""Autoencoders: one protocol (base.Autoencoder), and the backends behind `load_autoencoder`.

Clips: `for_clips(ae)` is a video VAE itself (diffusers_video) or an image autoencoder frame by frame (frames).
"""

from __future__ import annotations

from ilct.autoencoders.base import Autoencoder
from ilct.autoencoders.diffusers_vae import DiffusersVAE
from ilct.autoencoders.diffusers_video import VIDEO_VAES, DiffusersVideoVAE, diffusers_class
from ilct.autoencoders.frames import FrameByFrame, for_clips
from ilct.autoencoders.kl import KLAutoencoder, KLAutoencoderConfig
from ilct.autoencoders.taesd import TAESD
from ilct.errors import IlctError


def load_autoencoder(kind: str, path: str) -> Autoencoder:
    """The frozen autoencoder a config names (`autoencoder.kind`, `autoencoder.path`)."""
    if not path:
        raise IlctError("autoencoder.path is empty: train one with `ilct autoencoder --out DIR` "
                        "and pass --autoencoder DIR (or --set autoencoder.path=...)")
    if kind == "builtin":
        return KLAutoencoder.load(path)
    if kind == "taesd":
        return TAESD.load(path)
    if kind == "diffusers":  # an AutoencoderKL (images), or a video VAE by its config's class name

        return DiffusersVideoVAE.load(path) if diffusers_class(path) in VIDEO_VAES else DiffusersVAE.load(path)
    raise IlctError(f"unknown autoencoder kind {kind!r}")


__all__ = ["Autoencoder", "FrameByFrame", "KLAutoencoder", "KLAutoencoderConfig", "for_clips", "load_autoencoder"]
