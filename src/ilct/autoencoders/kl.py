"""The built-in convolutional KL autoencoder (32x32x1 -> 8x8x4 by default).

A small VAE in the style of the LDM autoencoder: the encoder predicts a mean
and a log-variance, the loss is reconstruction MSE plus a small KL weight.
Saved as `model.safetensors` plus `config.json` in one directory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ilct.autoencoders.base import Autoencoder
from ilct.errors import IlctError
from ilct.files import read_tensors, save_tensors, write_text


@dataclass
class KLAutoencoderConfig:
    image_channels: int = 1
    latent_channels: int = 4
    channels: tuple[int, ...] = (16, 32, 64)  # one entry per resolution; len - 1 down-samplings
    kl_weight: float = 1e-6


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
            nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class KLAutoencoder(Autoencoder):
    def __init__(self, cfg: KLAutoencoderConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or KLAutoencoderConfig()
        ch = list(cfg.channels)
        self.image_channels = cfg.image_channels
        self.latent_channels = cfg.latent_channels
        self.downsample = 2 ** (len(ch) - 1)
        enc: list[nn.Module] = [nn.Conv2d(cfg.image_channels, ch[0], 3, padding=1)]
        for a, b in zip(ch[:-1], ch[1:]):
            enc += [ResBlock(a), nn.Conv2d(a, b, 3, stride=2, padding=1)]
        enc += [ResBlock(ch[-1]), nn.GroupNorm(8, ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1), ResBlock(ch[-1])]
        for a, b in zip(ch[::-1][:-1], ch[::-1][1:]):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, padding=1), ResBlock(b)]
        dec += [nn.GroupNorm(8, ch[0]), nn.SiLU(), nn.Conv2d(ch[0], cfg.image_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self._fingerprint: str | None = None

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    has_posterior = True

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]

    def posterior_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std = exp(logvar / 2)) of q(z|x), the distribution `loss` samples from in training."""
        mean, logvar = self.posterior(x)
        return mean, torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, reconstruction MSE): MSE + kl_weight * KL(q(z|x) || N(0, I)) per element."""
        mean, logvar = self.posterior(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        mse = F.mse_loss(self.decode(z), x)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return mse + self.cfg.kl_weight * kl, mse

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256(json.dumps(asdict(self.cfg)).encode())
            for k, v in sorted(self.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = "builtin-" + h.hexdigest()[:16]
        return self._fingerprint

    # ---------------------------------------------------------------- files

    def save(self, directory: str | Path, extra: dict | None = None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(self.state_dict(), directory / "model.safetensors")
        meta = {"kind": "builtin", "config": asdict(self.cfg), **(extra or {})}
        write_text(directory / "config.json", json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "KLAutoencoder":
        directory = Path(directory)
        cfg_file, weights = directory / "config.json", directory / "model.safetensors"
        if not cfg_file.is_file() or not weights.is_file():
            raise IlctError(
                f"no built-in autoencoder in {directory} (expected config.json and model.safetensors; "
                "train one with: ilct autoencoder --out DIR)"
            )
        try:
            meta = json.loads(cfg_file.read_text())
            c = meta["config"]
            cfg = KLAutoencoderConfig(**{**c, "channels": tuple(c["channels"])})
        except (ValueError, KeyError, TypeError) as e:
            raise IlctError(f"{cfg_file} is not a built-in autoencoder config ({e})") from None
        model = cls(cfg)
        state = read_tensors(weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise IlctError(f"{weights} does not match {cfg_file}: {str(e).splitlines()[0]}") from None
        if not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
            raise IlctError(f"{weights} holds weights that are not finite")
        return model.eval().requires_grad_(False)

