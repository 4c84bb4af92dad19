"""Text-to-video on moving Fashion-MNIST: does a clip show the asked-for garment moving the asked-for way?

For each guidance weight w (`--guidance`) and network evaluations (`--nfe`), samples `--per-prompt` clips of
every caption of two kinds and scores them (ilct.metrics.clips):

    seen     the 30 (class, direction) pairs of the training split, "a sneaker moving left"
    heldout  the 10 pairs training never shows (moving_fmnist.heldout_pairs: one direction per class)

Per row: the clip classifier's class and motion accuracy against what the caption asked, their chance levels
(the best a generator that ignores the caption can expect: 0.1 for the class, 8/30 and 3/10 for the motion of
the seen and held-out captions), the frame FID in the Fashion-MNIST classifier's features (not Inception FID)
against real frames of the same pairs (seen: the train split, the run's own data; heldout: the heldout split),
and the temporal consistency (the fraction of clips whose frames all get one Fashion-MNIST class). `real`
gives the same numbers for real clips (test garments for seen, train garments for heldout, as many as each
row samples): the classifier's own accuracy, and the frame-FID floor at that sample count.
Every row samples with the same noise: clip j of a setting starts from the seed (seed, j).
Every row and `real` also carry `strict`: the strict scorer of issue 36 (ilct.metrics.clip_verdicts: a garment
must be present, the class judged per frame, motion only with a garment and a shift), with 95 % intervals, per
class and a confusion matrix, and `real` a frozen control under it (`frozen_strict`). `--clips-out FILE.npz`
keeps the fewest-NFE clips at the GIFs' w (at most 320, seen and held-out) with their captions and verdicts.

    python benchmarks/quality/video.py --run runs/video --guidance 1,2,4 --nfe 1,2 --per-prompt 16 \\
        --out docs/results/video.json --figures docs/figures --plot docs/figures/video_accuracy.png

`--train PRESET --train-steps K` first trains the run (`ilct train --config PRESET --out RUN --force`) and
records its time, so one command does it all. Sampling is in-process (ilct.runs.opened.open_run, ilct.generate.generate:
one model load for every caption) unless `--sampler cli` (one `ilct sample --npz` per caption and setting).
`--tiny` is a run of seconds for the tests (2 captions of each kind, 2 clips each, one w, one NFE, a clip
classifier of a few steps).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ilct.metrics.clips import ClipData, MOTIONS, frame_fid, frame_stats, load_clip_classifier, score_clips

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402

SPLITS = ("seen", "heldout")


class Prompt(NamedTuple):
    caption: str
    cls: int
    motion: int  # index into MOTIONS


# --tiny (the tests' seconds): a classifier of a few steps, in its own cache folder, and a small reference
TINY_CLASSIFIER = {"steps": 3, "batch_size": 8, "eval_clips": 16}
TINY_REFERENCE = 32

def prompts(split: str) -> list[Prompt]:
    """seen: every (class, direction) pair of the training split; heldout: the held-out pairs."""
    from ilct.data.moving_fmnist import NAMES, heldout_pairs, phrase

    held = set(heldout_pairs())
    if split == "heldout":
        pairs = sorted(held)
    elif split == "seen":
        pairs = [(c, d) for c in range(len(NAMES)) for d in MOTIONS if (c, d) not in held]
    else:
        raise ValueError(f"split must be seen or heldout, got {split!r}")
    return [Prompt(phrase(c, d), c, MOTIONS.index(d)) for c, d in pairs]


class InProcessSampler:
    """A finished text-conditional moving_fmnist run, opened once; every caption of a setting in one draw."""

    def __init__(self, run_dir: str, device: str = "auto", batch_size: int = 256, text_encoder: str = "",
                 checkpoint: str = ""):
        from ilct.runs.opened import open_run
        from ilct.nets.text import TextEncoder

        self.run = open_run(run_dir, checkpoint or None, device=device)
        cfg = self.run.cfg
        self.data = run_clip_data(cfg, run_dir)
        self.encoder = TextEncoder(text_encoder or None)
        self.batch_size = batch_size
        self.what = f"in-process: {run_dir} at step {self.run.step} ({self.run.checkpoint})"

    def __call__(self, captions: list[str], per_prompt: int, nfe: int, guidance: float, seed: int) -> np.ndarray:
        import torch

        from ilct.generate import generate

        r = self.run
        text = self.encoder.condition(captions, r.cfg.model.text_tokens).repeat_interleave(per_prompt, 0)
        with torch.inference_mode():
            return generate(r.model, r.autoencoder, r.stats, r.cfg, len(captions) * per_prompt, nfe, seed,
                            self.batch_size, progress=False, guidance=guidance, text=text)


class CliSampler:
    """`ilct sample --prompt CAPTION --npz FILE` per caption (the caption's index added to the seed)."""

    def __init__(self, run_dir: str, device: str = "auto"):
        from ilct.config import config_from_yaml_file

        self.run_dir, self.device = run_dir, device
        self.data = run_clip_data(config_from_yaml_file(Path(run_dir) / "config.yaml"), run_dir)
        self.what = f"ilct sample --npz per caption: {run_dir}"

    def __call__(self, captions: list[str], per_prompt: int, nfe: int, guidance: float, seed: int) -> np.ndarray:
        out = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, caption in enumerate(captions):
                npz, png = Path(tmp) / f"{i}.npz", Path(tmp) / f"{i}.png"
                cmd = [sys.executable, "-m", "ilct", "sample", "--run", self.run_dir, "--prompt", caption,
                       "--steps", str(nfe), "--guidance", f"{guidance:g}", "--n", str(per_prompt),
                       "--seed", str(seed + i), "--npz", str(npz), "--out", str(png), "--device", self.device,
                       "--no-progress"]
                common.call("ilct sample", cmd)
                with np.load(npz, allow_pickle=False) as f:
                    out.append(f["arr_0"])
        return np.concatenate(out)


def run_clip_data(cfg, run_dir: str) -> ClipData:
    d = cfg.data
    if d.dataset != "moving_fmnist":
        raise SystemExit(f"{run_dir}: data.dataset is {d.dataset}; this benchmark scores moving_fmnist runs")
    if cfg.model.text_dim <= 0:
        raise SystemExit(f"{run_dir} is not text-conditional (model.text_dim = 0)")
    return ClipData(d.resolution, d.frames, d.frame_stride)


def real_clips(root: str, data: ClipData, split: str, garments: str, n: int):
    """The first n real clips of the seen or held-out pairs, of the train or test garments."""
    from ilct.data.fashion_mnist import load_fashion_mnist
    from ilct.data.moving_fmnist import MovingFashionMNIST

    base = load_fashion_mnist(root, garments, 28)
    split_name = {"seen": "train" if garments == "train" else "test", "heldout": "heldout"}[split]
    clips = MovingFashionMNIST(base.images[..., 0], base.labels, split_name, data.resolution, data.frames,
                               data.frame_stride, count=n)
    return clips.clips_at(np.arange(n)), clips.labels, clips.motions


def write_gif(clips: np.ndarray, path: Path, cols: int) -> None:
    from ilct.io.animation import grid_frames, save_gif

    save_gif(grid_frames(clips, cols=cols), path, duration=150, scale=3)


def strict(clips: np.ndarray, want_class: np.ndarray, want_motion: np.ndarray, classifier, reference):
    """(the strict scorer's summary, its per-clip verdicts) of clips against what they were asked."""
    from ilct.metrics.clip_verdicts import clip_verdicts, summary

    v = clip_verdicts(clips, want_class, want_motion, classifier, reference)
    return summary(v, want_class), v


def score_real(root: str, data: ClipData, split: str, n: int, ref, classifier, reference, features) -> tuple:
    """Real clips of the other garments, as many as a row: the classifiers' ceiling, the FID floor, and a
    frozen control (each clip's first frame held) under the strict scorer. -> (numbers, clips, labels, motions)"""
    clips, labels, motions = real_clips(root, data, split, "test" if split == "seen" else "train", n)
    real = score_clips(clips, labels, motions, classifier, features)
    real["frame_fid"] = frame_fid(clips, ref, features)
    real["garments"] = "test" if split == "seen" else "train"
    real["strict"] = strict(clips, labels, motions, classifier, reference)[0]
    frozen = np.repeat(clips[:, :1], clips.shape[1], axis=1)
    real["frozen_strict"] = strict(frozen, labels, motions, classifier, reference)[0]
    return real, clips, labels, motions


def keep_clips(kept: dict, split: str, fake: np.ndarray, ps: list, per_prompt: int, verdicts: dict,
               max_clips: int) -> None:
    """The first clips of every caption (at most max_clips over both splits) with their verdicts, for the npz."""
    k = max(1, min(per_prompt, max_clips // sum(len(prompts(s)) for s in SPLITS)))
    pick = (np.arange(len(ps))[:, None] * per_prompt + np.arange(k)[None, :]).reshape(-1)
    want = [ps[i // per_prompt] for i in pick]
    part = {"clips": fake[pick], "captions": np.array([p.caption for p in want]), "split": np.array([split] * len(pick)),
            "want_class": np.array([p.cls for p in want]), "want_motion": np.array([p.motion for p in want]),
            **{key: verdicts[key][pick] for key in ("garment", "class_ok", "motion_ok")}}
    for key, value in part.items():
        kept[key] = np.concatenate([kept[key], value]) if key in kept else value


def evaluate(sampler, root: str, cache_dir: Path, guidance: list[float], nfe: list[int], per_prompt: int, seed: int,
             reference_n: int, figures: Path | None, gif_guidance: float, gif_prompts: int = 8,
             classifier_options: dict | None = None, max_prompts: int = 0, progress: bool = True,
             reference_clips: int = 2000, kept: dict | None = None, max_kept: int = 320) -> dict:
    """The report's rows (one per split, NFE and w), the real clips' numbers, the classifier's record and the
    GIFs written (one per split and NFE at w = gif_guidance: one clip of each of gif_prompts captions). Each row
    and the real clips carry the strict scorer's numbers (ilct.metrics.clip_verdicts) beside the classifier's;
    `kept` (a dict) receives the fewest-NFE clips at w = gif_guidance with their verdicts."""
    from ilct.metrics.clip_verdicts import Reference
    from ilct.metrics.features import load_fashion_features

    data = sampler.data
    features = load_fashion_features()
    classifier = load_clip_classifier(cache_dir, root, data, progress, **(classifier_options or {}))
    reference = Reference.from_training(classifier, root, data, reference_clips)
    report: dict = {"sampler": sampler.what, "data": data.key(), "per_prompt": per_prompt, "seed": seed,
                    "features": features.name, "fashion_classifier_test_accuracy": features.meta["test_accuracy"],
                    "clip_classifier": {k: classifier.meta.get(k) for k in (
                        "test_accuracy", "heldout_accuracy", "train_seconds", "train_cpu_seconds", "steps", "trained_on",
                        "fingerprint")},
                    "strict_reference": {"clips": reference.clips, "k": reference.k},
                    "real": {}, "rows": [], "figures": []}
    for split in SPLITS:
        ps = prompts(split)[:max_prompts or None]
        want_class = np.repeat([p.cls for p in ps], per_prompt)
        want_motion = np.repeat([p.motion for p in ps], per_prompt)
        n = len(want_class)
        # reference frames: the run's own data for the seen pairs, the held-out split for the others
        ref = frame_stats(real_clips(root, data, split, "train" if split == "seen" else "test", reference_n)[0], features)
        report["real"][split], clips, labels, motions = score_real(root, data, split, n, ref, classifier, reference,
                                                                    features)
        if figures is not None:  # a real clip of each of the first captions, beside the generated GIFs
            shown = [p for p in ps[:gif_prompts] if ((labels == p.cls) & (motions == p.motion)).any()]
            picks = [int(np.flatnonzero((labels == p.cls) & (motions == p.motion))[0]) for p in shown]
            if picks:
                path = figures / f"video_real_{split}.gif"
                write_gif(clips[picks], path, cols=len(picks))
                report["figures"].append({"file": str(path), "split": split, "real": True,
                                          "captions": [p.caption for p in shown]})
        for s in nfe:
            for w in guidance:
                t0 = time.perf_counter()
                fake = sampler([p.caption for p in ps], per_prompt, s, w, seed)
                if fake.shape[0] != n or fake.ndim != 5 or fake.dtype != np.uint8:
                    raise SystemExit(f"the sampler gave {fake.dtype} {fake.shape}, expected uint8 ({n}, T, H, W, C)")
                seconds = time.perf_counter() - t0
                row_strict, verdicts = strict(fake, want_class, want_motion, classifier, reference)
                row = {"split": split, "nfe": s, "guidance": w,
                       **score_clips(fake, want_class, want_motion, classifier, features),
                       "frame_fid": frame_fid(fake, ref, features), "sample_seconds": round(seconds, 1),
                       "strict": row_strict}
                report["rows"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "strict"}), flush=True)
                if kept is not None and s == min(nfe) and w == gif_guidance:
                    keep_clips(kept, split, fake, ps, per_prompt, verdicts, max_kept)
                if figures is not None and w == gif_guidance:
                    picks = np.arange(min(gif_prompts, len(ps))) * per_prompt  # clip 0 of the first captions
                    path = figures / f"video_{split}_{s}step_w{w:g}.gif"
                    write_gif(fake[picks], path, cols=len(picks))
                    report["figures"].append({"file": str(path), "split": split, "nfe": s, "guidance": w,
                                              "captions": [ps[i // per_prompt].caption for i in picks]})
    return report


def train_run(args: argparse.Namespace) -> float:
    """`ilct train` of args.train into args.run; the seconds it took."""
    sets = [f"train.total_steps={args.train_steps}", f"train.device={args.device}", f"train.seed={args.seed}", *args.set]
    cmd = [sys.executable, "-m", "ilct", "train", "--config", args.train, "--out", args.run, "--force", "--no-progress",
           *(["--autoencoder", args.autoencoder] if args.autoencoder else []), *[a for s in sets for a in ("--set", s)]]
    print(shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    common.call("ilct train", cmd)
    return time.perf_counter() - t0


def make_sampler(args: argparse.Namespace):
    """The sampler of --run; a run or checkpoint that cannot be opened is one line and exit 2."""
    from ilct.errors import IlctError

    try:
        if args.sampler == "cli":
            return CliSampler(args.run, args.device)
        return InProcessSampler(args.run, args.device, args.batch_size, args.text_encoder, args.checkpoint)
    except IlctError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> dict:
    from ilct.data.fashion_mnist import DEFAULT_ROOT
    from ilct.latents import default_cache_dir

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a text-conditional moving_fmnist run (trained here with --train)")
    p.add_argument("--train", default="", metavar="PRESET", help="first train --run from this preset or YAML (replaced)")
    p.add_argument("--train-steps", type=int, default=4000)
    p.add_argument("--autoencoder", default="", help="for --train: ilct train --autoencoder")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="for --train (repeatable)")
    p.add_argument("--checkpoint", default="", metavar="DIR", help="score this checkpoint of --run "
                   "(RUN/checkpoints/step_NNNNNNNNN; default: the latest whole one); in-process sampler only")
    p.add_argument("--guidance", default="1,2,4", help="guidance weights w, comma-separated")
    p.add_argument("--nfe", default="1,2", help="network evaluations per clip, comma-separated")
    p.add_argument("--per-prompt", type=int, default=16, help="clips per caption and setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference-n", type=int, default=2000, help="real clips whose frames are each split's FID reference")
    p.add_argument("--sampler", default="inprocess", choices=["inprocess", "cli"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--text-encoder", default="", help="sentence-transformers folder (default: the one the run used)")
    p.add_argument("--data-dir", default=DEFAULT_ROOT, help="the Fashion-MNIST files")
    p.add_argument("--cache-dir", default="", help="classifier cache (default: ilct's cache directory)")
    p.add_argument("--out", default="docs/results/video.json")
    p.add_argument("--figures", default="docs/figures", help="folder of the GIFs ('' = none)")
    p.add_argument("--plot", default="docs/figures/video_accuracy.png", help="PNG of the accuracies against w ('' = none)")
    p.add_argument("--gif-guidance", type=float, default=None, help="w of the GIFs (default: the middle of --guidance)")
    p.add_argument("--reference-clips", type=int, default=2000, help="real train-garment clips of the strict "
                   "scorer's presence test (ilct.metrics.clip_verdicts)")
    p.add_argument("--clips-out", default="", help="npz of the fewest-NFE clips at the GIFs' w with their captions "
                   "and the strict scorer's verdicts (at most 320 clips; e.g. docs/results/video_clips_1nfe.npz)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--tiny", action="store_true", help="seconds, for the tests")
    p.add_argument("--replot", action="store_true", help="only redraw --plot from the results already in --out")
    args = p.parse_args(argv)
    if args.replot:
        return replot(Path(args.out), Path(args.plot))
    if not args.run:
        p.error("--run is required (or --replot)")
    if args.checkpoint and (args.sampler != "inprocess" or args.train):
        p.error("--checkpoint scores a checkpoint of a trained run with the in-process sampler: "
                "not with --train or --sampler cli")
    if args.clips_out and not args.clips_out.endswith(".npz"):
        p.error(f"--clips-out {args.clips_out}: the file name must end in .npz")
    guidance = [float(w) for w in args.guidance.split(",")]
    nfe = [int(s) for s in args.nfe.split(",")]
    classifier_options = {}
    if args.tiny:
        guidance, nfe, args.per_prompt, args.reference_n, args.reference_clips = guidance[:1], nfe[:1], 2, 16, TINY_REFERENCE
        classifier_options = TINY_CLASSIFIER
    t0 = time.perf_counter()
    train_seconds = train_run(args) if args.train else None
    sampler = make_sampler(args)
    gif_w = args.gif_guidance if args.gif_guidance is not None else guidance[len(guidance) // 2]
    report = {"command": "python " + shlex.join(sys.argv if argv is None else ["benchmarks/quality/video.py", *argv]),
              "machine": common.machine(), "date": datetime.date.today().isoformat(), "run": args.run, "train": args.train or None, "train_steps": args.train_steps if args.train else None,
              "train_seconds": None if train_seconds is None else round(train_seconds, 1)}
    kept: dict = {}
    report.update(evaluate(sampler, args.data_dir, Path(args.cache_dir) if args.cache_dir else default_cache_dir(),
                           guidance, nfe, args.per_prompt, args.seed, args.reference_n,
                           Path(args.figures) if args.figures else None, gif_w, classifier_options=classifier_options,
                           max_prompts=2 if args.tiny else 0, progress=not args.no_progress,
                           reference_clips=args.reference_clips, kept=kept))
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if args.tiny:  # two captions of each kind would not be the benchmark: say so in the file
        report["tiny"] = True
    if args.plot:
        plot(report, Path(args.plot))
        report["plot"] = args.plot
    if args.clips_out and kept:
        Path(args.clips_out).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.clips_out, nfe=min(nfe), guidance=gif_w,
                            clip_classifier=report["clip_classifier"]["fingerprint"], **kept)
        report["clips_out"] = {"file": args.clips_out, "clips": len(kept["clips"]), "nfe": min(nfe), "guidance": gif_w}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    summary(report)
    return report


def replot(out: Path, path: Path) -> dict:
    """--replot: the figure of an existing results file, without sampling."""
    try:
        report = json.loads(out.read_text())
        report["rows"], report["real"]  # noqa: B018 (the keys the figure needs)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: --replot: {out} is not a results file of this benchmark ({e})", file=sys.stderr)
        raise SystemExit(2) from None
    plot(report, path)
    print(f"plot written to {path}")
    return report


def plot(report: dict, path: Path) -> None:
    """Class and motion accuracy and temporal consistency against w, one line per split and NFE; chance dotted,
    3x chance dash-dotted, the real clips thick."""
    plt = common.pyplot()

    panels = [("class_acc", "class accuracy", "class asked vs class seen"),
              ("motion_acc", "motion accuracy", "motion asked vs motion seen"),
              ("temporal_consistency", "temporal consistency", "clips whose frames all get one class")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for ax, (key, label, title) in zip(axes, panels):
        for k, split in enumerate(SPLITS):
            rows = [r for r in report["rows"] if r["split"] == split]
            for s in sorted({r["nfe"] for r in rows}):
                r = sorted((x for x in rows if x["nfe"] == s), key=lambda x: x["guidance"])
                ax.plot([x["guidance"] for x in r], [x[key] for x in r], marker="os"[k % 2],
                        ls="-" if s == 1 else "--", color=f"C{k}", label=f"{split}, {s} NFE")
            chance = key.replace("_acc", "_chance") if key.endswith("_acc") else None
            if rows and chance in rows[0]:
                ax.axhline(rows[0][chance], color=f"C{k}", lw=0.8, ls=":")
                ax.axhline(3 * rows[0][chance], color=f"C{k}", lw=0.8, ls="-.")
            real = report["real"].get(split)
            if real:
                ax.axhline(real[key], color=f"C{k}", lw=2, alpha=0.25)
        ax.set_xlabel("guidance w")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.02)
        legend = "dotted: chance, dash-dot: 3x chance, thick: real clips" if key != "temporal_consistency" else "thick: real clips"
        ax.set_title(f"{title} ({legend})", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    common.save_figure(fig, path, 110)


def summary(report: dict) -> None:
    print(f"{'split':8s} {'NFE':>3s} {'w':>4s} {'class':>6s} {'motion':>6s} {'chance':>11s} {'FID':>7s} {'consist':>7s}")
    for r in report["rows"]:
        print(f"{r['split']:8s} {r['nfe']:3d} {r['guidance']:4g} {r['class_acc']:6.3f} {r['motion_acc']:6.3f} "
              f"{r['class_chance']:5.3f}/{r['motion_chance']:5.3f} {r['frame_fid']:7.2f} {r['temporal_consistency']:7.3f}")
    for split, r in report["real"].items():
        print(f"real {split:7s}     {r['class_acc']:6.3f} {r['motion_acc']:6.3f} {'':11s} {r['frame_fid']:7.2f} "
              f"{r['temporal_consistency']:7.3f}")


if __name__ == "__main__":
    main()
