"""The backbones F: one registry from `model.arch` to a builder.

`ARCHS` holds every size of every backbone: the DiTs of ilct.nets.dit (`DiT-B/2`, ...) and the
ADM UNets of ilct.nets.unet (`ADM-T`, ..., `ADM-LCT`). A new backbone is a new module with its
own size registry plus one line here. Each builder takes (input_size, in_channels, **options);
`backbone_options` says which keyword options a name takes, so a setting that only one family
has (the DiT's `mlp_act`, say) is refused by the config for the other instead of ignored.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Callable

from torch import nn

from ilct.nets.dit import DIT_SIZES, DiT
from ilct.nets.unet import UNET_SIZES, UNet

ARCHS: dict[str, Callable[..., nn.Module]] = {
    **{name: partial(DiT, size=size) for name, size in DIT_SIZES.items()},
    **{name: partial(UNet, size=size) for name, size in UNET_SIZES.items()},
}


def backbone_options(arch: str) -> frozenset[str]:
    """The keyword options the builder of `arch` takes (beyond input_size and in_channels)."""
    params = inspect.signature(ARCHS[arch]).parameters
    return frozenset(params) - {"input_size", "in_channels", "size"}


def backbone_family(arch: str) -> str:
    """The class a name builds, for messages: "DiT" or "UNet"."""
    return ARCHS[arch].func.__name__


def build_backbone(arch: str, input_size: int, in_channels: int, **options) -> nn.Module:
    """The network F named `arch` for (in_channels, input_size, input_size) latents; a ValueError
    when the latents do not fit it (a patch size or a number of levels), KeyError for an unknown name."""
    if arch not in ARCHS:
        raise KeyError(f"unknown model.arch {arch!r}; names: {', '.join(ARCHS)}")
    return ARCHS[arch](input_size, in_channels, **options)
