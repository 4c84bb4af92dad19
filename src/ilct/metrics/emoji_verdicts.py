"""Verdicts on generated emoji that output no user wants cannot pass (issue 36, item 4).

The emoji counterpart of ilct.metrics.clip_verdicts. Nearest-neighbour retrieval in pixels
(benchmarks/quality/text_retrieval.py) gives every image an answer: a pale blob is "near" some emoji. Here an
image must first look like an emoji:

    present   the classifier does not call it "none" (a tenth class, trained on `negatives`: averages of
              several emoji, heavily blurred emoji, smooth colour fields, blank canvases), and its features
              (the classifier's trunk, before its last layer) lie inside the k-NN ball of some real emoji
              (Kynkaanniemi et al.'s manifold test; `Reference`, built from the emoji the classifier trained
              on, each ball's radius measured to the other reference emoji). The ball alone passed the mean
              emoji and a blank canvas (the set has near-blank glyphs): hence the tenth class
    group     present, and the classifier's best of the nine groups is the prompt's Unicode group (ilct.data.emoji_groups: "Smileys
              & Emotion", "Animals & Nature", ... nine groups)
    emoji     present, and its nearest real emoji (RGB pixels area-averaged to 16x16, L2, over all 3,926) is
              the prompt's emoji in some skin tone (ilct.data.emoji_groups.base): the prompt's own picture

The classifier is a measuring instrument, trained here on real emoji (no pretrained network can be
downloaded): every fifth emoji of a seeded permutation is kept out of its training and of the reference
(`fold`), and its accuracy on them is saved with it. Those kept-out emoji are the real control of the
presence test (`K` was chosen on them and on broken controls before any model was scored).

`summary` reports each verdict with a 95 % Wilson interval from the number of images, the accuracy per asked
group and the confusion of asked (rows) against shown group (columns; the last, "none": no emoji).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ilct.data.emoji import DEFAULT_FONT, load_emoji
from ilct.data.emoji_groups import DEFAULT_EMOJI_TEST, GROUPS, base, emoji_groups
from ilct.errors import IlctError
from ilct.io.files import read_json, read_tensors, save_tensors, write_text
from ilct.metrics.clip_verdicts import wilson
from ilct.metrics.clips import _trunk, confusion

SIDE = 32  # the classifier's input: RGB at 32x32
PIXEL_SIDE = 16  # the identity test's pixel space (text_retrieval.py's)
FOLDS = 5  # every FOLDS-th emoji of a seeded permutation is kept out of the classifier and the reference
K = 5  # the presence test's neighbours (chosen on the controls: docs/emoji.md)
PAD = 4  # training augmentation: pad with white by PAD pixels, crop back at random
NONE = len(GROUPS)  # the classifier's tenth class: not an emoji
NEGATIVE_SHARE = 0.25  # of each training batch


def emoji_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, 32, 32) in [-1, 1] (area-averaged)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) RGB images, got {images.dtype} {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return F.adaptive_avg_pool2d(x, SIDE)


def pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> (N, 16*16*3) in [0, 1]: the identity test's space."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return F.adaptive_avg_pool2d(x, PIXEL_SIDE).flatten(1)


@dataclass
class EmojiSet:
    """The real emoji with their captions, groups (-1: none) and bases, and the classifier's fold."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    captions: list[str]
    groups: np.ndarray  # (N,) index into GROUPS, -1 without one
    kept_out: np.ndarray  # (N,) bool: kept out of the classifier's training and of the reference

    @classmethod
    def load(cls, font: str | Path = DEFAULT_FONT, emoji_test: str | Path = DEFAULT_EMOJI_TEST,
             resolution: int = 64, seed: int = 0) -> "EmojiSet":
        ds, captions = load_emoji(font, resolution)
        perm = np.random.default_rng(seed).permutation(len(captions))
        kept_out = np.zeros(len(captions), bool)
        kept_out[perm[::FOLDS]] = True
        return cls(ds.images, list(captions), np.asarray(emoji_groups(captions, emoji_test)), kept_out)

    def bases(self) -> list[str]:
        return [base(c) for c in self.captions]


