"""Autoencoders: one protocol (base.Autoencoder), and the backends behind `load_autoencoder`."""

from __future__ import annotations

from ilct.autoencoders.base import Autoencoder
from ilct.autoencoders.kl import KLAutoencoder, KLAutoencoderConfig
from ilct.errors import IlctError


def load_autoencoder(kind: str, path: str) -> Autoencoder:
    """The frozen autoencoder a config names (`autoencoder.kind`, `autoencoder.path`)."""
    if not path:
        raise IlctError("autoencoder.path is empty: train one with `ilct autoencoder --out DIR` "
                        "and pass --autoencoder DIR (or --set autoencoder.path=...)")
    if kind == "builtin":
        return KLAutoencoder.load(path)
    if kind == "taesd":
        from ilct.autoencoders.taesd import TAESD

        return TAESD.load(path)
    if kind == "diffusers":
        from ilct.autoencoders.diffusers_vae import DiffusersVAE

        return DiffusersVAE.load(path)
    raise IlctError(f"unknown autoencoder kind {kind!r}")


__all__ = ["Autoencoder", "KLAutoencoder", "KLAutoencoderConfig", "load_autoencoder"]
