"""Text-conditional generation on the emoji set: does a sample look like its prompt?

Prompts: `--prompts` captions drawn (seeded) from those the run trained on ("seen")
and as many from those its `data.caption_holdout` kept out of training ("held-out",
e.g. the skin-tone variants: never seen as images or captions). For each guidance
weight w and step count, `--per-prompt` samples per prompt; for each sample, the
nearest training image in a fixed feature space (RGB pixels at 16x16, L2) and that
image's caption. Scores, averaged over prompts:

    exact   the nearest training image carries the prompt's own caption (seen prompts only)
    near    it carries one of the prompt's 5 nearest training captions in the sentence-
            embedding space (for a seen prompt, itself and 4 others; for "waving hand sign,
            medium skin tone", e.g. "waving hand sign" and its neighbours)

    cos     the cosine between the prompt's embedding and that caption's (a graded version of near)

with their chance levels (the fraction of training images whose caption qualifies).
w = 0 is the unconditional model (the null caption): the same numbers without the prompt.
A run with caption tokens (model.text_tokens > 0) gets each prompt's tokens as well
(TextEncoder.condition). The captions are the dataset's, or (a dataset without them, as in
the tests) those stored with the run's latents (data.latents/captions.json).

    python benchmarks/quality/text_retrieval.py --run runs/emoji-text --weights 0,1,2,3,4 --steps 1,2 \\
        --prompts 24 --per-prompt 8 --json docs/results/text_emoji.json --grid docs/figures/text_emoji
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ilct.io.grid import make_grid, save_png
from ilct.latents import LatentDir
from ilct.runs.opened import open_run
from ilct.training.data import load_dataset
from ilct.generate import generate
from ilct.nets.text import TextEncoder, kept_indices

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402

FEATURE_SIDE = 16
NEAR_K = 5


def features(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, H, W, C) -> (n, 16*16*C) float in [0, 1] (area-averaged pixels)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return torch.nn.functional.adaptive_avg_pool2d(x, FEATURE_SIDE).flatten(1)


def nearest(query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    return torch.cdist(query, bank).argmin(dim=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--weights", default="0,1,2,3")
    p.add_argument("--steps", default="1,2")
    p.add_argument("--prompts", type=int, default=24, help="prompts of each kind (seen, held-out)")
    p.add_argument("--per-prompt", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True)
    p.add_argument("--figure", help="PNG: near and cos against w, seen and held-out prompts, per step count")
    p.add_argument("--grid", help="path prefix: <prefix>_seen.png and <prefix>_heldout.png, one row per prompt "
                   "(the first 8 prompts: the real emoji, then its samples) at the w with the best near score, 1 step")
    args = p.parse_args()

    t0 = time.time()
    run = open_run(args.run)
    cfg = run.cfg
    if cfg.model.text_dim <= 0:
        raise SystemExit(f"{args.run} is not text-conditional (model.text_dim = 0)")
    data = load_dataset(cfg)
    captions = list(data.captions or (LatentDir(cfg.data.latents).captions if cfg.data.latents else None) or [])
    if not captions:
        raise SystemExit("the run's dataset has no captions")
    train_idx = kept_indices(captions, cfg.data.caption_holdout) if cfg.data.caption_holdout else list(range(len(captions)))
    held = sorted(set(captions) - {captions[j] for j in train_idx})
    first = {c: j for j, c in reversed(list(enumerate(captions)))}  # caption -> its first image
    train_caps = [captions[j] for j in train_idx]
    bank = features(data.images_at(np.asarray(train_idx)))

    rng = np.random.default_rng(args.seed)
    seen_pool = sorted(set(train_caps))
    seen = [seen_pool[j] for j in rng.choice(len(seen_pool), min(args.prompts, len(seen_pool)), replace=False)]
    heldout = [held[j] for j in rng.choice(len(held), min(args.prompts, len(held)), replace=False)] if held else []
    enc = TextEncoder()
    uniq = sorted(set(train_caps))
    cap_emb = enc.embed(uniq)
    prompt_sets = {"seen": seen, "held-out": heldout}
    prompt_emb = {k: enc.embed(v) for k, v in prompt_sets.items() if v}
    prompt_cond = {k: enc.condition(v, cfg.model.text_tokens) for k, v in prompt_sets.items() if v}  # what the model takes
    near = {}
    for kind, ps in prompt_sets.items():
        if not ps:
            continue
        sims = prompt_emb[kind] @ cap_emb.T
        for prompt, row in zip(ps, sims):
            near[prompt] = {uniq[j] for j in row.topk(NEAR_K).indices.tolist()}
    train_caps_arr = np.asarray(train_caps, dtype=object)
    pos = {c: j for j, c in enumerate(uniq)}
    mean_train_emb = cap_emb[[pos[c] for c in train_caps]].mean(dim=0)  # chance level of cos

    def chance(prompt: str) -> tuple[float, float]:
        return float(np.mean(train_caps_arr == prompt)), float(np.mean([c in near[prompt] for c in train_caps]))

    def score(kind: str, ps: list[str], nn_caps: list[str], per: int) -> dict:
        exact, close, cos = [], [], []
        for k, prompt in enumerate(ps):
            got = nn_caps[k * per:(k + 1) * per]
            exact.append(np.mean([g == prompt for g in got]))
            close.append(np.mean([g in near[prompt] for g in got]))
            cos.append(float((cap_emb[[pos[g] for g in got]] @ prompt_emb[kind][k]).mean()))
        ch = [chance(pr) for pr in ps]
        return {"exact": float(np.mean(exact)), "near": float(np.mean(close)), "cos": float(np.mean(cos)),
                "chance_exact": float(np.mean([c[0] for c in ch])), "chance_near": float(np.mean([c[1] for c in ch])),
                "chance_cos": float((prompt_emb[kind] @ mean_train_emb).mean())}

    # calibration: the real images of the held-out prompts (one each) scored the same way: what a
    # generator that draws exactly the prompt's emoji would get (seen prompts would score 1: they are in the bank)
    rows, grids = [], {}
    if heldout:
        real = data.images_at(np.asarray([first[c] for c in heldout]))
        row = {"prompts": "held-out", "steps": None, "w": None, "source": "real images of the prompts",
               **score("held-out", heldout, [train_caps[j] for j in nearest(features(real), bank).tolist()], 1),
               "n": len(real)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    weights = [float(w) for w in args.weights.split(",")]
    steps_list = [int(s) for s in args.steps.split(",")]
    for steps in steps_list:
        for w in weights:
            for kind, ps in prompt_sets.items():
                if not ps:
                    continue
                text = prompt_cond[kind].repeat_interleave(args.per_prompt, dim=0)
                with torch.inference_mode():
                    imgs = generate(run.model, run.autoencoder, run.stats, cfg, len(text), steps, args.seed,
                                    256, text=None if w == 0 else text, guidance=w if w else 1.0)
                nn_caps = [train_caps[j] for j in nearest(features(imgs), bank).tolist()]
                row = {"prompts": kind, "steps": steps, "w": w, **score(kind, ps, nn_caps, args.per_prompt), "n": len(imgs)}
                rows.append(row)
                grids[(kind, steps, w)] = imgs
                print(json.dumps(row), flush=True)
    report = {"run": str(args.run), "checkpoint": str(run.checkpoint), "step": run.step, "text_tokens": cfg.model.text_tokens,
              "command": "python " + " ".join(sys.argv), "machine": f"{platform.machine()} CPU, torch {torch.__version__}",
              "feature_space": f"RGB pixels area-averaged to {FEATURE_SIDE}x{FEATURE_SIDE}, L2", "near_k": NEAR_K,
              "n_train_images": len(train_idx), "n_train_captions": len(uniq), "n_heldout_captions": len(held),
              "prompts": prompt_sets, "rows": rows, "seconds": round(time.time() - t0, 1)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.grid:
        for kind, tag in (("seen", "seen"), ("held-out", "heldout")):
            cands = [r for r in rows if r["prompts"] == kind and r["steps"] == steps_list[0] and r["w"]]
            if not cands:
                continue
            best = max(cands, key=lambda r: r["near"])
            imgs = grids[(kind, steps_list[0], best["w"])][: 8 * args.per_prompt]
            shown = prompt_sets[kind][: len(imgs) // args.per_prompt]
            real = data.images_at(np.asarray([first[c] for c in shown]))  # column 0: the prompt's own emoji
            rows_img = [np.concatenate([real[k:k + 1], imgs[k * args.per_prompt:(k + 1) * args.per_prompt]])
                        for k in range(len(shown))]
            Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
            save_png(make_grid(np.concatenate(rows_img), cols=args.per_prompt + 1), f"{args.grid}_{tag}.png", scale=1)
            report.setdefault("grids", {})[kind] = {"file": f"{args.grid}_{tag}.png", "w": best["w"],
                                                    "steps": steps_list[0], "rows": prompt_sets[kind][:8]}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.figure:
        plot(rows, steps_list, args.figure)
    print(f"done in {time.time() - t0:.0f} s -> {args.json}")


def plot(rows: list[dict], steps_list: list[int], path: str) -> None:
    plt = common.pyplot()

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, marker in (("seen", "o"), ("held-out", "s")):
        for s in steps_list:
            r = [x for x in rows if x["prompts"] == kind and x["steps"] == s and x["w"] is not None]
            if not r:
                continue
            a1.plot([x["w"] for x in r], [x["near"] for x in r], marker=marker, label=f"{kind}, {s} NFE")
            a2.plot([x["w"] for x in r], [x["cos"] for x in r], marker=marker, label=f"{kind}, {s} NFE")
        r = [x for x in rows if x["prompts"] == kind and x["w"] is not None]
        if r:
            a1.axhline(r[0]["chance_near"], color="gray", lw=0.8, ls=":" if kind == "seen" else "--")
            a2.axhline(r[0]["chance_cos"], color="gray", lw=0.8, ls=":" if kind == "seen" else "--")
    a1.set_xlabel("guidance w (0 = unconditional)")
    a1.set_ylabel(f"near (caption among the prompt's {NEAR_K} nearest)")
    a1.set_title("retrieval (gray: chance)", fontsize=10)
    a1.legend(fontsize=7)
    a2.set_xlabel("guidance w (0 = unconditional)")
    a2.set_ylabel("cos(prompt, caption of the nearest training image)")
    a2.set_title("caption similarity (gray: chance)", fontsize=10)
    a2.legend(fontsize=7)
    fig.tight_layout()
    common.save_figure(fig, path, 110)


if __name__ == "__main__":
    main()
