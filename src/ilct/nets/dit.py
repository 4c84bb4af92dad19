"""Diffusion Transformer backbone F with adaLN-Zero (Peebles & Xie 2023).

The network sees c_in(sigma) x and c_noise(sigma) = 250 ln(sigma), never sigma
(the parameterization lives in ilct.consistency.precond). Differences from the
reference DiT: per-head query/key LayerNorm, which is a Non-scaling LayerNorm
(METHOD.md section 4, technique 5) when `nsln=True`; dropout in attention and
MLP; `F.scaled_dot_product_attention`; with `two_times=True`, a second time input t2
embedded by its own timestep embedder and added to the adaLN conditioning (the MeanFlow
net sees t and t - r, METHOD.md section 7; the wrapper is ilct.flowmap.meanflow.MeanFlowModel);
with `text_tokens` = L > 0, a cross-attention sublayer in every block that attends to the caption's
token embeddings (as text-to-image DiTs do: PixArt-alpha), the pooled caption vector still in adaLN.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
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
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :],  # (B, 1, 1, S): True = attended
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

    compile_region = True  # ilct.accel.compile_blocks compiles each block on its own

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


def sincos_pos_embed_2d(dim: int, grid: int) -> np.ndarray:
    """Fixed 2D sin-cos position embedding, (grid*grid, dim), as in MAE / DiT."""
    coords = np.arange(grid, dtype=np.float64)
    gw, gh = np.meshgrid(coords, coords)  # w first, as in the reference

    def one_axis(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_axis(dim // 2, gw), one_axis(dim // 2, gh)], axis=1)


# --------------------------------------------------------------------------- the network


class DiT(nn.Module):
    """F(x, t, y[, t2]): latents (B, C, H, H), time input (B,), optional condition y -> (B, C, H, H).

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
    ):
        super().__init__()
        if mlp_act not in MLP_ACTIVATIONS:
            raise ValueError(f"mlp_act must be one of {', '.join(MLP_ACTIVATIONS)}, not {mlp_act!r}")
        self.low_precision_residual = low_precision_residual
        self.two_times = two_times
        if input_size % size.patch_size:
            raise ValueError(f"latent side {input_size} is not divisible by patch size {size.patch_size}")
        if size.hidden_size % size.num_heads or (size.hidden_size // size.num_heads) % 2:
            raise ValueError("hidden size must split into heads of even width")
        self.in_channels = in_channels
        self.patch_size = p = size.patch_size
        self.grid = input_size // p
        D = size.hidden_size
        self.x_embedder = nn.Conv2d(in_channels, D, kernel_size=p, stride=p)
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
        pos = torch.from_numpy(sincos_pos_embed_2d(D, self.grid)).float().unsqueeze(0)
        self.register_buffer("pos_embed", pos, persistent=False)
        self.blocks = nn.ModuleList(
            DiTBlock(D, size.num_heads, size.mlp_ratio, nsln, dropout, mlp_act, qkv_bias, norm_eps,
                     cross_attn=text_tokens > 0)
            for _ in range(size.depth)
        )
        self.final_layer = FinalLayer(D, p, in_channels, fp32=fp32_final_layer, eps=norm_eps)
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
        for block in self.blocks:  # adaLN-Zero: every residual branch starts closed
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
            if block.cross_attn is not None:  # the cross-attention branch too (PixArt-alpha)
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

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        B, p, g, C = x.shape[0], self.patch_size, self.grid, self.in_channels
        x = x.reshape(B, g, g, p, p, C)  # (B, h, w, p, q, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(B, C, g * p, g * p)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, t2: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, T, D)
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
        for block in self.blocks:
            h = block(h, c, context, keep)
        return self.unpatchify(self.final_layer(h, c))  # (B, C, H, W)


def build_dit(arch: str, input_size: int, in_channels: int, **kwargs) -> DiT:
    if arch not in DIT_SIZES:
        raise KeyError(f"unknown DiT size {arch!r}; sizes: {', '.join(DIT_SIZES)}")
    return DiT(input_size, in_channels, DIT_SIZES[arch], **kwargs)
