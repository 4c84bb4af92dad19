"""The backbones F: one registry from `model.arch` to a builder.

`ARCHS` holds every size of every backbone: the DiTs of ilct.nets.dit (`DiT-B/2`, ...) and the
ADM UNets of ilct.nets.unet (`ADM-T`, ..., `ADM-LCT`). A new backbone is a new module with its
own size registry plus one line here. Each builder takes (input_size, in_channels, **options);
`backbone_options` says which keyword options a name takes, so a setting that only one family
has (the DiT's `mlp_act`, say) is refused by the config for the other instead of ignored.
Clips: a builder that takes `frames` (the DiT) takes clips of that many latent frames; for one
that does not (the UNet), `build_backbone` refuses frames > 0.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Callable

from torch import nn

from ilct.errors import IlctError
from ilct.nets.dit import DIT_SIZES, DiT
from ilct.nets.unet import UNET_SIZES, UNet

ARCHS: dict[str, Callable[..., nn.Module]] = {
    **{name: partial(DiT, size=size) for name, size in DIT_SIZES.items()},
    **{name: partial(UNet, size=size) for name, size in UNET_SIZES.items()},
}


def backbone_options(arch: str) -> frozenset[str]:
    """The keyword options the builder of `arch` takes (beyond the latent shape: input_size, in_channels, frames)."""
    return takes_options(arch) - {"frames"}


def takes_options(arch: str) -> frozenset[str]:
    """Every keyword argument of the builder of `arch` but input_size, in_channels and its size."""
    params = inspect.signature(ARCHS[arch]).parameters
    return frozenset(params) - {"input_size", "in_channels", "size"}


def takes_clips(arch: str) -> bool:
    """Whether `arch` takes clips (B, C, T, H, W) as well as images: its builder has a `frames` argument."""
    return "frames" in takes_options(arch)


def backbone_family(arch: str) -> str:
    """The class a name builds, for messages: "DiT" or "UNet"."""
    return ARCHS[arch].func.__name__


def build_backbone(arch: str, input_size: int, in_channels: int, frames: int = 0, **options) -> nn.Module:
    """The network F named `arch` for (in_channels, input_size, input_size) latents, or clips of `frames`
    latent frames (in_channels, frames, input_size, input_size) when frames > 0; a ValueError when the
    latents do not fit it (a patch size or a number of levels), KeyError for an unknown name, IlctError
    for clips and a backbone that takes images only."""
    if arch not in ARCHS:
        raise KeyError(f"unknown model.arch {arch!r}; names: {', '.join(ARCHS)}")
    if takes_clips(arch):
        return ARCHS[arch](input_size, in_channels, frames=frames, **options)
    if frames:
        raise IlctError(f"config: model.arch {arch} (a {backbone_family(arch)}) takes images, not clips of {frames} "
                        "latent frames (model.frames): use a DiT")
    return ARCHS[arch](input_size, in_channels, **options)