class EmojiScorer:
    """A trained group classifier (ilct.metrics.clips' per-frame CNN on RGB) with its record `meta`."""

    def __init__(self, model: torch.nn.Sequential, meta: dict):
        self.model = model.eval()
        self.meta = meta

    @torch.no_grad()
    def features(self, images: np.ndarray, batch_size: int = 512) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """(trunk features (N, D) float64, best of the nine groups (N,), called "none" (N,)) of uint8 (N, H, W, 3)
        images."""
        trunk, head = self.model[:-1], self.model[-1]
        feats, groups, none = [], [], []
        for s in range(0, len(images), batch_size):
            f = trunk(emoji_input(images[s : s + batch_size]))
            logits = head(f)
            feats.append(f.double())
            groups.append(logits[:, :NONE].argmax(1).numpy())
            none.append((logits.argmax(1) == NONE).numpy())
        return torch.cat(feats), np.concatenate(groups), np.concatenate(none)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random shift (white padding, random crop) and, for half the images, a 3x3 box blur."""
    n = len(x)
    padded = F.pad(x, (PAD,) * 4, value=1.0)
    dx, dy = (torch.randint(0, 2 * PAD + 1, (2,), generator=g).tolist())
    x = padded[:, :, dy : dy + SIDE, dx : dx + SIDE]
    blur = torch.rand(n, generator=g) < 0.5
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return torch.where(blur.view(-1, 1, 1, 1), blurred, x)


def negatives(x: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """n images that are not emoji, from real ones x (N, 3, 32, 32) in [-1, 1], a quarter of each kind: the
    average of 2-16 random emoji (a collapsed generator's output), an emoji box-blurred over 5-9 pixels, a smooth
    random colour field (4x4 noise upsampled) and a blank canvas of one colour (mostly near white: grey levels, half of them tinted)."""
    q = -(-n // 4)
    m = int(torch.randint(2, 17, (1,), generator=g))
    avg = x[torch.randint(0, len(x), (q, m), generator=g)].mean(1)
    b = int(torch.randint(2, 5, (1,), generator=g)) * 2 + 1
    blur = F.avg_pool2d(F.pad(x[torch.randint(0, len(x), (q,), generator=g)], (b // 2,) * 4, mode="replicate"), b, stride=1)
    field = F.interpolate(torch.rand(q, 3, 4, 4, generator=g) * 2 - 1, size=SIDE, mode="bilinear", align_corners=False)
    grey = 1 - torch.rand(q, 1, 1, 1, generator=g) ** 2 * 2  # one level for all three channels: often white
    blank = (grey + 0.1 * torch.randn(q, 3, 1, 1, generator=g) * (torch.rand(q, 1, 1, 1, generator=g) < 0.5))
    blank = blank.clamp(-1, 1).expand(q, 3, SIDE, SIDE)
    return torch.cat([avg, blur, field, blank])[:n]


def train_emoji_classifier(data: EmojiSet, out: Path, steps: int = 1500, batch_size: int = 128, seed: int = 0,
                           progress: bool = True) -> EmojiScorer:
    """Adam with a one-cycle schedule on the emoji with a group outside the kept-out fold, drawn with equal
    weight per group (People & Body is 58 % of the set), augmented (`augment`). Then measures the accuracy on the
    kept-out fold and saves weights + record in `out`."""
    t0 = time.perf_counter()
    train = np.flatnonzero(~data.kept_out & (data.groups >= 0))
    if len(train) < len(GROUPS):
        raise IlctError(f"the emoji classifier needs emoji of every group, got {len(train)} with a group")
    counts = np.bincount(data.groups[train], minlength=len(GROUPS)).astype(np.float64)
    weight = torch.from_numpy(1.0 / np.maximum(counts, 1)[data.groups[train]])
    x_all, y_all = emoji_input(data.images[train]), torch.from_numpy(data.groups[train])
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = _trunk(3, len(GROUPS) + 1).train()
    n_neg = int(batch_size * NEGATIVE_SHARE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    bar = tqdm(total=steps, desc="emoji classifier", disable=not progress, dynamic_ncols=True)
    for _ in range(steps):
        idx = torch.multinomial(weight, batch_size - n_neg, replacement=True, generator=g)
        x = torch.cat([x_all[idx], negatives(x_all, n_neg, g)])
        y = torch.cat([y_all[idx], torch.full((n_neg,), NONE)])
        loss = F.cross_entropy(model(augment(x, g)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.numpy().tobytes())
    meta = {"trained_on": f"the emoji with a Unicode group outside the kept-out fold (1 in {FOLDS}), equal weight per "
                          "group, shifted and blurred, and a tenth class 'none' (a quarter of each batch: negatives())", "groups": list(GROUPS), "steps": steps,
            "batch_size": batch_size, "seed": seed, "train_images": int(len(train)),
            "train_seconds": round(time.perf_counter() - t0, 1), "fingerprint": "emoji-cls-" + h.hexdigest()[:16]}
    scorer = EmojiScorer(model, meta)
    held = np.flatnonzero(data.kept_out & (data.groups >= 0))
    _, got, none = scorer.features(data.images[held])
    meta["kept_out_accuracy"] = {"acc": float((got == data.groups[held]).mean()), "n": int(len(held)),
                                 "called_none": float(none.mean()),
                                 "per_group": {GROUPS[c]: float((got == c)[data.groups[held] == c].mean())
                                               for c in range(len(GROUPS)) if (data.groups[held] == c).any()}}
    save_tensors(model.state_dict(), out / "model.safetensors")
    write_text(out / "config.json", json.dumps(meta, indent=2))
    return scorer


def load_emoji_classifier(cache_dir: Path, data: EmojiSet, progress: bool = True, **train_options) -> EmojiScorer:
    """The cached emoji classifier, trained on first use (a few CPU minutes). Options other than the defaults
    (the tests' few steps) name their own folder, so they never stand in for the real one."""
    extra = "".join(f"-{k}{v}" for k, v in sorted(train_options.items()))
    out = Path(cache_dir) / "emoji_classifier" / f"groups{len(GROUPS)}+none-{SIDE}px-f{FOLDS}{extra}"
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        try:
            model = _trunk(3, len(GROUPS) + 1)
            model.load_state_dict(read_tensors(out / "model.safetensors"))
            meta = read_json(out / "config.json")
            if isinstance(meta, dict) and "kept_out_accuracy" in meta:
                return EmojiScorer(model, meta)
        except (IlctError, RuntimeError, ValueError):
            pass
        print(f"note: the cached emoji classifier in {out} is damaged; training it again", file=sys.stderr)
    print(f"training the emoji group classifier (cached in {out})", file=sys.stderr)
    return train_emoji_classifier(data, out, progress=progress, **train_options)


@dataclass
class Reference:
    """Real emoji features with their k-NN radii: what an emoji looks like, whatever it shows."""

    features: torch.Tensor  # (R, D)
    radii: torch.Tensor  # (R,)
    k: int

    @classmethod
    def of(cls, scorer: EmojiScorer, images: np.ndarray, k: int = K) -> "Reference":
        if len(images) <= k:
            raise ValueError(f"the presence test needs more than k = {k} real emoji, got {len(images)}")
        f = scorer.features(images)[0]
        radii = torch.cdist(f, f).kthvalue(k + 1, dim=1).values  # the 1st is the emoji itself
        return cls(f, radii, k)

    def inside(self, feats: torch.Tensor, chunk: int = 2048) -> np.ndarray:
        """(N,) whether each image lies inside the ball of some reference emoji."""
        return np.concatenate([(torch.cdist(feats[s : s + chunk], self.features) <= self.radii[None, :]).any(1).numpy()
                               for s in range(0, len(feats), chunk)])


@dataclass
class Judge:
    """Everything the verdicts need: the classifier, the presence reference and the identity bank."""

    scorer: EmojiScorer
    reference: Reference
    bank: torch.Tensor  # pixels() of every real emoji
    bank_bases: np.ndarray  # (N,) object: their bases

    @classmethod
    def of(cls, data: EmojiSet, scorer: EmojiScorer, k: int = K) -> "Judge":
        ref = Reference.of(scorer, data.images[~data.kept_out], k)
        return cls(scorer, ref, pixels(data.images), np.asarray(data.bases(), dtype=object))


def image_verdicts(images: np.ndarray, want_group: np.ndarray, want_base: list[str], judge: Judge) -> dict:
    """Per image: `present`, `shown_group` (-1 without an emoji), `group_ok`, `emoji_ok`, `nearest` (the index
    of its nearest real emoji in pixels)."""
    want_group = np.asarray(want_group).reshape(-1)
    if not len(want_group) == len(want_base) == len(images):
        raise ValueError(f"{len(images)} images, {len(want_group)} groups and {len(want_base)} emoji asked")
    feats, groups, none = judge.scorer.features(images)
    present = ~none & judge.reference.inside(feats)
    nearest = torch.cdist(pixels(images), judge.bank).argmin(1).numpy()
    same = judge.bank_bases[nearest] == np.asarray(want_base, dtype=object)
    return {"present": present, "shown_group": np.where(present, groups, -1),
            "group_ok": present & (groups == want_group), "emoji_ok": present & same, "nearest": nearest}


def _rate(ok: np.ndarray) -> dict:
    k, n = int(ok.sum()), int(ok.size)
    lo, hi = wilson(k, n)
    return {"acc": k / n if n else float("nan"), "ci95": [round(lo, 4), round(hi, 4)], "k": k, "n": n}


def summary(v: dict, want_group: np.ndarray) -> dict:
    """Verdicts summed up: present, group and emoji with 95 % intervals, per asked group, and the confusion of
    asked (rows) against shown group (columns; the last, "none": no emoji)."""
    want_group = np.asarray(want_group).reshape(-1)
    shown = np.where(v["shown_group"] < 0, len(GROUPS), v["shown_group"])
    per_group = {GROUPS[c]: _rate(v["group_ok"][want_group == c]) for c in range(len(GROUPS)) if (want_group == c).any()}
    return {"present": _rate(v["present"]), "group": _rate(v["group_ok"]), "emoji": _rate(v["emoji_ok"]),
            "per_group": per_group, "confusion": confusion(want_group, shown, len(GROUPS) + 1)[: len(GROUPS)],
            "n": int(len(want_group))}


def strict_scores(images: np.ndarray, want_group: np.ndarray, want_base: list[str], judge: Judge) -> dict:
    return summary(image_verdicts(images, want_group, want_base, judge), want_group)
