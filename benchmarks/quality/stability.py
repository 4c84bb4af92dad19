"""Issue #16, the late-curriculum collapse: does more training make the model worse, and which switch causes it?

Trained 4x longer than the demo, the full method (fmnist-ilct) got worse at one step while the iCT baseline
(fmnist-ict) kept improving; a branch of the fmnist-ilct run at step 4000 with only method.adaptive_c off did
not collapse (the issue's report; docs/stability.md). This study measures that on this code, one switch at a
time from the same checkpoint (`ilct train --branch-from`, ilct.training.branch):

    (a) fmnist-ict and fmnist-ilct trained for --steps (default 8000 = 4x the demo's 2000), a checkpoint
        every --every steps (default 1000), all kept, on the demo's autoencoder;
    (b) every checkpoint evaluated with `ilct eval --split test --steps 1,2 --n N` (FID and recall in the
        Fashion-MNIST classifier features): FID and recall against steps for both presets;
    (c) branches of the fmnist-ilct run at --branch-step (default 4000) to --steps, one change each
        (BRANCHES below), evaluated the same way;
    (d) per checkpoint, the curriculum's N and the run's c(N) (and the adaptive c(N) of METHOD.md section 4,
        technique 4) next to the measured scale of the temporal-difference residuals at that N
        (`ilct analyze --run R --checkpoint C --levels N`: the quartiles of sqrt(r), r the per-sample mean
        squared residual of the EMA model, the quantity the metric compares with c).

    python benchmarks/quality/stability.py --autoencoder runs/demo/autoencoder
    python benchmarks/quality/stability.py --autoencoder runs/demo/autoencoder --dry-run   # commands + CPU estimate

Results: docs/results/stability.json, written after every round of evaluations (so a stopped study keeps
what it measured; run again, it resumes the trainings and skips what is evaluated), and
docs/figures/stability_fid_vs_step.png (skipped with a note when matplotlib is missing). `--dry-run` prints
the commands and the CPU-time estimate; `--tiny` is a seconds-long run for the tests (DiT-T/4, batch 8,
4 steps, checkpoints every 2, the branch at 2, --n 10).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from ilct.latents.directory import is_complete

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402

# The base runs: (preset, its changes). "ilct" is the paper's schedule (c_floor 0, whatever the preset says);
# "ilct-floor" the adaptive c never below the fixed c (consistency.c_floor=1): a candidate fix that failed,
# measured in docs/stability.md.
# The study's setting: the fmnist presets as they were when it ran (on 2026-11-30 they moved to beta2 = 0.99, and
# from DiT-T/2 to the ADM-T UNet: the demo sweep's choices), first in every base run's changes, so the study
# repeats as measured.
STUDY_SETS = ["model.arch=DiT-T/2", "consistency.s1=160", "train.beta2=0.999"]
BASES: dict[str, tuple[str, list[str]]] = {
    "ict": ("fmnist-ict", []),
    "ilct": ("fmnist-ilct", ["consistency.c_floor=0"]),
    "ilct-floor": ("fmnist-ilct", ["consistency.c_floor=1"]),
    "ilct-beta2": ("fmnist-ilct", ["consistency.c_floor=0", "train.beta2=0.99"]),  # the beta2-0.99 branch, from step 0
    "ilct-beta2-s1": ("fmnist-ilct", ["consistency.c_floor=0", "train.beta2=0.99", "train.seed=1"]),  # its 2nd seed
    "ict-beta2": ("fmnist-ict", ["train.beta2=0.99"]),  # the baseline with the same optimizer change
    "ict-beta2-s1": ("fmnist-ict", ["train.beta2=0.99", "train.seed=1"]),  # its second seed
    "ict-s1": ("fmnist-ict", ["train.seed=1"]),  # iCT's own seed spread at beta2 0.999
}
BRANCH_SOURCE = "ilct"

# One switch each, from the fmnist-ilct checkpoint at --branch-step (values against fmnist-ilct's: lr 1e-3,
# EMA 0.995, lambda_diff 5, s1 160, metric cauchy; tests/test_benchmarks.py pins them to the preset).
BRANCHES: dict[str, tuple[str, str]] = {
    "fixed-c": ("method.adaptive_c=false",
                "c(N) back to the fixed 0.00054 sqrt(D) of iCT: the issue's branch; is the shrinking c the cause?"),
    "lr-half": ("train.lr=0.0005",
                "half the step size: is the collapse an optimization instability that smaller steps avoid?"),
    "ema-0.999": ("train.ema_decay=0.999",
                  "an EMA over ~1000 steps instead of ~200: do the sampled weights collapse, or only the student?"),
    "lambda-diff-half": ("method.lambda_diff=2.5",
                         "half the diffusion-loss weight: does the early-timestep term take over as the consistency "
                         "term shrinks with c?"),
    "s1-double": ("consistency.s1=320",
                  "one more, finer stage (N up to 321, c smaller still; N jumps from 41 to 81 at step 4000 of 8000): "
                  "if the late stages cause the collapse, it comes sooner and deeper"),
    "s1-half": ("consistency.s1=80",
                "the last stage left out (N stops at 81; N at step 4000 is 41 as in the source): does the collapse "
                "need the finest stage?"),
    "beta2-0.99": ("train.beta2=0.99",
                   "Adam's second moment averaged over ~100 steps instead of ~1000: at a stage change the gradient "
                   "grows 4-6x (level_gradients.py); does the lagging normalization make the updates too large?"),
    "pseudo-huber": ("method.metric=pseudo_huber",
                     "the iCT metric with the adaptive c: is it the Cauchy metric's log at r >> c^2 (gradients "
                     "falling as 1/r) that fails with a small c?"),
}

TINY_SETS = ["model.arch=DiT-T/4", "train.batch_size=8", "train.device=cpu"]
BATCH = 64  # the presets' batch, for the estimate


def run_dir(args, name: str) -> Path:
    """base runs: ict, ilct; branches: ilct@<branch step>+<branch name>."""
    return Path(args.work) / "runs" / name


def branch_run(args, branch: str) -> str:
    return f"{BRANCH_SOURCE}@{args.branch_step}+{branch}"


def finished(args, run: Path) -> bool:
    return (run / "checkpoints" / f"step_{args.steps:09d}" / "state.json").is_file()


def base_cmd(args, ilct: list[str], name: str) -> list[str]:
    out = run_dir(args, name)
    if (out / "config.yaml").exists():  # a study run again: go on where it stopped
        return ilct + ["train", "--out", str(out), "--resume", "--no-progress"]
    sets = [f"data.latents={Path(args.work) / 'latents'}", f"train.total_steps={args.steps}",
            f"train.ckpt_every={args.every}", f"train.keep_checkpoints={args.steps // args.every + 1}",
            "train.sample_every=0", f"train.log_every={max(1, min(50, args.every // 4))}"]
    preset, changes = BASES[name]
    cmd = ilct + ["train", "--config", preset, "--out", str(out), "--autoencoder", args.autoencoder, "--no-progress"]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    return cmd + common.set_flags(sets + STUDY_SETS + changes + (TINY_SETS if args.tiny else []))


def branch_cmd(args, ilct: list[str], branch: str) -> list[str]:
    out = run_dir(args, branch_run(args, branch))
    if (out / "config.yaml").exists():
        return ilct + ["train", "--out", str(out), "--resume", "--no-progress"]
    source = run_dir(args, BRANCH_SOURCE) / "checkpoints" / f"step_{args.branch_step:09d}"
    return ilct + ["train", "--branch-from", str(source), "--out", str(out), "--set", BRANCHES[branch][0], "--no-progress"]


def checkpoints(run: Path, after: int = 0) -> list[tuple[int, Path]]:
    """(step, folder) of the run's checkpoints past step `after` (a branch's own first checkpoint is its
    source's, evaluated there)."""
    out = []
    for p in sorted((run / "checkpoints").glob("step_*")):
        if p.is_dir() and p.name[5:].isdigit() and int(p.name[5:]) > after:
            out.append((int(p.name[5:]), p))
    return out


