"""Issue #16, item 3: the demo's settings, measured at the demo's fixed CPU budget and chosen on a validation split.

Every configuration is fmnist-ilct with one change (CONFIGS below: model size and patch, batch, learning rate
and warm-up, EMA, Adam's beta2, the curriculum, the c floor, the diffusion-loss weight, the autoencoder's own
budget). All of them train on Fashion-MNIST split `fit` (the training file without its last 5,000 images) and
are scored against split `val` (those 5,000, never trained on), so the choice never looks at the test split.
(The autoencoders, the demo's and the ae-2000 one, are trained on the whole training file, val included: they
are fixed parts of every configuration, and the generator never sees val.)

The budget is equal CPU time, not equal steps: --budget-steps steps of the base configuration (default 2,000,
the demo's). A probe of --probe steps per configuration whose step costs more or less (model, patch, batch),
one at a time on an otherwise idle machine, measures its seconds per step; it then trains for budget_steps x
base's s/step / its own s/step steps. A configuration that changes only what a step's work does not depend on
(SAME_COST_KEYS: learning rate, warm-up, EMA, beta2, curriculum, c floor, loss weight) trains base's steps,
as its own probe would only add noise to its budget; one that differs from another configuration only in
those takes that one's probe (cost_twin). A configuration
that trains its own autoencoder for more steps than the demo's 1,000 pays for them in DiT steps (the
autoencoder's seconds per step from its own training, against the base's probe).

    python benchmarks/quality/demo_sweep.py --autoencoder runs/demo/autoencoder               # everything
    python benchmarks/quality/demo_sweep.py --autoencoder runs/demo/autoencoder --dry-run     # the commands

Per configuration: FID and recall at 1 and 2 NFE of --n samples against `val`, in the Fashion-MNIST classifier
features. The winner (lowest 1-NFE val FID) and the base are then scored on the test split, and the winner's
2-step tau is swept on val (TAUS). Results: --out (default docs/results/demo_sweep.json), written after every
evaluation, so a stopped sweep keeps what it measured and, run again, resumes. `--tiny` is a seconds-long run
for the tests (DiT-T/4, batch 8, a 4-step budget, --n 10).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ilct.latents.directory import is_complete

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402
from benchmarks.quality.objectives import seconds_per_step  # noqa: E402  (a probe's s/step from its log.jsonl)

BASE_PRESET = "fmnist-ilct"
DEMO_AE_STEPS = 1000  # the autoencoder of `make demo` (ilct demo --ae-steps)
TAUS = "0.2,0.5,1.0,1.382,2.0"  # the 2-step intermediate sigmas swept for the winner

# name: (changes to fmnist-ilct, autoencoder steps, what it tests). Values against the preset's: DiT-T/2,
# batch 64, lr 1e-3 without warm-up, EMA 0.995, beta2 0.999, s0 10 / s1 160, c_floor 0, lambda_diff 5.
CONFIGS: dict[str, tuple[list[str], int, str]] = {
    "base": ([], DEMO_AE_STEPS, "fmnist-ilct as it is"),
    "dit-t4": (["model.arch=DiT-T/4"], DEMO_AE_STEPS, "patch 4: 4x fewer tokens, so about 4x the steps"),
    "dit-s2": (["model.arch=DiT-S/2"], DEMO_AE_STEPS, "a 4x wider model, so far fewer steps"),
    "batch-32": (["train.batch_size=32"], DEMO_AE_STEPS, "half the batch, about twice the steps"),
    "batch-128": (["train.batch_size=128"], DEMO_AE_STEPS, "twice the batch, about half the steps"),
    "lr-5e-4": (["train.lr=5.0e-4"], DEMO_AE_STEPS, "half the learning rate"),
    "lr-2e-3": (["train.lr=2.0e-3"], DEMO_AE_STEPS, "twice the learning rate"),
    "warmup-200": (["train.warmup_steps=200"], DEMO_AE_STEPS, "the learning rate ramped up over 200 steps"),
    "ema-0.99": (["train.ema_decay=0.99"], DEMO_AE_STEPS, "a shorter EMA (~100 steps)"),
    "ema-0.999": (["train.ema_decay=0.999"], DEMO_AE_STEPS, "a longer EMA (~1,000 steps)"),
    "beta2-0.99": (["train.beta2=0.99"], DEMO_AE_STEPS, "Adam's second moment over ~100 steps (docs/stability.md)"),
    "s1-80": (["consistency.s1=80"], DEMO_AE_STEPS, "one curriculum stage fewer (N up to 81)"),
    "s1-320": (["consistency.s1=320"], DEMO_AE_STEPS, "one curriculum stage more (N up to 321)"),
    "s0-20": (["consistency.s0=20"], DEMO_AE_STEPS, "a finer first stage (N from 21)"),
    "c-floor-1": (["consistency.c_floor=1"], DEMO_AE_STEPS, "the adaptive c never below iCT's fixed c"),
    "lambda-diff-2.5": (["method.lambda_diff=2.5"], DEMO_AE_STEPS, "half the diffusion-loss weight"),
    "lambda-diff-10": (["method.lambda_diff=10"], DEMO_AE_STEPS, "twice the diffusion-loss weight"),
    "ae-2000": ([], 2000, "an autoencoder trained twice as long (a lower floor), paid for in DiT steps"),
    # the second round: the one-change winners together (added after the first round's val scores)
    "beta2-0.99+s1-80": (["train.beta2=0.99", "consistency.s1=80"], DEMO_AE_STEPS,
                         "the two best single changes of the first round together"),
    # the third round (2026-11-30, after the second): the pair with one more change each, or a step further
    "beta2-0.95+s1-80": (["train.beta2=0.95", "consistency.s1=80"], DEMO_AE_STEPS,
                         "beta2 a step further (its second moment over ~20 steps)"),
    "beta2-0.99+s1-40": (["train.beta2=0.99", "consistency.s1=40"], DEMO_AE_STEPS,
                         "s1 a step further (3 curriculum stages, N up to 41)"),
    "beta2-0.99+s1-80+lambda-diff-2.5": (["train.beta2=0.99", "consistency.s1=80", "method.lambda_diff=2.5"],
                                         DEMO_AE_STEPS, "the pair with the third-best single change"),
    "beta2-0.99+s1-80+lr-2e-3": (["train.beta2=0.99", "consistency.s1=80", "train.lr=2.0e-3"], DEMO_AE_STEPS,
                                 "the pair at twice the learning rate (which collapsed with beta2 0.999)"),
    "beta2-0.99+s1-80+cosine": (["train.beta2=0.99", "consistency.s1=80", "train.lr_decay=cosine"], DEMO_AE_STEPS,
                                "the pair with the learning rate decayed to 0 on a cosine"),
    # the fourth round (2026-11-30): the backbone. ADM-S scored 941 against DiT-T/2's 1,659 at the same 2,000 steps
    # (docs/results.md); here at the same CPU time (its probe sets its steps), with the pair
    "adm-s+beta2-0.99+s1-80": (["model.arch=ADM-S", "train.beta2=0.99", "consistency.s1=80"], DEMO_AE_STEPS,
                               "the ADM UNet sized like DiT-T/2 (4.6M parameters), in the pair's budget"),
    "adm-t+beta2-0.99+s1-80": (["model.arch=ADM-T", "train.beta2=0.99", "consistency.s1=80"], DEMO_AE_STEPS,
                               "a small ADM UNet (0.8M parameters): cheaper steps, so more of them"),
    # the fifth round: the fourth's winner with one more change (each trains its steps: a step costs the same)
    "adm-t+beta2-0.99+s1-80+lr-2e-3": (["model.arch=ADM-T", "train.beta2=0.99", "consistency.s1=80", "train.lr=2.0e-3"],
                                       DEMO_AE_STEPS, "the small UNet at twice the learning rate"),
    "adm-t+beta2-0.99+s1-160": (["model.arch=ADM-T", "train.beta2=0.99", "consistency.s1=160"], DEMO_AE_STEPS,
                                "the small UNet with one curriculum stage more (N up to 161; its stages are as "
                                "long as the DiT's at s1 80)"),
}
TINY_SETS = ["model.arch=DiT-T/4", "train.batch_size=8", "train.device=cpu"]
# The sweep's base: fmnist-ilct as it was when the sweep began (its winners moved the preset to s1 = 80 and
# beta2 = 0.99, then to the ADM-T UNet, on 2026-11-30), before every configuration's changes, so the sweep
# repeats as measured.
SWEEP_SETS = ["model.arch=DiT-T/2", "consistency.s1=160", "train.beta2=0.999"]
# Keys that cannot change the work of a step (the same network, batch and number of forward passes): a
# configuration that changes only these trains base's steps, since a probe of its own would only add the
# probes' noise (about 10 % between identical configurations on a shared 2-core machine) to its budget.
SAME_COST_KEYS = {"train.lr", "train.warmup_steps", "train.lr_decay", "train.lr_final", "train.ema_decay", "train.beta2", "consistency.s0",
                  "consistency.s1", "consistency.c_floor", "method.lambda_diff"}


def cost_twin(name: str) -> str:
    """The configuration whose probe times this one's step: base when its changes touch only SAME_COST_KEYS
    (ae-2000 too: its autoencoder is paid for apart), else the first configuration in CONFIGS with the same
    other changes (usually itself: adm-t+...+lr-2e-3 is timed by adm-t+...'s probe)."""
    def cost(c: str) -> list[str]:
        return sorted(s for s in CONFIGS[c][0] if s.split("=", 1)[0] not in SAME_COST_KEYS)

    key = cost(name)
    return next(c for c in CONFIGS if cost(c) == key) if key else "base"


def autoencoder_dir(args, ae_steps: int) -> Path:
    return Path(args.autoencoder) if ae_steps == DEMO_AE_STEPS else Path(args.work) / f"autoencoder-{ae_steps}"


def latents_dir(args, ae_steps: int) -> Path:
    return Path(args.work) / f"latents-ae{ae_steps}"


def prepare_commands(args, ilct: list[str]) -> list[tuple[str, list[str], Path]]:
    """The extra autoencoders and the `fit` latents of every autoencoder the chosen configurations use."""
    logs, data = Path(args.work) / "logs", f"fashion_mnist:{args.data_dir}" if args.data_dir else "fashion_mnist"
    jobs = []
    for ae_steps in sorted({CONFIGS[c][1] for c in args.configs}):
        ae = autoencoder_dir(args, ae_steps)
        if ae_steps != DEMO_AE_STEPS and not (ae / "config.json").is_file():
            cmd = ilct + ["autoencoder", "--out", str(ae), "--steps", str(4 if args.tiny else ae_steps), "--no-progress",
                          "--force"] + (["--data-dir", args.data_dir] if args.data_dir else [])
            jobs.append((f"autoencoder {ae_steps}", cmd + (["--batch-size", "8", "--device", "cpu"] if args.tiny else []),
                         logs / f"autoencoder-{ae_steps}.log"))
        lat = latents_dir(args, ae_steps)
        if not is_complete(lat):
            jobs.append((f"encode {ae_steps}", ilct + ["encode", "--data", data, "--split", "fit", "--autoencoder",
                                                        f"builtin:{ae}", "--out", str(lat), "--no-progress"]
                         + (["--device", "cpu"] if args.tiny else []), logs / f"encode-{ae_steps}.log"))
    return jobs


def train_cmd(args, ilct: list[str], name: str, steps: int, root: str) -> list[str]:
    changes, ae_steps, _ = CONFIGS[name]
    out = Path(args.work) / root / name
    sets = [f"data.latents={latents_dir(args, ae_steps)}", "data.split=fit", f"train.total_steps={steps}",
            "train.sample_every=0", f"train.ckpt_every={steps}", f"train.log_every={max(1, min(50, steps // 10))}",
            "train.seed=0"] + SWEEP_SETS + changes + (TINY_SETS if args.tiny else [])
    cmd = ilct + ["train", "--config", BASE_PRESET, "--out", str(out), "--autoencoder", str(autoencoder_dir(args, ae_steps)),
                  "--no-progress"] + (["--data-dir", args.data_dir] if args.data_dir else []) + common.set_flags(sets)
    if (out / "config.yaml").exists():
        cmd.append("--force" if root == "probes" else "--resume")
    return cmd


def budget(args, ilct: list[str]) -> dict[str, dict]:
    """Per configuration: its probe's s/step and its steps in the budget (cached in WORK/budget.json)."""
    work = Path(args.work)
    cache = work / "budget.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    names = ["base"] + [c for c in args.configs if c != "base"]
    twins = list(dict.fromkeys(cost_twin(c) for c in names))
    probes = [(f"probe {c}", train_cmd(args, ilct, c, args.probe, "probes"), work / "logs" / f"probe_{c}.log")
              for c in twins if c not in known]
    common.pool(probes, 1, args.dry_run)  # one at a time: the ratios are the budget
    if args.dry_run:
        print(f"then each configuration trains {args.budget_steps} x base's s/step / its own s/step steps "
              "(base's steps where only the learning rate or its schedule, EMA, beta2, curriculum, c floor or "
              "loss weight changes; another configuration's probe where it differs from it only in those)")
        return {c: {"steps": 0} for c in names}
    rate = {c: known[c]["seconds_per_step"] if c in known else seconds_per_step(work / "probes" / c) for c in twins}
    out = {c: known[c] for c in names if c in known}  # a planned configuration keeps its steps
    for c in [c for c in names if c not in known]:
        ae_steps, twin = CONFIGS[c][1], cost_twin(c)
        ae_seconds = 0.0
        if ae_steps != DEMO_AE_STEPS:  # the extra autoencoder steps, at that autoencoder's own pace
            meta = json.loads((autoencoder_dir(args, ae_steps) / "config.json").read_text())["metrics"]
            ae_seconds = meta["train_seconds"] / meta["train_steps"] * (ae_steps - DEMO_AE_STEPS)
        seconds = args.budget_steps * rate["base"] - ae_seconds
        how = "probe" if twin == c else f"{twin} (same cost per step)"
        out[c] = {"seconds_per_step": rate[twin], "rate_from": how, "extra_autoencoder_seconds": round(ae_seconds, 1),
                  "steps": max(1, int(seconds / rate[twin] + 1e-6))}  # + 1e-6: base gets exactly --budget-steps
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({**known, **out}, indent=2) + "\n")
    return {c: out[c] for c in names}


