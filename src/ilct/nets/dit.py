"""Diffusion Transformer backbone F with adaLN-Zero (Peebles & Xie 2023).

The network sees c_in(sigma) x and c_noise(sigma) = 250 ln(sigma), never sigma
(the parameterization lives in ilct.objectives.consistency.precond). Differences from the
reference DiT: per-head query/key LayerNorm, which is a Non-scaling LayerNorm
(METHOD.md section 4, technique 5) when `nsln=True`; dropout in attention and
MLP; `F.scaled_dot_product_attention`; with `two_times=True`, a second time input t2
embedded by its own timestep embedder and added to the adaLN conditioning (the MeanFlow
net sees t and t - r, METHOD.md section 7; the wrapper is ilct.objectives.meanflow.maths.MeanFlowModel);
with `text_tokens` = L > 0, a cross-attention sublayer in every block that attends to the caption's
token embeddings (as text-to-image DiTs do: PixArt-alpha), the pooled caption vector still in adaLN.

One network over space and time: the DiT takes images (B, C, H, W) and clips (B, C, T, H, W); an
image is a clip of one frame. A clip is cut into (patch_t, p, p) space-time patches with 3D sin-cos
positions (frame 0's are the image's 2D ones), and its tokens attend to each other either all at once
(`attention="full"`) or factorized: within each frame (the DiT blocks), then across the frames at each
position (one `TemporalAttention` after each block, extra weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ilct.nets.attention import attend

from ilct.nets.embedders import (LabelEmbedder, TextEmbedder, TimestepEmbedder,  # noqa: F401 (also imported from here)
                                 TokenEmbedder, text_condition_shape, unpack_text)


# --------------------------------------------------------------------------- size registry


@dataclass(frozen=True)
class DiTSize:
    depth: int
    hidden_size: int
    num_heads: int
    patch_size: int
    mlp_ratio: float = 4.0


def _registry() -> dict[str, DiTSize]:
    # (depth, hidden, heads) of the DiT paper's Table 1, plus a tiny size for CPUs.
    shapes = {"T": (6, 192, 3), "S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
    sizes = {}
    for name, (depth, hidden, heads) in shapes.items():
        for p in ((1, 2, 4) if name == "T" else (2, 4, 8)):
            sizes[f"DiT-{name}/{p}"] = DiTSize(depth, hidden, heads, p)
    return sizes


DIT_SIZES: dict[str, DiTSize] = _registry()


# --------------------------------------------------------------------------- layers


class NonScalingLayerNorm(nn.Module):
    """(h - mean h) / sqrt(var h + eps) + beta: LayerNorm without a gain (METHOD.md section 4, 5).

    Written as layer_norm without weight plus a bias parameter, so there is no
    gain parameter at all (a frozen weight tensor breaks backward on torch 2.11).
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(h, (self.dim,), weight=None, bias=None, eps=self.eps) + self.bias