def stage_at(run: Path, step: int) -> tuple[int, float, float]:
    """(N, the run's c, the adaptive schedule's c(N)) of the last update before checkpoint `step`, from the run's own
    config.yaml (the curriculum of ilct.objectives.consistency.schedule)."""
    from ilct.config import config_from_yaml_file, latent_dim
    from ilct.objectives.consistency.schedule import curriculum, scaling_c

    cfg = config_from_yaml_file(run / "config.yaml")
    c, D = cfg.consistency, latent_dim(cfg)
    for s in curriculum(cfg.train.total_steps, c.s0, c.s1, D, cfg.method.adaptive_c, c.c_scale, c.c_floor):
        if s.start_step <= step - 1 < s.end_step:  # (the adaptive schedule keeps the fixed c in its first stage)
            return s.N, s.c, scaling_c(s.N, D, c.s0, True, c.c_scale)
    raise ValueError(f"step {step} lies outside {run}'s curriculum")


def eval_cmd(args, ilct: list[str], run: Path, ckpt: Path, out_json: Path) -> list[str]:
    cmd = ilct + ["eval", "--run", str(run), "--checkpoint", str(ckpt), "--split", "test", "--steps", "1,2",
                  "--n", str(args.n), "--seed", "0", "--json", str(out_json), "--no-progress"]
    return cmd + common.fid_flags(args)


