"""diffusers' video VAEs (AutoencoderKLWan, AutoencoderKLLTXVideo, AutoencoderKLCogVideoX) behind the
autoencoder protocol (issue #19, item 3).

Optional: `pip install ilct[diffusers]`. Chosen by `autoencoder.kind=diffusers` when the folder's (or
id's) config.json names one of these classes (`load_autoencoder`); a plain AutoencoderKL stays
ilct.autoencoders.diffusers_vae. Pixels (B, 3, T, H, W) in [-1, 1] -> latents (B, c, T', h, w), the
posterior mean times the config's scaling_factor where it has one (Wan has none: 1; its latents_mean /
latents_std are not applied, ilct normalizes latents itself, ilct.latents). The three are causal in
time: the first frame is encoded alone and the rest k = `temporal_downsample` frames per latent frame,
so a clip has 1 + m k frames, T' = 1 + m, and decodes back to T frames; an image (B, 3, H, W) is a clip
of one frame.

The compression factors come from the architecture (a tiny test model's differ from the released
ones, and Wan's `scale_factor_*` config entries are not read by the model): Wan, 2^(levels - 1) in
space (times its patch size, Wan 2.2) and 2^(number of temporal downsamplings) in time; LTX-Video,
the model's own spatial/temporal_compression_ratio; CogVideoX, 2^(levels - 1) in space and its
config's temporal_compression_ratio.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ilct.autoencoders.base import Autoencoder
from ilct.autoencoders.diffusers_vae import config_and_weights_digest
from ilct.errors import IlctError

VIDEO_VAES = ("AutoencoderKLWan", "AutoencoderKLLTXVideo", "AutoencoderKLCogVideoX")


def compression(vae) -> tuple[int, int, int, int]:
    """(image channels, latent channels, spatial factor, temporal factor) of a diffusers video VAE."""
    name, c = type(vae).__name__, vae.config
    if name == "AutoencoderKLWan":
        p = int(c.patch_size or 1)  # Wan 2.2 folds p x p pixels into the channels before the encoder
        return (int(c.in_channels) // (p * p), int(c.z_dim), p * 2 ** (len(c.dim_mult) - 1),
                2 ** sum(bool(d) for d in c.temperal_downsample))
    if name == "AutoencoderKLLTXVideo":
        return int(c.in_channels), int(c.latent_channels), int(vae.spatial_compression_ratio), int(vae.temporal_compression_ratio)
    if name == "AutoencoderKLCogVideoX":
        return (int(c.in_channels), int(c.latent_channels), 2 ** (len(c.block_out_channels) - 1),
                int(c.temporal_compression_ratio))
    raise IlctError(f"{name} is not a video VAE ilct knows ({', '.join(VIDEO_VAES)})")


def diffusers_class(id_or_path: str) -> str | None:
    """The `_class_name` in the config.json of a diffusers model folder, or of a hub id (its config
    only, through diffusers' own cache), or None where there is none to read."""
    path = Path(id_or_path) / "config.json"
    try:
        if path.is_file():
            return str(json.loads(path.read_text(encoding="utf-8")).get("_class_name", "")) or None
        from diffusers import AutoencoderKL  # optional: pip install 'ilct[diffusers]'

        return str(AutoencoderKL.load_config(id_or_path).get("_class_name", "")) or None
    except Exception:  # no such folder or id, no diffusers, a malformed config: the caller reports it
        return None


class DiffusersVideoVAE(Autoencoder):
    takes_clips = True
    has_posterior = True

    def __init__(self, vae, source: str):
        super().__init__()
        self.vae = vae
        self.source = source
        self.image_channels, self.latent_channels, self.downsample, self.temporal_downsample = compression(vae)
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)

    @classmethod
    def load(cls, path: str) -> "DiffusersVideoVAE":
        name = diffusers_class(path)
        if name not in VIDEO_VAES:
            raise IlctError(f"{path!r} holds no diffusers video VAE (config.json names {name!r}; "
                            f"known: {', '.join(VIDEO_VAES)})")
        try:  # optional: pip install 'ilct[diffusers]'
            import diffusers
        except ImportError:
            raise IlctError("autoencoder.kind=diffusers needs diffusers: pip install 'ilct[diffusers]'") from None
        try:
            vae = getattr(diffusers, name).from_pretrained(path, low_cpu_mem_usage=False)
        except Exception as e:  # file and format errors come in many types
            raise IlctError(f"cannot load diffusers {name} from {path!r}: {str(e).splitlines()[0]}") from None
        return cls(vae.eval().requires_grad_(False), path)

    def as_clip(self, x: torch.Tensor) -> torch.Tensor:
        """x as a clip (B, C, T, H, W), checked: an image (B, C, H, W) is one frame; T = 1 + m k."""
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.ndim != 5:
            raise IlctError(f"{type(self.vae).__name__} takes clips (B, C, T, H, W), got shape {tuple(x.shape)}")
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior_moments(x)[0]

    def posterior_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of latent_dist, both times the scaling factor; (B, c, T', h, w), or (B, c, h, w) for images."""
        clip = self.as_clip(x)
        self.latent_frames(clip.shape[2])  # refuses a clip that is not 1 + m k frames long
        dist = self.vae.encode(clip).latent_dist
        mean, std = dist.mean * self.scaling_factor, dist.std * self.scaling_factor
        return (mean.squeeze(2), std.squeeze(2)) if x.ndim == 4 else (mean, std)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, c, T', h, w) -> pixels (B, C, 1 + (T' - 1) k, H, W); (B, c, h, w) -> (B, C, H, W)."""
        y = self.vae.decode(self.as_clip(z) / self.scaling_factor).sample
        return y.squeeze(2) if z.ndim == 4 else y

    def fingerprint(self) -> str:
        return "diffusers-video-" + config_and_weights_digest(self.vae, salt=type(self.vae).__name__)