def eval_cmd(args, ilct: list[str], name: str, split: str, out_json: Path, taus: str = "") -> list[str]:
    cmd = ilct + ["eval", "--run", str(Path(args.work) / "runs" / name), "--split", split, "--steps", "2" if taus else "1,2",
                  "--n", str(args.n), "--seed", "0", "--json", str(out_json), "--no-progress"]
    return cmd + (["--tau", taus] if taus else []) + common.fid_flags(args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", required=True, help="the demo's built-in autoencoder directory (1,000 steps)")
    p.add_argument("--data-dir", default="", help="Fashion-MNIST IDX files (default: the preset's data.root)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from: {', '.join(CONFIGS)}")
    p.add_argument("--budget-steps", type=int, default=2000, help="the budget, in steps of the base configuration")
    p.add_argument("--probe", type=int, default=100, help="steps of each configuration's timing probe")
    p.add_argument("--n", type=int, default=2000, help="samples per FID")
    p.add_argument("--parallel", type=int, default=1, help="training and evaluation jobs at once (after the probes)")
    p.add_argument("--features", default="fmnist", choices=["fmnist", "inception"],
                   help="FID features: the Fashion-MNIST classifier's (the protocol of docs/), or Inception (the tests)")
    p.add_argument("--inception-weights", default="")
    p.add_argument("--cache-dir", default="", help="eval's classifier and reference-feature cache (default $ILCT_CACHE)")
    p.add_argument("--work", default="runs/demo_sweep", help="autoencoders, latents, probes, runs, evaluations, logs")
    p.add_argument("--out", default="docs/results/demo_sweep.json")
    p.add_argument("--tiny", action="store_true", help="a 4-step budget, probes of 4 steps, DiT-T/4, batch 8, --n 10")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in args.configs if c not in CONFIGS]
    if bad or not args.configs:
        p.error(f"unknown configuration {bad[0]!r}; configurations: {', '.join(CONFIGS)}" if bad else "--configs is empty")
    if args.budget_steps < 1 or args.probe < 2 or args.n < 10:
        p.error("--budget-steps must be >= 1, --probe >= 2 and --n >= 10")
    if args.tiny:
        args.budget_steps, args.probe, args.n = 4, 4, 10
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0, work, ilct = time.time(), Path(args.work), [sys.executable, "-m", "ilct"]
    for job in prepare_commands(args, ilct):  # in order: an autoencoder before its latents
        common.pool([job], 1, args.dry_run)
    plan = budget(args, ilct)
    names = list(plan)
    runs = [(f"train {c}", train_cmd(args, ilct, c, plan[c]["steps"], "runs"), work / "logs" / f"train_{c}.log")
            for c in names if args.dry_run or not trained(work / "runs" / c, plan[c]["steps"])]
    seconds = common.pool(runs, args.parallel, args.dry_run)
    if args.dry_run:
        print(f"then per configuration: {' '.join(eval_cmd(args, ilct, '<name>', 'val', Path('<json>')))}; for the "
              f"winner and base the same on --split test, and the winner's 2-step --tau {TAUS} on val")
        return
    timing = work / "train_seconds.json"
    seconds = {**(json.loads(timing.read_text()) if timing.is_file() else {}), **seconds}
    timing.write_text(json.dumps(seconds, indent=2) + "\n")
    evaluate(args, ilct, [(c, "val", "") for c in names])
    write_report(args, plan, seconds, t0)
    winner = min(names, key=lambda c: score(args, c, "val")["fid"]["1"])
    evaluate(args, ilct, [(c, "test", "") for c in dict.fromkeys(["base", winner])] + [(winner, "val", TAUS)])
    write_report(args, plan, seconds, t0)