def make_norm(dim: int, nsln: bool, eps: float = 1e-6) -> nn.Module:
    """The per-head q/k norm: standard affine LayerNorm, or NsLN when nsln is on."""
    return NonScalingLayerNorm(dim, eps) if nsln else nn.LayerNorm(dim, eps=eps, elementwise_affine=True)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """t in fp32 if it is in a narrower float type (bf16, fp16); unchanged otherwise."""
    return t.float() if t.is_floating_point() and torch.finfo(t.dtype).bits < 32 else t


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, nsln: bool, dropout: float, qkv_bias: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = make_norm(self.head_dim, nsln, eps)
        self.k_norm = make_norm(self.head_dim, nsln, eps)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, T, head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        x = attend(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(x.transpose(1, 2).reshape(B, T, C))


class CrossAttention(nn.Module):
    """Queries from the image tokens x (B, N, D), keys and values from the caption context (B, S, D);
    per-head q/k norms as in `Attention` (NsLN when nsln is on); `keep` (B, S) bool masks out padded
    caption tokens (their attention weight is exactly 0)."""

    def __init__(self, dim: int, num_heads: int, nsln: bool, dropout: float, qkv_bias: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.q_norm = make_norm(self.head_dim, nsln, eps)
        self.k_norm = make_norm(self.head_dim, nsln, eps)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        S = context.shape[1]
        q = self.q(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, N, head_dim)
        kv = self.kv(context)  # (B, S, 2 D)
        k, v = kv.reshape(B, S, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, S, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        x = attend(q, k, v, attn_mask=keep[:, None, None, :],  # (B, 1, 1, S): True = attended
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


# The MLP's activation: tanh-approximated GELU as in the DiT paper, or ReLU as in the authors' later DiT
# (`--linear-act relu` in quandao10/LCT scripts/train_lct_ot.sh).
MLP_ACTIVATIONS = {
    "gelu": partial(nn.GELU, approximate="tanh"),
    "relu": nn.ReLU,
}


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        self.act = MLP_ACTIVATIONS[act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero (block norms have no affine parameters).

    With `cross_attn`, a third sublayer between attention and MLP, as in PixArt-alpha:
    x = x + CrossAttn(norm(x), context), not modulated by adaLN; its norm is an affine LayerNorm, or
    NsLN (no gain) when nsln is on (`make_norm`), and its output projection starts at zero (closed).
    """

    compile_region = True  # ilct.training.accel.compile_blocks compiles each block on its own

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, nsln: bool, dropout: float,
                 mlp_act: str = "gelu", qkv_bias: bool = True, eps: float = 1e-6, cross_attn: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.attn = Attention(dim, num_heads, nsln, dropout, qkv_bias, eps)
        # created only when on, so a block without text tokens draws the same initial weights as before
        self.norm_cross = make_norm(dim, nsln, eps) if cross_attn else None
        self.cross_attn = CrossAttention(dim, num_heads, nsln, dropout, qkv_bias, eps) if cross_attn else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout, mlp_act)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_cross(x), context, keep)  # (B, N, D) attends to (B, 1 + L, D)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class TemporalAttention(nn.Module):
    """Factorized space-time attention's time half: the tokens at one spatial position attend across
    the frames (Latte's / TimeSformer's divided attention). Pre-norm, with its own adaLN-Zero
    (shift, scale, gate from c; the gate starts at zero, so a new one passes h through unchanged)
    and its own q/k norms (NsLN when `nsln`, as in the blocks). Extra weights per block: q/k/v and
    the output projection (4 D^2 + 4 D), the adaLN map (3 D^2 + 3 D) and the q/k norms: about 7/18 of a
    DiT block's weights (DiT-T/2: 4.17 M -> 5.72 M parameters)."""

    compile_region = True  # ilct.training.accel.compile_blocks compiles each block on its own

    def __init__(self, dim: int, num_heads: int, nsln: bool, dropout: float, qkv_bias: bool = True, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.attn = Attention(dim, num_heads, nsln, dropout, qkv_bias, eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))

    def forward(self, h: torch.Tensor, c: torch.Tensor, n_t: int) -> torch.Tensor:
        B, L, D = h.shape  # L = n_t * N tokens, frame-major (n_t frames of tokens, N per frame)
        N = L // n_t
        shift, scale, gate = self.adaLN_modulation(c).chunk(3, dim=1)  # each (B, D)
        a = modulate(self.norm(h), shift, scale)
        a = a.reshape(B, n_t, N, D).transpose(1, 2).reshape(B * N, n_t, D)  # one sequence per position
        a = self.attn(a).reshape(B, N, n_t, D).transpose(1, 2).reshape(B, L, D)
        return h + gate.unsqueeze(1) * a


# Attention over a clip's space-time tokens: every token to every token, or factorized (space, then time).
ATTENTIONS = ("full", "factorized")


class FinalLayer(nn.Module):
    """Final norm, adaLN modulation and linear projection to patches.

    With `fp32=True` (the default, as in the authors' runs) it runs in fp32 even under bf16
    autocast: its inputs are cast up and autocast is off inside, so the network's output F is
    not rounded to bf16 (at N = 641, c is 2.5e-4 and bf16 rounding of F would be a visible part
    of r; benchmarks/quality/bf16_noise_floor.py). Outside autocast it changes nothing.
    """

    def __init__(self, dim: int, patch_size: int, out_channels: int, fp32: bool = True, eps: float = 1e-6):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.fp32 = fp32

    def project(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if not self.fp32:
            return self.project(x, c)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.project(at_least_fp32(x), at_least_fp32(c))


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """Sin-cos features of positions pos (any shape) -> (pos.size, dim): [sin(omega pos), cos(omega pos)],
    omega_d = 10000^(-d / (dim/2)), as in MAE / DiT."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed_2d(dim: int, grid: int) -> np.ndarray:
    """Fixed 2D sin-cos position embedding, (grid*grid, dim), as in MAE / DiT."""
    coords = np.arange(grid, dtype=np.float64)
    gw, gh = np.meshgrid(coords, coords)  # w first, as in the reference
    return np.concatenate([sincos_1d(dim // 2, gw), sincos_1d(dim // 2, gh)], axis=1)


def sincos_pos_embed_3d(dim: int, frames: int, grid: int) -> np.ndarray:
    """Fixed space-time sin-cos positions, (frames*grid*grid, dim), frame-major (t, h, w) token order.

    pos(t, h, w) = pos_2d(h, w) + (s(t) - s(0)), s = sincos_1d over all `dim` channels: the usual
    1D embedding of the frame index, less its value at t = 0, so frame 0's positions are exactly the
    2D ones of an image (an image is a clip of one frame, and a one-frame clip gives the image's output).
    """
    space = sincos_pos_embed_2d(dim, grid)  # (grid*grid, dim)
    t = np.arange(frames, dtype=np.float64)
    time = sincos_1d(dim, t) - sincos_1d(dim, np.zeros(1))  # (frames, dim), row 0 exactly zero
    return (time[:, None, :] + space[None, :, :]).reshape(frames * grid * grid, dim)


# --------------------------------------------------------------------------- the network


class DiT(nn.Module):
    """F(x, t, y[, t2]): latents (B, C, H, H) or clips (B, C, T, H, H), time input (B,), optional
    condition y -> the shape of x.

    Clips (`frames` > 0: the latent frames T of the data, which size the position table; shorter clips
    use its first rows): (patch_t, p, p) patches, patch_t frames folded into the patch embedding's
    channels (with patch_t = 1 it is the image DiT's embedding, same weights); 3D sin-cos positions,
    frame 0's equal to the image's (`sincos_pos_embed_3d`). An image is a clip of one frame: x (B, C, H, H)
    runs as (B, C, 1, H, H), and a one-frame clip gives exactly the image's output. `attention`: "full"
    (all T/patch_t * (H/p)^2 tokens attend to each other, the blocks unchanged) or "factorized" (each
    block attends within each frame, then a `TemporalAttention` across the frames at each position:
    less memory for long clips, extra weights; off, the state dict is the image DiT's).

    two_times: a second time input t2 (B,) with its own embedder, c = emb(t) + emb2(t2) [+ emb(y)]
    (MeanFlow: t2 = t - r, scaled, METHOD.md section 7). Off by default, and then the network, its
    parameters and its state-dict keys are exactly those of a one-time DiT.

    y: class labels (B,) int64 for a class-conditional net (num_classes > 0; num_classes is the
    null class), or caption embeddings (B, text_dim) for a text-conditional one (zeros: no caption).
    With text_tokens = L > 0, y is the packed caption condition (B, 1 + L, text_dim + 1) of
    ilct.nets.embedders.pack_text (pooled vector, L token embeddings, their mask; zeros: no caption):
    the pooled vector goes into adaLN as before, the tokens (`TokenEmbedder`) into a cross-attention
    sublayer in every block; one dropout decision per sample nulls both.

    Under autocast the residual stream h between the blocks is fp32 (the positional embedding and
    the gated residual sums promote it); `low_precision_residual` keeps it in the autocast dtype
    (bf16), which halves the memory traffic of the residual sums and the norms around them
    (`train.bf16_residual`). Outside autocast it changes nothing.

    The final layer runs in fp32 under autocast (`fp32_final_layer`, default on; off only to
    measure what it changes), so F comes out in fp32, not rounded to bf16.

    The authors' later DiT (quandao10/LCT models/network_dit.py, DiTBlockFlashAttn with
    `--linear-act relu`) makes other choices; three are options here, today's behaviour the default:
    `mlp_act` ("gelu", tanh-approximated, or "relu"), `qkv_bias` (True, or no bias in the q/k/v
    projection) and `norm_eps` (the eps of every LayerNorm: block, final and q/k norms; 1e-6 here,
    1e-5 in that block, 1e-6 in a commented-out version of it). docs/method.md, "The backbone".
    """

    def __init__(
        self,
        input_size: int,
        in_channels: int,
        size: DiTSize,
        num_classes: int = 0,
        class_dropout: float = 0.1,
        dropout: float = 0.0,
        nsln: bool = False,
        text_dim: int = 0,
        text_tokens: int = 0,
        low_precision_residual: bool = False,
        fp32_final_layer: bool = True,
        two_times: bool = False,
        mlp_act: str = "gelu",
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        frames: int = 0,
        patch_t: int = 1,
        attention: str = "full",
        depth: int = 0,
    ):
        super().__init__()
        if depth < 0:
            raise ValueError(f"depth must be >= 0 (0: the size's own, {size.depth}), got {depth}")
        depth = depth or size.depth
        if mlp_act not in MLP_ACTIVATIONS:
            raise ValueError(f"mlp_act must be one of {', '.join(MLP_ACTIVATIONS)}, not {mlp_act!r}")
        self.low_precision_residual = low_precision_residual
        self.two_times = two_times
        if input_size % size.patch_size:
            raise ValueError(f"latent side {input_size} is not divisible by patch size {size.patch_size}")
        if size.hidden_size % size.num_heads or (size.hidden_size // size.num_heads) % 2:
            raise ValueError("hidden size must split into heads of even width")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, not {attention!r}")
        if frames < 0 or patch_t < 1:
            raise ValueError(f"frames must be >= 0 (0: images) and patch_t >= 1, got {frames} and {patch_t}")
        if max(frames, 1) % patch_t:
            raise ValueError(f"{max(frames, 1)} latent frames (an image is one) are not divisible by patch_t {patch_t}")
        self.in_channels = in_channels
        self.patch_size = p = size.patch_size
        self.patch_t = patch_t
        self.grid = input_size // p
        self.frames = frames
        D = size.hidden_size
        # a (patch_t, p, p) patch: patch_t frames folded into the channels of one 2D patch embedding
        self.x_embedder = nn.Conv2d(in_channels * patch_t, D, kernel_size=p, stride=p)
        self.t_embedder = TimestepEmbedder(D)
        # created only when on, so a one-time DiT draws the same initial weights as before
        self.t2_embedder = TimestepEmbedder(D) if two_times else None
        if num_classes > 0 and text_dim > 0:
            raise ValueError("one kind of conditioning: class labels or text, not both")
        self.y_embedder = LabelEmbedder(num_classes, D, class_dropout) if num_classes > 0 else None
        self.text_embedder = TextEmbedder(text_dim, D, class_dropout) if text_dim > 0 else None
        if text_tokens < 0 or (text_tokens > 0 and text_dim <= 0):
            raise ValueError("text_tokens must be >= 0, and > 0 only with text_dim > 0")
        self.text_dim, self.text_tokens = text_dim, text_tokens
        self.token_embedder = TokenEmbedder(text_dim, D) if text_tokens > 0 else None
        # (1, T/patch_t * grid^2, D); for images the 2D table exactly (sincos_pos_embed_3d, frame 0)
        pos = torch.from_numpy(sincos_pos_embed_3d(D, max(frames, 1) // patch_t, self.grid)).float().unsqueeze(0)
        self.register_buffer("pos_embed", pos, persistent=False)
        self.blocks = nn.ModuleList(
            DiTBlock(D, size.num_heads, size.mlp_ratio, nsln, dropout, mlp_act, qkv_bias, norm_eps,
                     cross_attn=text_tokens > 0)
            for _ in range(depth)
        )
        self.final_layer = FinalLayer(D, p, in_channels * patch_t, fp32=fp32_final_layer, eps=norm_eps)
        # created only when factorized, so a full-attention DiT's weights, init draws and state dict are the image DiT's
        self.temporal = nn.ModuleList(
            TemporalAttention(D, size.num_heads, nsln, dropout, qkv_bias, norm_eps) for _ in range(depth)
        ) if attention == "factorized" else None
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(basic)
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.t2_embedder is not None:
            nn.init.normal_(self.t2_embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(self.t2_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        if self.text_embedder is not None:
            nn.init.normal_(self.text_embedder.proj[0].weight, std=0.02)
            nn.init.normal_(self.text_embedder.proj[2].weight, std=0.02)
        if self.token_embedder is not None:
            nn.init.normal_(self.token_embedder.proj[0].weight, std=0.02)
            nn.init.normal_(self.token_embedder.proj[2].weight, std=0.02)
        for block in [*self.blocks, *(self.temporal or [])]:  # adaLN-Zero: every residual branch starts closed
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
            if getattr(block, "cross_attn", None) is not None:  # the cross-attention branch too (PixArt-alpha)
                nn.init.zeros_(block.cross_attn.proj.weight)
                nn.init.zeros_(block.cross_attn.proj.bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def embed_caption(self, y: torch.Tensor | None, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The packed caption condition y (B, 1 + L, text_dim + 1) (None: the null caption for all) ->
        c plus the pooled caption's vector, the cross-attention context (B, 1 + L, D) and its key mask.
        One dropout decision per sample replaces both the pooled vector and the tokens by the null."""
        B = c.shape[0]
        want = text_condition_shape(self.text_dim, self.text_tokens)
        if y is None:
            y = c.new_zeros((B, *want), dtype=torch.float32)
        if tuple(y.shape[1:]) != want:
            raise ValueError(f"this DiT takes packed caption conditions of shape (B, {want[0]}, {want[1]}) "
                             f"(text_tokens={self.text_tokens}), got {tuple(y.shape)}")
        pooled, tokens, mask = unpack_text(y)  # (B, T), (B, L, T), (B, L)
        drop = self.text_embedder.dropped(pooled, self.training)  # (B,) the null caption
        c = c + self.text_embedder(pooled, self.training, drop)
        context, keep = self.token_embedder(tokens, mask & ~drop[:, None])  # (B, 1 + L, D), (B, 1 + L)
        return c, context, keep

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, C, T, H, W) -> tokens (B, T/pt * (H/p)^2, D), frame-major: the (pt, p, p) patches."""
        B, C, T, H, W = x.shape
        pt = self.patch_t
        x = x.reshape(B, C, T // pt, pt, H, W).transpose(1, 2).reshape(B * (T // pt), C * pt, H, W)
        h = self.x_embedder(x).flatten(2).transpose(1, 2)  # (B T/pt, N, D)
        return h.reshape(B, -1, h.shape[-1])

    def unpatchify(self, x: torch.Tensor, n_t: int | None = None) -> torch.Tensor:
        """Tokens (B, n_t * g^2, p*p*C*pt) -> clips (B, C, n_t * pt, g*p, g*p), n_t frames of tokens;
        n_t None: one frame, returned as images (B, C, g*p, g*p)."""
        B, p, g, C, pt = x.shape[0], self.patch_size, self.grid, self.in_channels, self.patch_t
        x = x.reshape(B, n_t or 1, g, g, p, p, C, pt)  # (B, t, h, w, p, q, C, k)
        x = torch.einsum("nthwpqck->nctkhpwq", x).reshape(B, C, (n_t or 1) * pt, g * p, g * p)
        return x.squeeze(2) if n_t is None else x

    def token_frames(self, x: torch.Tensor) -> int:
        """n_t = T / patch_t, the frames of tokens of a clip x (B, C, T, H, W), checked against the net."""
        if x.ndim != 5:
            raise ValueError(f"a DiT takes latents (B, C, H, W) or clips (B, C, T, H, W), got shape {tuple(x.shape)}")
        T = x.shape[2]
        if T % self.patch_t:
            raise ValueError(f"a clip of {T} latent frames is not divisible by patch_t {self.patch_t}")
        if T // self.patch_t * self.grid**2 > self.pos_embed.shape[1]:
            raise ValueError(f"a clip of {T} latent frames is longer than this DiT's {max(self.frames, 1)} (model.frames)")
        return T // self.patch_t

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, t2: torch.Tensor | None = None
    ) -> torch.Tensor:
        image = x.ndim == 4
        if image:
            x = x.unsqueeze(2)  # an image is a clip of one frame: (B, C, 1, H, W)
        n_t = self.token_frames(x)
        h = self.patchify(x)  # (B, L, D), L = n_t * N tokens, frame-major
        h = h + self.pos_embed[:, : h.shape[1]]
        if self.low_precision_residual and torch.is_autocast_enabled(h.device.type):
            h = h.to(torch.get_autocast_dtype(h.device.type))  # the residual stream in bf16, not fp32
        c = self.t_embedder(t)  # (B, D)
        if self.t2_embedder is not None:
            if t2 is None:
                raise ValueError("this DiT has two time inputs (two_times=True): pass t2")
            c = c + self.t2_embedder(t2)  # (B, D)
        elif t2 is not None:
            raise ValueError("a second time input t2 needs a DiT built with two_times=True")
        context = keep = None
        if self.y_embedder is not None and y is not None:
            c = c + self.y_embedder(y, self.training)
        elif self.text_embedder is not None and y is not None and self.token_embedder is None:
            c = c + self.text_embedder(y, self.training)
        elif self.token_embedder is not None:
            c, context, keep = self.embed_caption(y, c)
        if self.temporal is None:
            for block in self.blocks:
                h = block(h, c, context, keep)  # full attention over all L tokens
        else:
            B, L, D = h.shape
            c_frames = c.repeat_interleave(n_t, dim=0)  # (B n_t, D): each frame of tokens one sequence
            ctx_frames = context.repeat_interleave(n_t, dim=0) if context is not None else None
            keep_frames = keep.repeat_interleave(n_t, dim=0) if keep is not None else None
            for block, temporal in zip(self.blocks, self.temporal):
                h = block(h.reshape(B * n_t, L // n_t, D), c_frames, ctx_frames, keep_frames).reshape(B, L, D)
                h = temporal(h, c, n_t)  # across the frames, per position
        return self.unpatchify(self.final_layer(h, c), None if image else n_t)  # the shape of x


def build_dit(arch: str, input_size: int, in_channels: int, **kwargs) -> DiT:
    if arch not in DIT_SIZES:
        raise KeyError(f"unknown DiT size {arch!r}; sizes: {', '.join(DIT_SIZES)}")
    return DiT(input_size, in_channels, DIT_SIZES[arch], **kwargs)
