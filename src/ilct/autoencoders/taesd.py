"""The TAESD family of tiny autoencoders (TAESD, TAESDXL, TAEF1, TAEF2, ...), from .pth state dicts.

Architecture as described by the weights' NOTES (Block = three 3x3 convs with
ReLU and an identity skip; mid blocks add a 1x1-conv/GroupNorm "pool" branch).
Images in [0, 1] at this model's boundary; the protocol's [-1, 1] is mapped
here. Raw latents, no scaling factor. Load from a directory holding
`*encoder.pth` and `*decoder.pth` (e.g. ../shared/weights/taef2).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ilct.autoencoders.base import Autoencoder
from ilct.errors import IlctError


def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n: int, mid: bool = False):
        super().__init__()
        self.conv = nn.Sequential(conv(n, n), nn.ReLU(), conv(n, n), nn.ReLU(), conv(n, n))
        self.pool = (
            nn.Sequential(nn.Conv2d(n, 4 * n, 1, bias=False), nn.GroupNorm(4, 4 * n), nn.ReLU(), nn.Conv2d(4 * n, n, 1, bias=False))
            if mid else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return torch.relu(self.conv(x) + x)


def make_encoder(latent_channels: int, n: int = 64) -> nn.Sequential:
    down = lambda: conv(n, n, stride=2, bias=False)  # noqa: E731
    return nn.Sequential(
        conv(3, n), Block(n),
        down(), Block(n), Block(n), Block(n),
        down(), Block(n), Block(n), Block(n),
        down(), Block(n, True), Block(n, True), Block(n, True),
        conv(n, latent_channels),
    )


def make_decoder(latent_channels: int, n: int = 64) -> nn.Sequential:
    up = lambda: nn.Upsample(scale_factor=2)  # noqa: E731
    return nn.Sequential(
        Clamp(), conv(latent_channels, n), nn.ReLU(),
        Block(n, True), Block(n, True), Block(n, True),
        up(), conv(n, n, bias=False), Block(n), Block(n), Block(n),
        up(), conv(n, n, bias=False), Block(n), Block(n), Block(n),
        up(), conv(n, n, bias=False), Block(n),
        conv(n, 3),
    )


def _find(directory: Path, part: str) -> Path:
    found = sorted(directory.glob(f"*{part}*.pth"))
    if len(found) != 1:
        raise IlctError(f"expected one *{part}*.pth file in {directory}, found {len(found)}")
    return found[0]


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged or non-weight files
        raise IlctError(f"cannot read TAESD weights {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise IlctError(f"{path} is not a state dict of tensors")
    return state


class TAESD(Autoencoder):
    downsample = 8
    image_channels = 3

    def __init__(self, latent_channels: int, digest: str = ""):
        super().__init__()
        self.latent_channels = latent_channels
        self.encoder = make_encoder(latent_channels)
        self.decoder = make_decoder(latent_channels)
        self._digest = digest

    @classmethod
    def load(cls, directory: str | Path) -> "TAESD":
        directory = Path(directory)
        if not directory.is_dir():
            raise IlctError(f"TAESD weights directory not found: {directory}")
        enc_path, dec_path = _find(directory, "encoder"), _find(directory, "decoder")
        enc, dec = _load_state(enc_path), _load_state(dec_path)
        last = enc.get(f"{len(make_encoder(1)) - 1}.weight")  # the final conv gives the latent channels
        if last is None or last.ndim != 4:
            raise IlctError(f"{enc_path} does not fit the TAESD encoder architecture (no final conv weight)")
        latent_channels = last.shape[0]
        h = hashlib.sha256()
        for p in (enc_path, dec_path):
            h.update(p.read_bytes())
        model = cls(latent_channels, "taesd-" + h.hexdigest()[:16])
        for part, state, path in ((model.encoder, enc, enc_path), (model.decoder, dec, dec_path)):
            try:
                part.load_state_dict(state)
            except RuntimeError as e:
                raise IlctError(f"{path} does not fit the TAESD architecture: {str(e).splitlines()[0]}") from None
        return model.eval().requires_grad_(False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder((x + 1) / 2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z) * 2 - 1

    def fingerprint(self) -> str:
        return self._digest
