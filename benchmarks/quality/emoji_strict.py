"""Text-to-image on emoji under the strict scorer (issue 36, item 4): does a sample show the prompt's emoji?

Scores one or more text-conditional emoji runs (one per training seed, `--run` repeated) with
ilct.metrics.emoji_verdicts: per image whether it looks like an emoji at all (`present`), whether it is of the
prompt's Unicode group (`group`, nine groups) and whether its nearest real emoji is the prompt's own emoji in
some skin tone (`emoji`), each with a 95 % Wilson interval, per asked group and a confusion matrix.

Prompts (the same for every run, drawn with `--seed`):

    seen      `--per-group` captions of every group among those the runs trained on (chance of the group 1/9)
    heldout   `--heldout` captions the runs' data.caption_holdout kept out (the skin-tone variants: all in
              People & Body, so the group says only "a person or a hand"; the emoji verdict is the test)

Controls, scored the same way beside the rows, from the first run's autoencoder: `real` (each prompt's own
emoji through the autoencoder: the ceiling), `shuffled` (those images with the prompts of the set rolled by
one group's worth, so that a seen image is asked for another group), `mean` (the training emoji's mean image for every prompt: a collapsed generator), `one` (one real emoji
for every prompt) and `blobs` (random colour blobs on white). Every row samples with the same noise.

`--steps S1,S2,...` scores each run's checkpoints at those steps at the fewest `--nfe`, and the last at every
`--nfe` (default: the latest checkpoint only). Rows of the same step, split and NFE are pooled over the runs.

    python benchmarks/quality/emoji_strict.py --run runs/E0 --run runs/E1 --nfe 1,2 --out docs/results/emoji_strict.json

Bad input (a run that cannot be opened or is not a text-conditional emoji run, runs with other captions, a
missing font or emoji-test.txt) is one line and exit 2, with nothing written.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402

CONTROLS = ("real", "shuffled", "mean", "one", "blobs")


class BadInput(Exception):
    pass


def draw_prompts(captions: list[str], groups: np.ndarray, trained: set[str], per_group: int, heldout: int,
                 seed: int) -> dict[str, list[str]]:
    """seen: per_group trained captions of every group; heldout: `heldout` captions never trained on (each with
    a group)."""
    from ilct.data.emoji_groups import GROUPS

    rng = np.random.default_rng(seed)
    group_of = {c: int(g) for c, g in zip(captions, groups) if g >= 0}
    seen = []
    for k in range(len(GROUPS)):
        pool = sorted(c for c in set(trained) if group_of.get(c) == k)
        seen += [pool[j] for j in rng.choice(len(pool), min(per_group, len(pool)), replace=False)]
    held_pool = sorted(c for c in group_of if c not in trained)
    held = [held_pool[j] for j in rng.choice(len(held_pool), min(heldout, len(held_pool)), replace=False)]
    return {"seen": seen, "heldout": held}


def blobs(n: int, side: int, seed: int) -> np.ndarray:
    """n images of 1-3 random Gaussian colour blobs on white."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side].astype(np.float64)
    out = np.empty((n, side, side, 3), np.uint8)
    for i in range(n):
        img = np.full((side, side, 3), 255.0)
        for _ in range(rng.integers(1, 4)):
            cx, cy, r = rng.uniform(0.25, 0.75, 2).tolist() + [rng.uniform(0.1, 0.3)]
            a = np.exp(-((xx - cx * side) ** 2 + (yy - cy * side) ** 2) / (2 * (r * side) ** 2))[..., None]
            img = img * (1 - a) + a * rng.integers(0, 256, 3)
        out[i] = img.round()
    return out


def roundtrip(autoencoder, images: np.ndarray) -> np.ndarray:
    from ilct.data.images import to_float, to_uint8

    dev = next(autoencoder.parameters()).device
    with torch.inference_mode():
        return np.concatenate([to_uint8(autoencoder.decode(autoencoder.encode(to_float(images[s : s + 256]).to(dev))))
                               for s in range(0, len(images), 256)])


