"""Does the garment word reach the network? The moving Fashion-MNIST captions through the text encoder (issue 36,
item 2: text conditioning as a candidate limit of class fidelity).

For the 40 captions "a <garment> moving <direction>" (10 garments x 4 directions) this measures, without any
training:

    tokens      each caption's token count ([CLS] and [SEP] included) against model.text_tokens, and whether the
                garment's and the direction's tokens survive the truncation
    variance    a two-way decomposition of the pooled (unit-norm) embeddings: the share of their total variance
                explained by the garment (its 10 means), by the direction (its 4 means) and the rest
    nearest     for each caption, whether its most similar other caption (cosine) shares its garment or its
                direction: what a network that reads the pooled vector most easily confuses
    similar     the cosine similarity of the garments' centred mean embeddings (10 x 10), and each garment's
                most similar other garment
    balance     the training clips per garment and per (garment, direction) pair (--data-dir; the class balance
                of the data, another candidate)
    tokens_var  the same decomposition for the caption's tokens (the mean over its unmasked tokens, as the
                network's cross-attention would first see them)

    python benchmarks/quality/caption_embeddings.py --out docs/results/caption_embeddings.json
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402


def variance_shares(e: np.ndarray, garment: np.ndarray, direction: np.ndarray) -> dict[str, float]:
    """Shares of the total variance of rows e explained by the garment means and by the direction means (a
    balanced two-way layout: the two main effects are orthogonal), and the rest (interaction)."""
    mu = e.mean(0)
    total = ((e - mu) ** 2).sum()
    g = np.stack([e[garment == k].mean(0) for k in garment])  # each row's garment mean
    d = np.stack([e[direction == k].mean(0) for k in direction])
    sg, sd = ((g - mu) ** 2).sum() / total, ((d - mu) ** 2).sum() / total
    return {"garment": round(float(sg), 4), "direction": round(float(sd), 4), "rest": round(float(1 - sg - sd), 4)}


def nearest_shares(e: np.ndarray, garment: np.ndarray, direction: np.ndarray) -> dict[str, float]:
    """For each row its most cosine-similar other row: the share that has the same garment, the same direction."""
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = u @ u.T
    np.fill_diagonal(s, -np.inf)
    j = s.argmax(1)
    return {"same_garment": float((garment[j] == garment).mean()), "same_direction": float((direction[j] == direction).mean())}


def garment_similarity(e: np.ndarray, garment: np.ndarray) -> np.ndarray:
    """(K, K) cosine similarity of the garments' mean embeddings after removing the overall mean."""
    m = np.stack([e[garment == k].mean(0) for k in range(garment.max() + 1)])
    m = m - m.mean(0)
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    return m @ m.T


def balance(root: str) -> dict:
    """Training clips (the presets' moving_fmnist train split) per garment and per (garment, direction) pair."""
    from ilct.data.moving_fmnist import load_moving_fmnist

    d = load_moving_fmnist(root, "train", 32, 8, 1)
    pairs = np.unique(np.stack([d.labels, d.motions], 1), axis=0, return_counts=True)[1]
    return {"clips": len(d.labels), "per_garment": np.bincount(d.labels).tolist(),
            "pairs": len(pairs), "per_pair": {"min": int(pairs.min()), "max": int(pairs.max())}}


def main(argv: list[str] | None = None) -> dict:
    from ilct.data.clips import DIRECTIONS
    from ilct.data.moving_fmnist import NAMES, phrase
    from ilct.nets.text import ENCODER, TextEncoder

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text-tokens", type=int, default=8, help="model.text_tokens of the video presets")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist", help="'' skips the balance count")
    p.add_argument("--out", help="JSON report")
    args = p.parse_args(argv)
    pairs = [(c, d) for c in range(len(NAMES)) for d in range(len(DIRECTIONS))]
    captions = [phrase(c, DIRECTIONS[d]) for c, d in pairs]
    garment, direction = np.array([c for c, _ in pairs]), np.array([d for _, d in pairs])
    enc = TextEncoder()
    pooled = enc.embed(captions).double().numpy()
    tok, mask = enc.tokens(captions, 64)
    counts = mask.sum(1).numpy()
    mean_tokens = ((tok.double() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).numpy()
    split = enc.model.tokenizer.tokenize
    words = {c: split(phrase(c, "left"))[1:-2] for c in range(len(NAMES))}  # the garment's own tokens
    truncated = [captions[i] for i in range(len(captions)) if counts[i] > args.text_tokens]
    report = {"command": "python " + " ".join(["benchmarks/quality/caption_embeddings.py",
                                               *(argv if argv is not None else sys.argv[1:])]),
              "machine": common.machine(), "date": datetime.date.today().isoformat(), "encoder": ENCODER,
              "captions": len(captions), "text_tokens": args.text_tokens,
              "token_counts": {"min": int(counts.min()), "max": int(counts.max())},
              "truncated_at_text_tokens": truncated,
              "garment_tokens": {NAMES[c]: w for c, w in words.items()},
              "pooled": {"variance": variance_shares(pooled, garment, direction),
                         "nearest": nearest_shares(pooled, garment, direction)},
              "garment_similarity": np.round(garment_similarity(pooled, garment), 3).tolist(),
              "most_similar_garment": {NAMES[c]: NAMES[int(np.argsort(-row)[1])] for c, row in
                                       enumerate(garment_similarity(pooled, garment))},
              "token_mean": {"variance": variance_shares(mean_tokens, garment, direction),
                             "nearest": nearest_shares(mean_tokens, garment, direction)}}
    if args.data_dir:
        report["balance"] = balance(args.data_dir)
    print(f"tokens {counts.min()}-{counts.max()} (L = {args.text_tokens}: {len(truncated)} truncated); pooled "
          f"variance {report['pooled']['variance']}, nearest {report['pooled']['nearest']}; token mean variance "
          f"{report['token_mean']['variance']}")
    if args.out:
        common.write_json(Path(args.out), report)
    return report


if __name__ == "__main__":
    main()
