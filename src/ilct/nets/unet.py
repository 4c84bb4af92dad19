"""The ADM UNet backbone F (Dhariwal & Nichol 2021), in the form of EDM's `DhariwalUNet`.

The paper's published CelebA-HQ, LSUN Church and FFHQ runs trained this network (`--model-type
dhariwal_unet` in the authors' quandao10/LCT scripts, which build EDM's DhariwalUNet); their DiT
came later. Like the DiT (ilct.nets.dit) it sees c_in(sigma) x and the time input
c_noise(sigma) = 250 ln(sigma), never sigma, and takes the same call F(x, t, y=None, t2=None).

- Embedding: sinusoidal features of t (C channels) -> Linear -> SiLU -> Linear (width E = 4 C),
  plus a label or caption embedding (ilct.nets.embedders, with a null condition for guidance) and,
  with two_times, a second time embedding; then SiLU. As EDM's map_noise / map_layer0 / map_layer1.
- Residual block: GroupNorm, SiLU, [resample], 3x3 conv; scale-shift (adaptive GroupNorm):
  h = SiLU(GroupNorm(h) * (1 + scale) + shift) with (scale, shift) = Linear(emb); dropout;
  a zero-initialized 3x3 conv; plus the skip path ([resample], a 1x1 conv if the width changes).
  Optionally followed by multi-head self-attention (64 channels a head) whose output
  projection is zero-initialized too.
- Encoder: a 3x3 conv, then per level a down-sampling block (2x2 average) and `num_blocks`
  blocks; the decoder mirrors it with an up-sampling block (nearest neighbour x2) and
  `num_blocks + 1` blocks per level, each fed the matching encoder output concatenated on the
  channels (skip connections); two blocks at the lowest resolution, the first with attention.
- Output: GroupNorm, SiLU and a zero-initialized 3x3 conv, so F = 0 at initialization and
  f = c_skip x, as with the DiT's adaLN-Zero. Under bf16 autocast this head runs in fp32
  (`fp32_final_layer`, default on; the reason is in ilct.nets.dit.FinalLayer).

GroupNorms have min(32, channels / 4) groups and eps 1e-5 (EDM). NsLN (METHOD.md section 4,
technique 5; `nsln=True`): every GroupNorm that would carry a gain has none and keeps its bias,
including the norm in front of the attention. Weights start as PyTorch's defaults, which are
EDM's (uniform with bound 1 / sqrt(fan_in), for weights and biases alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ilct.nets.attention import attend

from ilct.errors import IlctError
from ilct.nets.dit import at_least_fp32
from ilct.nets.embedders import LabelEmbedder, TextEmbedder, TimestepEmbedder

# --------------------------------------------------------------------------- size registry


@dataclass(frozen=True)
class UNetSize:
    model_channels: int  # C: the width of the first level
    channel_mult: tuple[int, ...]  # level l has width C * channel_mult[l] and side input_size / 2^l
    num_blocks: int  # residual blocks per level in the encoder (num_blocks + 1 in the decoder)
    attn_ds: tuple[int, ...]  # down-sampling factors 2^l of the levels with self-attention
    channels_per_head: int = 64
    emb_mult: int = 4  # E = C * emb_mult, the embedding width


UNET_SIZES: dict[str, UNetSize] = {
    # A guess sized for CPU tests on 8x8x4 latents (levels 8x8 and 4x4, attention at 4x4); since the demo
    # sweep (docs/stability.md) also the fmnist presets' backbone: at equal CPU time it beat DiT-T/2 and ADM-S.
    "ADM-T": UNetSize(32, (1, 2), 1, (2,)),
    # Sized like DiT-T/2 (4.17M parameters), the CPU presets' backbone, for comparisons on their 8x8
    # latents (benchmarks/quality/unet_vs_dit.py): 4.59M. Not from the authors.
    "ADM-S": UNetSize(64, (1, 2), 2, (2,)),
    # The authors' argparse defaults in quandao10/LCT train_cm_latent.py (--num-channels 128,
    # --channel-mult 1,2,2,2, --num-res-blocks 2, --attention-resolutions 32,16,8 on 32x32 latents).
    "ADM-B": UNetSize(128, (1, 2, 2, 2), 2, (1, 2, 4)),
    # The paper's network for 32x32x4 SD-VAE latents: quandao10/LCT scripts/train_lct.sh (CelebA-HQ
    # 256; its commented FFHQ and LSUN Church runs use the same settings): --num-channels 128,
    # --channel-mult 1,2,3,4, --num-res-blocks 4, --attention-resolutions 16,8 (= 1/2, 1/4 of 32),
    # --num-head-channels 64; dropout not set (its default 0.0); models/script_util.py passes
    # channel_mult_emb=4 and label_dropout=0 to EDM's DhariwalUNet.
    "ADM-LCT": UNetSize(128, (1, 2, 3, 4), 4, (2, 4)),
}


# --------------------------------------------------------------------------- layers


class NonScalingGroupNorm(nn.Module):
    """GroupNorm without a gain: (h - mean_g h) / sqrt(var_g h + eps) + beta per channel (NsLN for
    GroupNorms, METHOD.md section 4, 5). No weight parameter at all, as ilct.nets.dit.NonScalingLayerNorm."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__()
        self.num_groups = num_groups
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.group_norm(h, self.num_groups, weight=None, bias=None, eps=self.eps) + self.bias[:, None, None]