def open_runs(paths: list[str], steps: list[int] | None) -> dict[str, dict[int, object]]:
    """run -> step -> opened run; every checkpoint checked before anything is scored."""
    from ilct.errors import IlctError
    from ilct.runs.opened import open_run

    out = {}
    for p in paths:
        try:
            if steps is None:
                r = open_run(p)
                out[p] = {r.step: r}
            else:
                out[p] = {s: open_run(p, Path(p) / "checkpoints" / f"step_{s:09d}") for s in steps}
        except IlctError as e:
            raise BadInput(str(e)) from None
        cfg = next(iter(out[p].values())).cfg
        if cfg.data.dataset != "emoji" or cfg.model.text_dim <= 0:
            raise BadInput(f"{p} is not a text-conditional emoji run (data.dataset {cfg.data.dataset}, "
                           f"model.text_dim {cfg.model.text_dim})")
    holdouts = {next(iter(r.values())).cfg.data.caption_holdout for r in out.values()}
    if len(holdouts) > 1:
        raise BadInput(f"the runs hold out different captions ({sorted(holdouts)}): their prompts differ")
    return out


def sample(run, encoder, captions: list[str], per_prompt: int, nfe: int, guidance: float, seed: int) -> np.ndarray:
    from ilct.generate import generate

    text = encoder.condition(captions, run.cfg.model.text_tokens).repeat_interleave(per_prompt, 0)
    with torch.inference_mode():
        return generate(run.model, run.autoencoder, run.stats, run.cfg, len(text), nfe, seed, 256,
                        guidance=guidance, text=text)


def pooled(rows: list[dict]) -> dict:
    from ilct.metrics.clip_verdicts import wilson

    out = {}
    for key in ("present", "group", "emoji"):
        k, n = sum(r["strict"][key]["k"] for r in rows), sum(r["strict"][key]["n"] for r in rows)
        lo, hi = wilson(k, n)
        out[key] = {"acc": k / n, "ci95": [round(lo, 4), round(hi, 4)], "k": k, "n": n,
                    "seeds": [r["strict"][key]["acc"] for r in rows]}
    return out


def evaluate(args, runs: dict, data, judge) -> dict:
    from ilct.data.emoji_groups import GROUPS, base
    from ilct.metrics.emoji_verdicts import strict_scores
    from ilct.nets.text import TextEncoder, kept_indices

    first = next(iter(next(iter(runs.values())).values()))
    holdout = first.cfg.data.caption_holdout
    trained = {data.captions[j] for j in (kept_indices(data.captions, holdout) if holdout else range(len(data.captions)))}
    prompts = draw_prompts(data.captions, data.groups, trained, args.per_group, args.heldout, args.seed)
    index = {c: j for j, c in reversed(list(enumerate(data.captions)))}
    group_of = {c: int(data.groups[index[c]]) for split in prompts.values() for c in split}
    report = {"prompts": prompts, "controls": {}, "rows": [], "pooled": []}
    train_mean = data.images[[index[c] for c in trained]].mean(0).round().astype(np.uint8)
    for split, ps in prompts.items():
        if not ps:
            continue
        want_g = np.repeat([group_of[c] for c in ps], 1)
        want_b = [base(c) for c in ps]
        real = roundtrip(first.autoencoder, data.images[[index[c] for c in ps]])
        groups_asked = len(set(want_g.tolist()))  # seen prompts come in runs of one group: roll to the next group
        shift = len(ps) // groups_asked if groups_asked > 1 else 1
        ctl = {"real": (real, want_g, want_b),
               "shuffled": (real, np.roll(want_g, shift), want_b[-shift:] + want_b[:-shift]),
               "mean": (np.repeat(train_mean[None], len(ps), 0), want_g, want_b),
               "one": (np.repeat(real[:1], len(ps), 0), want_g, want_b),
               "blobs": (blobs(len(ps), data.images.shape[1], args.seed), want_g, want_b)}
        report["controls"][split] = {name: strict_scores(x, g, b, judge) for name, (x, g, b) in ctl.items()}
        report["controls"][split]["chance_group"] = float(np.bincount(want_g).max() / len(want_g))
    encoder = TextEncoder()
    nfe = sorted({int(s) for s in args.nfe.split(",")})
    steps = sorted({s for r in runs.values() for s in r})
    for step in steps:
        for s in nfe if step == steps[-1] else nfe[:1]:
            for split, ps in prompts.items():
                if not ps:
                    continue
                want_g = np.repeat([group_of[c] for c in ps], args.per_prompt)
                want_b = [base(c) for c in ps for _ in range(args.per_prompt)]
                rows = []
                for path, by_step in runs.items():
                    t0 = time.perf_counter()
                    imgs = sample(by_step[step], encoder, ps, args.per_prompt, s, args.guidance, args.seed)
                    row = {"run": path, "step": step, "split": split, "nfe": s, "guidance": args.guidance,
                           "strict": strict_scores(imgs, want_g, want_b, judge),
                           "seconds": round(time.perf_counter() - t0, 1)}
                    rows.append(row)
                    print(f"{path} step {step} {split} NFE {s}: " + ", ".join(
                        f"{k} {row['strict'][k]['acc']:.3f}" for k in ("present", "group", "emoji")), flush=True)
                    if args.grid and step == steps[-1] and s == nfe[0] and path == next(iter(runs)):
                        save_grid(imgs, data, index, ps, args.per_prompt, f"{args.grid}_{split}.png")
                report["rows"] += rows
                report["pooled"].append({"step": step, "split": split, "nfe": s, **pooled(rows)})
    report["groups"] = list(GROUPS)
    return report


