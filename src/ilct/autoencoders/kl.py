"""The built-in convolutional KL autoencoder (32x32x1 -> 8x8x4 by default).

A small VAE in the style of the LDM autoencoder: the encoder predicts a mean
and a log-variance, the loss is reconstruction MSE plus a small KL weight.
Saved as `model.safetensors` plus `config.json` in one directory.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ilct.autoencoders.base import Autoencoder
from ilct.errors import IlctError
from ilct.io.files import read_json, read_tensors, save_tensors, write_text


@dataclass
class KLAutoencoderConfig:
    image_channels: int = 1
    latent_channels: int = 4
    channels: tuple[int, ...] = (16, 32, 64)  # one entry per resolution; len - 1 down-samplings
    kl_weight: float = 1e-6


# The ranges config.json's fields must lie in (the sizes far beyond use; GroupNorm(8, ch) needs multiples of 8).
INT_RANGES = {"image_channels": (1, 16), "latent_channels": (1, 1024)}
MAX_LEVELS = 8  # entries of `channels`: at most 7 down-samplings (128x)
MAX_WIDTH = 4096  # one entry of `channels`


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def config_from_json(meta: Any, where: Path) -> KLAutoencoderConfig:
    """The KLAutoencoderConfig of a config.json's parsed contents, every field checked by type and range;
    IlctError naming the field and the file otherwise."""
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise IlctError(f"{where} is not a built-in autoencoder config (no 'config' object)")
    if meta.get("kind", "builtin") != "builtin":
        raise IlctError(f"{where}: kind must be 'builtin', got {str(meta['kind'])[:40]!r}")
    c, names = meta["config"], [f.name for f in fields(KLAutoencoderConfig)]
    odd = sorted(set(names) ^ set(c))
    if odd:
        raise IlctError(f"{where}: config must hold exactly {', '.join(names)}; "
                        f"{'unknown' if odd[0] in c else 'missing'} {odd[0][:40]!r}")
    for name, (lo, hi) in INT_RANGES.items():
        if not _is_int(c[name]) or not lo <= c[name] <= hi:
            raise IlctError(f"{where}: config.{name} must be an integer in {lo}..{hi}, got {repr(c[name])[:40]}")
    ch = c["channels"]
    if (not isinstance(ch, list) or not 1 <= len(ch) <= MAX_LEVELS
            or not all(_is_int(w) and 8 <= w <= MAX_WIDTH and w % 8 == 0 for w in ch)):
        raise IlctError(f"{where}: config.channels must be a list of 1..{MAX_LEVELS} multiples of 8 in "
                        f"8..{MAX_WIDTH}, got {repr(ch)[:60]}")
    kl = c["kl_weight"]
    if not isinstance(kl, (int, float)) or isinstance(kl, bool) or not (math.isfinite(kl) and 0 <= kl <= 1):
        raise IlctError(f"{where}: config.kl_weight must be a number in [0, 1], got {repr(kl)[:40]}")
    return KLAutoencoderConfig(c["image_channels"], c["latent_channels"], tuple(ch), float(kl))


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
        cfg = config_from_json(read_json(cfg_file), cfg_file)
        state = read_tensors(weights)
        with torch.device("meta"):  # shapes only: a config.json naming a huge model allocates nothing
            want = {k: tuple(v.shape) for k, v in cls(cfg).state_dict().items()}
        have = {k: tuple(v.shape) for k, v in state.items()}
        if have != want:
            name = sorted(set(want) ^ set(have)) or sorted(k for k in want if want[k] != have[k])
            raise IlctError(f"{weights} does not match {cfg_file}: {name[0]!r} is "
                            f"{have.get(name[0], 'missing')}, expected {want.get(name[0], 'no such weight')}")
        model = cls(cfg)
        model.load_state_dict(state)
        if not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
            raise IlctError(f"{weights} holds weights that are not finite")
        return model.eval().requires_grad_(False)