def make_group_norm(channels: int, nsln: bool) -> nn.Module:
    """EDM's GroupNorm: min(32, channels / 4) groups, eps 1e-5; gain-free (NsLN) when nsln is on."""
    groups = min(32, channels // 4)
    return NonScalingGroupNorm(groups, channels) if nsln else nn.GroupNorm(groups, channels, eps=1e-5)


def resample(h: torch.Tensor, how: str) -> torch.Tensor:
    """2x2 average pooling ("down"), nearest-neighbour x2 ("up") or nothing: EDM's [1, 1] filter."""
    if how == "down":
        return F.avg_pool2d(h, 2)
    if how == "up":
        return F.interpolate(h, scale_factor=2.0, mode="nearest")
    return h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, added to its input: GroupNorm, 1x1 q/k/v
    projection, softmax(q k^T / sqrt(d)) v, zero-initialized 1x1 output projection."""

    def __init__(self, channels: int, num_heads: int, nsln: bool):
        super().__init__()
        self.num_heads = num_heads
        self.norm = make_group_norm(channels, nsln)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, C, H, W = h.shape
        qkv = self.qkv(self.norm(h)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, H*W, d)
        a = attend(q, k, v)  # (B, heads, H*W, d)
        return h + self.proj(a.transpose(-1, -2).reshape(B, C, H, W))


class ResBlock(nn.Module):
    """The ADM residual block with scale-shift conditioning, optional resampling and attention."""

    compile_region = True  # ilct.training.accel.compile_blocks compiles each block on its own

    def __init__(self, c_in: int, c_out: int, emb: int, nsln: bool, dropout: float, resample: str = "none",
                 attention: bool = False, channels_per_head: int = 64):
        super().__init__()
        self.c_in, self.resampling, self.dropout = c_in, resample, dropout
        self.norm0 = make_group_norm(c_in, nsln)
        self.conv0 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.affine = nn.Linear(emb, 2 * c_out)  # (scale, shift) of the adaptive GroupNorm
        self.norm1 = make_group_norm(c_out, nsln)
        self.conv1 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None
        self.attn = SelfAttention(c_out, max(1, c_out // channels_per_head), nsln) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(resample(F.silu(self.norm0(x)), self.resampling))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)  # each (B, c_out, 1, 1)
        h = F.silu(self.norm1(h) * (1 + scale) + shift)
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = resample(x, self.resampling)
        h = h + (self.skip(x) if self.skip is not None else x)
        return self.attn(h) if self.attn is not None else h


class OutputLayer(nn.Module):
    """GroupNorm, SiLU, zero-initialized 3x3 conv; in fp32 under autocast when `fp32` (see the DiT's FinalLayer)."""

    def __init__(self, channels: int, out_channels: int, nsln: bool, fp32: bool = True):
        super().__init__()
        self.norm = make_group_norm(channels, nsln)
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.fp32 = fp32

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.fp32:
            return self.conv(F.silu(self.norm(h)))
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.conv(F.silu(self.norm(at_least_fp32(h))))


# --------------------------------------------------------------------------- the network


class UNet(nn.Module):
    """F(x, t, y[, t2]): latents (B, C, H, H), time input (B,), optional condition y -> (B, C, H, H).

    The arguments mean what they mean for ilct.nets.dit.DiT: y is class labels (B,) int64
    (num_classes > 0; index num_classes is the null class) or caption embeddings (B, text_dim)
    (zeros: no caption); class_dropout drops either to the null condition in training; dropout
    is the residual blocks' dropout; two_times adds a second time input t2 with its own embedder.
    Images only: a clip (B, C, T, H, W) is refused (clips need a DiT; `build_backbone` refuses
    model.frames > 0 for a UNet before it is built).
    """

    def __init__(
        self,
        input_size: int,
        in_channels: int,
        size: UNetSize,
        num_classes: int = 0,
        class_dropout: float = 0.1,
        dropout: float = 0.0,
        nsln: bool = False,
        text_dim: int = 0,
        fp32_final_layer: bool = True,
        two_times: bool = False,
    ):
        super().__init__()
        levels = len(size.channel_mult)
        if input_size % 2 ** (levels - 1):
            raise ValueError(f"latent side {input_size} does not halve {levels - 1} times (the UNet's levels)")
        if num_classes > 0 and text_dim > 0:
            raise ValueError("one kind of conditioning: class labels or text, not both")
        C, E = size.model_channels, size.model_channels * size.emb_mult
        self.in_channels, self.two_times = in_channels, two_times
        self.t_embedder = TimestepEmbedder(E, freq_dim=C)
        self.t2_embedder = TimestepEmbedder(E, freq_dim=C) if two_times else None
        self.y_embedder = LabelEmbedder(num_classes, E, class_dropout) if num_classes > 0 else None
        self.text_embedder = TextEmbedder(text_dim, E, class_dropout) if text_dim > 0 else None
        self.conv_in = nn.Conv2d(in_channels, C * size.channel_mult[0], 3, padding=1)
        self.enc, self.dec, self.dec_takes_skip = self.build_levels(size, E, nsln, dropout)
        self.out = OutputLayer(C * size.channel_mult[0], in_channels, nsln, fp32=fp32_final_layer)
        self.initialize_weights()

    @staticmethod
    def build_levels(size: UNetSize, E: int, nsln: bool, dropout: float):
        """Encoder and decoder blocks, and which decoder blocks take a skip (concatenated) input."""

        def block(c_in: int, c_out: int, **kw) -> ResBlock:
            return ResBlock(c_in, c_out, E, nsln, dropout, channels_per_head=size.channels_per_head, **kw)

        enc, skips = nn.ModuleList(), [size.model_channels * size.channel_mult[0]]  # conv_in's output
        c = skips[0]
        for level, mult in enumerate(size.channel_mult):
            if level > 0:
                enc.append(block(c, c, resample="down"))
                skips.append(c)
            for _ in range(size.num_blocks):
                enc.append(block(c, size.model_channels * mult, attention=2**level in size.attn_ds))
                c = size.model_channels * mult
                skips.append(c)
        dec, takes_skip = nn.ModuleList(), []
        for level, mult in reversed(list(enumerate(size.channel_mult))):
            if level == len(size.channel_mult) - 1:  # the middle: two blocks, the first with attention
                dec.extend([block(c, c, attention=True), block(c, c)])
                takes_skip += [False, False]
            else:
                dec.append(block(c, c, resample="up"))
                takes_skip.append(False)
            for _ in range(size.num_blocks + 1):
                dec.append(block(c + skips.pop(), size.model_channels * mult, attention=2**level in size.attn_ds))
                c = size.model_channels * mult
                takes_skip.append(True)
        return enc, dec, tuple(takes_skip)

    def initialize_weights(self) -> None:
        """PyTorch's default init (EDM's), except the zero-initialized last conv of every residual
        branch, every attention output and the output layer: each block starts as its skip path."""
        zero = [b.conv1 for b in [*self.enc, *self.dec]] + [b.attn.proj for b in [*self.enc, *self.dec] if b.attn]
        for m in zero + [self.out.conv]:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def embed(self, t: torch.Tensor, y: torch.Tensor | None, t2: torch.Tensor | None) -> torch.Tensor:
        """The conditioning vector SiLU(emb(t) [+ emb2(t2)] [+ emb(y)]), (B, E)."""
        emb = self.t_embedder(t)
        if self.t2_embedder is not None:
            if t2 is None:
                raise ValueError("this UNet has two time inputs (two_times=True): pass t2")
            emb = emb + self.t2_embedder(t2)
        elif t2 is not None:
            raise ValueError("a second time input t2 needs a UNet built with two_times=True")
        if self.y_embedder is not None and y is not None:
            emb = emb + self.y_embedder(y, self.training)
        elif self.text_embedder is not None and y is not None:
            emb = emb + self.text_embedder(y, self.training)
        return F.silu(emb)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, t2: torch.Tensor | None = None
    ) -> torch.Tensor:
        if x.ndim != 4:
            raise IlctError(f"the ADM UNet takes images (B, C, H, W), not clips or other shapes ({tuple(x.shape)}): "
                            "train clips with a DiT (model.arch DiT-...)")
        emb = self.embed(t, y, t2)  # (B, E)
        h = self.conv_in(x)  # (B, C * mult[0], H, W)
        skips = [h]
        for block in self.enc:
            h = block(h, emb)
            skips.append(h)
        for block, takes_skip in zip(self.dec, self.dec_takes_skip):
            if takes_skip:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        return self.out(h)  # (B, in_channels, H, W)


def build_unet(arch: str, input_size: int, in_channels: int, **kwargs) -> UNet:
    if arch not in UNET_SIZES:
        raise KeyError(f"unknown UNet size {arch!r}; sizes: {', '.join(UNET_SIZES)}")
    return UNet(input_size, in_channels, UNET_SIZES[arch], **kwargs)
