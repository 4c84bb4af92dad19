"""The consistency-model parameterization (METHOD.md section 3, Parameterization).

f(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s)), with the boundary
condition f(x, sigma_min) = x because c_skip(sigma_min) = 1, c_out(sigma_min) = 0.
The backbone F never sees sigma itself, only c_noise(sigma) = 250 ln(sigma).
"""

from __future__ import annotations

import torch
from torch import nn


def c_skip(sigma: torch.Tensor, sigma_data: float = 0.5, sigma_min: float = 0.002) -> torch.Tensor:
    """sigma_d^2 / ((s - sigma_min)^2 + sigma_d^2)."""
    return sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)


def c_out(sigma: torch.Tensor, sigma_data: float = 0.5, sigma_min: float = 0.002) -> torch.Tensor:
    """(s - sigma_min) sigma_d / sqrt(s^2 + sigma_d^2)."""
    return (sigma - sigma_min) * sigma_data / torch.sqrt(sigma**2 + sigma_data**2)


def c_in(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """1 / sqrt(s^2 + sigma_d^2)."""
    return 1.0 / torch.sqrt(sigma**2 + sigma_data**2)


def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """250 ln(s): the network's time input (authors' code)."""
    return 250.0 * torch.log(sigma)


def sigma_per_sample(sigma: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma as (B,) float32 (a scalar is repeated) and as (B, 1, ..., 1) to multiply x with (any x.ndim)."""
    sigma = sigma.to(torch.float32).reshape(-1)
    if sigma.numel() == 1 and x.shape[0] != 1:
        sigma = sigma.expand(x.shape[0])
    return sigma, sigma.reshape(-1, *([1] * (x.ndim - 1)))


def skip_plus_out(x: torch.Tensor, F: torch.Tensor, skip: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """c_skip x + c_out F in fp32, even under bf16 autocast (as the authors run it): F is cast to
    fp32 and autocast is off, so nothing here is rounded to bf16. Outside autocast, with fp32 x and
    F, this is the plain expression."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return skip * x + out * F.to(torch.float32)


class ConsistencyModel(nn.Module):
    """Wraps a backbone F(x, c_noise, class_labels) into f(x, sigma)."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, sigma_min: float = 0.002):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data
        self.sigma_min = sigma_min

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma, s = sigma_per_sample(sigma, x)
        F = self.net(c_in(s, self.sigma_data) * x, c_noise(sigma), class_labels)
        return skip_plus_out(x, F, c_skip(s, self.sigma_data, self.sigma_min), c_out(s, self.sigma_data, self.sigma_min))