def trained(run: Path, steps: int) -> bool:
    return (run / "checkpoints" / f"step_{steps:09d}" / "state.json").is_file()


def result_path(args, name: str, split: str, taus: str = "") -> Path:
    return Path(args.work) / "eval" / f"{name}_{split}{'_tau' if taus else ''}.json"


def score(args, name: str, split: str, taus: str = "") -> dict:
    return json.loads(result_path(args, name, split, taus).read_text())


def evaluate(args, ilct: list[str], todo: list[tuple[str, str, str]]) -> None:
    jobs = [(f"eval {c} {s}{' tau' if t else ''}", eval_cmd(args, ilct, c, s, result_path(args, c, s, t), t),
             Path(args.work) / "logs" / f"eval_{c}_{s}{'_tau' if t else ''}.log")
            for c, s, t in todo if not result_path(args, c, s, t).is_file()]
    if jobs:  # the first alone: it computes the cached reference features the others read
        common.pool(jobs[:1], 1, False)
        common.pool(jobs[1:], args.parallel, False)


def write_report(args, plan: dict, seconds: dict, t0: float) -> None:
    """The sweep so far: per configuration its settings, steps and val scores; the winner's test scores."""
    rows = []
    for c in plan:
        changes, ae_steps, why = CONFIGS[c]
        row = {"name": c, "settings": dict(s.split("=", 1) for s in changes), "autoencoder_steps": ae_steps, "tests": why,
               **plan[c], "train_seconds": seconds.get(f"train {c}")}
        for split in ("val", "test"):
            if result_path(args, c, split).is_file():
                m = score(args, c, split)
                row[f"{split}_fid"], row[f"{split}_recall"] = m["fid"], m["recall"]
        if result_path(args, c, "val", TAUS).is_file():
            row["val_tau_sweep"] = score(args, c, "val", TAUS)["rows"]
        rows.append(row)
    scored = [r for r in rows if "val_fid" in r]
    report = {"command": "python " + " ".join(sys.argv), "machine": common.machine(), "base_preset": BASE_PRESET,
              "train_split": "fit", "select_split": "val", "report_split": "test", "n": args.n,
              "budget": {"base_steps": args.budget_steps, "probe_steps": args.probe,
                         "seconds": round(args.budget_steps * plan["base"]["seconds_per_step"], 1)},
              "winner": min(scored, key=lambda r: r["val_fid"]["1"])["name"] if scored else None,
              "wall_seconds": round(time.time() - t0, 1), "rows": rows}
    out = Path(args.out)
    common.write_json(out, report)
    print(f"{len(scored)} of {len(rows)} configurations scored; written to {out}", flush=True)


if __name__ == "__main__":
    main()