def analyze_cmd(args, ilct: list[str], run: Path, ckpt: Path, N: int, out_dir: Path) -> list[str]:
    return ilct + ["analyze", "--run", str(run), "--checkpoint", str(ckpt), "--latents", str(Path(args.work) / "latents"),
                   "--levels", str(N), "--n", str(args.residual_n), "--no-pixels", "--seed", "0", "--out", str(out_dir),
                   "--name", ckpt.name] + (["--device", "cpu"] if args.tiny else [])


def runs(args) -> list[tuple[str, str, str | None]]:
    """(run folder name, preset, branch name or None), bases first."""
    return ([(name, BASES[name][0], None) for name in args.bases]
            + [(branch_run(args, b), BASES[BRANCH_SOURCE][0], b) for b in args.branches])


def estimate(args) -> str:
    """CPU time from the step counts: training at --seconds-per-step (DiT-T/2, batch 64, 2 cores: 0.2-0.3 s);
    evaluation and residuals roughly, from the same rate (a guess, not a measurement)."""
    base, branch = len(args.bases) * args.steps, len(args.branches) * (args.steps - args.branch_step)
    n_ckpt = len(args.bases) * (args.steps // args.every) + len(args.branches) * ((args.steps - args.branch_step) // args.every)
    fwd = args.seconds_per_step / (BATCH * 4)  # a step is about four forward passes per sample (teacher, student, backward)
    per_eval = 15 + args.n * 3 * fwd + args.n * 2 * 0.002  # start-up, 1 + 2 NFE, decoding and features of two sample sets
    per_residual = 10 + args.residual_n * 2 * fwd
    train_s = (base + branch) * args.seconds_per_step
    rest = n_ckpt * (per_eval + per_residual)
    lo, hi = 0.2 / args.seconds_per_step, 0.3 / args.seconds_per_step
    return (f"estimate: {base + branch} training steps ({base} base + {branch} in {len(args.branches)} branches) x "
            f"{args.seconds_per_step:g} s = {train_s / 3600:.1f} h (at 0.2-0.3 s/step: {train_s * lo / 3600:.1f}-"
            f"{train_s * hi / 3600:.1f} h); {n_ckpt} checkpoints evaluated (n {args.n}) and analyzed: about "
            f"{rest / 3600:.1f} h (rough); total about {(train_s + rest) / 3600:.1f} CPU hours, one job at a time "
            "on 2 cores")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", required=True, help="the built-in autoencoder directory (the demo's: runs/demo/autoencoder)")
    p.add_argument("--data-dir", default="", help="Fashion-MNIST IDX files (default: the preset's data.root)")
    p.add_argument("--steps", type=int, help="training steps of every run (default 8000, 4x the demo)")
    p.add_argument("--every", type=int, help="checkpoint (and evaluation) interval (default 1000)")
    p.add_argument("--branch-step", type=int, help="the fmnist-ilct checkpoint the branches start from (default 4000)")
    p.add_argument("--bases", default=",".join(BASES), help=f"the base runs, comma-separated, from: {', '.join(BASES)}")
    p.add_argument("--branches", default=",".join(BRANCHES), help=f"comma-separated, from: {', '.join(BRANCHES)}")
    p.add_argument("--n", type=int, default=5000, help="samples per FID")
    p.add_argument("--residual-n", type=int, default=512, help="samples for the TD residuals per checkpoint")
    p.add_argument("--parallel", type=int, default=1, help="jobs at once (2 cores: 1)")
    p.add_argument("--features", default="fmnist", choices=["fmnist", "inception"],
                   help="FID features (the tests: inception with a stand-in detector)")
    p.add_argument("--inception-weights", default="")
    p.add_argument("--cache-dir", default="", help="eval's classifier and reference-feature cache (default $ILCT_CACHE)")
    p.add_argument("--work", default="runs/stability", help="latents, runs, evaluations, logs")
    p.add_argument("--out", default="docs/results/stability.json")
    p.add_argument("--figure", default="docs/figures/stability_fid_vs_step.png")
    p.add_argument("--seconds-per-step", type=float, default=0.25, help="for the estimate: s per training step")
    p.add_argument("--tiny", action="store_true", help="4 steps, checkpoints every 2, branch at 2, DiT-T/4, batch 8, CPU, --n 10")
    p.add_argument("--dry-run", action="store_true", help="print the commands and the CPU-time estimate only")
    args = p.parse_args(argv)
    tiny = {"steps": 4, "every": 2, "branch_step": 2}
    for key, default in (("steps", 8000), ("every", 1000), ("branch_step", 4000)):
        if getattr(args, key) is None:
            setattr(args, key, tiny[key] if args.tiny else default)
    if args.tiny:
        args.n, args.residual_n = min(args.n, 10), min(args.residual_n, 16)
    args.branches = [b.strip() for b in args.branches.split(",") if b.strip()]
    bad = [b for b in args.branches if b not in BRANCHES]
    if bad:
        p.error(f"unknown branch {bad[0]!r}; branches: {', '.join(BRANCHES)}")
    args.bases = [b.strip() for b in args.bases.split(",") if b.strip()]
    bad = [b for b in args.bases if b not in BASES]
    if bad or not args.bases:
        p.error(f"unknown base run {bad[0]!r}; bases: {', '.join(BASES)}" if bad else "--bases is empty")
    if args.branches and BRANCH_SOURCE not in args.bases:
        p.error(f"the branches start from the {BRANCH_SOURCE!r} base run: add it to --bases")
    if not (0 < args.every <= args.steps and args.steps % args.every == 0):
        p.error("--every must divide --steps")
    if not (0 < args.branch_step < args.steps and args.branch_step % args.every == 0):
        p.error("--branch-step must be a checkpoint (a multiple of --every) before --steps")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0, work, ilct = time.time(), Path(args.work), [sys.executable, "-m", "ilct"]
    logs = work / "logs"
    data = f"fashion_mnist:{args.data_dir}" if args.data_dir else "fashion_mnist"
    encode = ilct + ["encode", "--data", data, "--autoencoder", f"builtin:{args.autoencoder}", "--out", str(work / "latents")]
    encode += ["--device", "cpu"] if args.tiny else []
    if args.dry_run:
        print(" ".join(encode))
    elif not is_complete(work / "latents"):
        subprocess.run(encode + ["--no-progress"], check=True)

    # (a) the base runs, then (c) the branches of the fmnist-ilct run (their source is in the first wave)
    bases = [(name, base_cmd(args, ilct, name), logs / f"{name}.train.log") for name in args.bases
             if not finished(args, run_dir(args, name))]
    branches = [(b, branch_cmd(args, ilct, b), logs / f"{branch_run(args, b)}.train.log") for b in args.branches
                if not finished(args, run_dir(args, branch_run(args, b)))]
    timing = work / "train_seconds.json"  # kept across runs of the study (a resumed training adds its seconds)
    seconds = json.loads(timing.read_text()) if timing.is_file() else {}
    for wave in (bases, branches):
        for key, s in common.pool(wave, args.parallel, args.dry_run).items():
            seconds[key] = round(seconds.get(key, 0.0) + s, 1)
        if not args.dry_run:
            timing.write_text(json.dumps(seconds, indent=2) + "\n")
    if args.dry_run:
        print(f"then per checkpoint (every {args.every} steps; a branch's from {args.branch_step + args.every} on): "
              "ilct eval --run R --checkpoint C --split test --steps 1,2 ... and ilct analyze --run R --checkpoint C "
              "--levels N(C) ...")
        print(estimate(args))
        return

    # (b, d) every checkpoint: FID/recall on the test split, and the TD residuals at its stage's N
    todo = []
    for name, _, branch in runs(args):
        run = run_dir(args, name)
        for step, ck in checkpoints(run, after=args.branch_step if branch else 0):
            N = stage_at(run, step)[0]
            ev, an = work / "eval" / name / f"{ck.name}.json", work / "analyze" / name
            if not ev.is_file():
                todo.append((f"eval {name}/{ck.name}", eval_cmd(args, ilct, run, ck, ev), logs / f"{name}_{ck.name}.eval.log"))
            if not (an / f"{ck.name}.json").is_file():
                todo.append((f"analyze {name}/{ck.name}", analyze_cmd(args, ilct, run, ck, N, an),
                             logs / f"{name}_{ck.name}.analyze.log"))
    first = [i for i, job in enumerate(todo) if job[0].startswith("eval")][:1]
    if first:  # the first evaluation alone: it computes the cached reference features the others read
        common.pool([todo.pop(first[0])], 1, False)
        write_report(args, seconds, t0)
    for i in range(0, len(todo), max(args.parallel, 1)):
        common.pool(todo[i:i + args.parallel], args.parallel, False)
        write_report(args, seconds, t0)
    write_report(args, seconds, t0)
    plot(json.loads(Path(args.out).read_text()), Path(args.figure))


def curve_point(args, name: str, preset: str, branch: str | None, step: int, ckpt: Path) -> dict | None:
    """One checkpoint's record, or None while its evaluation is missing."""
    work = Path(args.work)
    ev = work / "eval" / name / f"{ckpt.name}.json"
    if not ev.is_file():
        return None
    m = json.loads(ev.read_text())
    N, c, c_adaptive = stage_at(run_dir(args, name), step)
    residual = None
    an = work / "analyze" / name / f"{ckpt.name}.json"
    if an.is_file():
        td = json.loads(an.read_text())["td"][0]
        rms = td["rms_per_sample"]
        residual = {"N": td["N"], "samples": td["samples"], "rms_q1": rms["q1"], "rms_median": rms["median"],
                    "rms_q3": rms["q3"], "rms_median_over_c": rms["median"] / c}
    return {"run": name, "preset": preset,
            "branch": None if branch is None else {"from_step": args.branch_step, "change": BRANCHES[branch][0],
                                                   "name": branch},
            "step": step, "N": N, "c": c, "c_adaptive": c_adaptive,
            "fid": {k: m["fid"][k] for k in ("1", "2")}, "recall": {k: m["recall"][k] for k in ("1", "2")},
            "precision": {k: m["precision"][k] for k in ("1", "2")}, "n": m["n"], "features": m["features"],
            "residual_scale": residual}


def write_report(args, seconds: dict, t0: float) -> None:
    """docs/results/stability.json from what is evaluated so far (written atomically)."""
    curves = []
    for name, preset, branch in runs(args):
        run = run_dir(args, name)
        for step, ck in checkpoints(run, after=args.branch_step if branch else 0):
            point = curve_point(args, name, preset, branch, step, ck)
            if point:
                curves.append(point)
    report = {"command": "python " + " ".join(sys.argv),
              "machine": f"{common.machine()}; --steps {args.steps}, checkpoints every {args.every}, "
                         f"branches at {args.branch_step}, --n {args.n} (test split)",
              "branches": {b: {"change": BRANCHES[b][0], "tests": BRANCHES[b][1]} for b in args.branches},
              "train_seconds": seconds, "wall_seconds": round(time.time() - t0, 1), "curves": curves}
    out = Path(args.out)
    common.write_json(out, report)
    print(f"{len(curves)} checkpoints evaluated; written to {out}", flush=True)


def plot(report: dict, path: Path) -> None:
    """FID (1 step) and recall against steps per run; the TD residual scale against the run's c."""
    try:
        plt = common.pyplot()
    except ImportError:
        print("note: matplotlib is missing; no figure (the numbers are in the JSON)")
        return
    curves = report["curves"]
    names = list(dict.fromkeys(p["run"] for p in curves))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for name in names:
        pts = [p for p in curves if p["run"] == name]
        style = "-" if pts[0]["branch"] is None else "--"
        x = [p["step"] for p in pts]
        axes[0].plot(x, [p["fid"]["1"] for p in pts], style, marker="o", ms=3, label=name)
        axes[1].plot(x, [p["recall"]["1"] for p in pts], style, marker="o", ms=3, label=name)
        res = [p for p in pts if p["residual_scale"]]
        if res:
            line, = axes[2].plot([p["step"] for p in res], [p["residual_scale"]["rms_median"] for p in res], style,
                                 marker="o", ms=3, label=f"{name}: median sqrt(r)")
            axes[2].plot([p["step"] for p in res], [p["c"] for p in res], ":", color=line.get_color())
    axes[0].set_ylabel(f"FID, 1 step ({curves[0]['features'][:40] if curves else ''})")
    axes[1].set_ylabel("recall, 1 step")
    axes[2].set_ylabel("TD residual sqrt(r) (solid/dashed), the run's c (dotted)")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("training step")
    axes[0].legend(fontsize=7)
    fig.suptitle(report["command"][-120:], fontsize=7)
    fig.tight_layout()
    common.save_figure(fig, path, 120, bbox_inches="tight")
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