def save_grid(imgs: np.ndarray, data, index: dict, ps: list[str], per: int, path: str) -> None:
    """One row per prompt (the first 8): its real emoji, then its samples."""
    from ilct.io.grid import make_grid, save_png

    shown = ps[:8]
    rows = [np.concatenate([data.images[index[c]][None], imgs[k * per : (k + 1) * per]]) for k, c in enumerate(shown)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_png(make_grid(np.concatenate(rows), cols=per + 1), path, scale=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="a text-conditional emoji run (repeat: one per seed)")
    p.add_argument("--steps", default="", help="checkpoint steps to score (default: the latest checkpoint)")
    p.add_argument("--nfe", default="1,2")
    p.add_argument("--guidance", type=float, default=1.0, help="w (a MeanFlow run with guidance trained in: 1)")
    p.add_argument("--per-group", type=int, default=8, help="seen prompts per Unicode group")
    p.add_argument("--heldout", type=int, default=48, help="held-out prompts")
    p.add_argument("--per-prompt", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--emoji-test", default="/usr/share/unicode/emoji/emoji-test.txt")
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "ilct"))
    p.add_argument("--classifier-steps", type=int, default=0, help="tests: a classifier of this many steps (0: the real one)")
    p.add_argument("--grid", default="", help="path prefix: <prefix>_seen.png and <prefix>_heldout.png (first run)")
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        report = run_all(args)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report["wall_seconds"] = round(time.time() - t0, 1)
    common.write_json(Path(args.out), report)
    print(f"done in {report['wall_seconds']:.0f} s -> {args.out}")
    return 0


def run_all(args) -> dict:
    from ilct.errors import IlctError
    from ilct.metrics.emoji_verdicts import K, EmojiSet, Judge, load_emoji_classifier

    if min(args.per_group, args.per_prompt) < 1 or args.heldout < 0:
        raise BadInput("--per-group and --per-prompt must be at least 1, --heldout at least 0")
    try:
        steps = [int(s) for s in args.steps.split(",")] if args.steps else None
        nfe = [int(s) for s in args.nfe.split(",")]
    except ValueError:
        raise BadInput(f"--steps and --nfe take comma-separated integers, got {args.steps!r} and {args.nfe!r}") from None
    if min(nfe) < 1:
        raise BadInput("--nfe must be at least 1")
    runs = open_runs(args.run, steps)
    cfg = next(iter(runs[args.run[0]].values())).cfg
    try:
        data = EmojiSet.load(cfg.data.root or None or "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
                             args.emoji_test, cfg.data.resolution)
        opts = {"steps": args.classifier_steps} if args.classifier_steps else {}
        scorer = load_emoji_classifier(Path(args.cache_dir), data, progress=not args.no_progress, **opts)
    except IlctError as e:
        raise BadInput(str(e)) from None
    judge = Judge.of(data, scorer)
    report = {"command": "python " + " ".join(sys.argv), "machine": common.machine(),
              "date": datetime.date.today().isoformat(), "runs": {p: sorted(r) for p, r in runs.items()},
              "classifier": scorer.meta, "presence_k": K, "per_prompt": args.per_prompt, "seed": args.seed}
    report.update(evaluate(args, runs, data, judge))
    return report


if __name__ == "__main__":
    sys.exit(main())
