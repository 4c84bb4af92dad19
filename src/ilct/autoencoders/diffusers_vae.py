"""diffusers' AutoencoderKL (e.g. stabilityai/sd-vae-ft-ema, the paper's VAE).

Optional: `pip install ilct[diffusers]`. Latents are multiplied by the VAE's
config scaling factor on encode and divided by it on decode.
"""

from __future__ import annotations

import hashlib
import json

import torch

from ilct.autoencoders.base import Autoencoder
from ilct.errors import IlctError


class DiffusersVAE(Autoencoder):
    def __init__(self, vae, source: str):
        super().__init__()
        self.vae = vae
        self.source = source
        cfg = vae.config
        self.image_channels = int(cfg.in_channels)
        self.latent_channels = int(cfg.latent_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = float(getattr(cfg, "scaling_factor", 1.0) or 1.0)

    @classmethod
    def load(cls, id_or_path: str) -> "DiffusersVAE":
        try:  # optional: pip install 'ilct[diffusers]'
            from diffusers import AutoencoderKL
        except ImportError:
            raise IlctError("autoencoder.kind=diffusers needs diffusers: pip install 'ilct[diffusers]'") from None
        try:
            vae = AutoencoderKL.from_pretrained(id_or_path, low_cpu_mem_usage=False)
        except Exception as e:  # hub and file errors come in many types
            raise IlctError(f"cannot load diffusers AutoencoderKL from {id_or_path!r}: {str(e).splitlines()[0]}") from None
        return cls(vae.eval().requires_grad_(False), id_or_path)

    has_posterior = True

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    def posterior_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of latent_dist, both times the scaling factor (a draw mean + std eps is
        latent_dist.sample() * scaling_factor)."""
        dist = self.vae.encode(x).latent_dist
        return dist.mean * self.scaling_factor, dist.std * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scaling_factor).sample

    def fingerprint(self) -> str:
        return "diffusers-" + config_and_weights_digest(self.vae)


def config_and_weights_digest(model, salt: str = "") -> str:
    """16 hex digits of sha256 over `salt`, the model's diffusers config, and the names and first 4 KiB
    of its first 8 state-dict tensors (by name): changes with the architecture or the weights.

    Two entries of the config that diffusers adds are tamed: `_name_or_path` (where it was loaded from:
    a moved folder, or an id against its download, is the same autoencoder) is left out, and
    `_use_default_values` (the keys config.json lacks) is sorted, since diffusers builds it from a set:
    its order, and with it the fingerprint, changed from one process to the next when config.json
    lacked two keys or more (as older hub configs such as sd-vae-ft-ema do)."""
    config = {k: v for k, v in dict(model.config).items() if k != "_name_or_path"}
    if isinstance(config.get("_use_default_values"), list):
        config["_use_default_values"] = sorted(config["_use_default_values"])
    h = hashlib.sha256(salt.encode())
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for k, v in sorted(model.state_dict().items())[:8]:
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]
