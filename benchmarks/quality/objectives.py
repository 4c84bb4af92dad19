"""Training objectives on equal budgets: consistency training (iCT, iLCT), MeanFlow and EDM on Fashion-MNIST latents.

Rows (every row starts from a preset and changes only the settings named here; no row gets more tuning than
another, and all share the preset family's network, batch, optimizer and EMA, pinned below):

    ict                      fmnist-ict                                   seeds 0, 1
    ilct                     fmnist-ilct                                  seeds 0, 1
    meanflow                 fmnist-meanflow                              seeds 0, 1
    meanflow+cauchy+ot       fmnist-meanflow, meanflow.metric=cauchy, method.ot_coupling=true          seed 0
    meanflow+cauchy+ot+nsln  the same, plus method.nsln=true                                            seed 0
    alphaflow                fmnist-meanflow, meanflow.alpha_curriculum=true                            seed 0
    edm-then-ilct            warm start, seed 0: fmnist-ilct with train.objective=edm for half the budget
                             (run folder `edm-then-ilct.edm_s0`), then fmnist-ilct with
                             train.init_from=<that run> for the other half; total budget equal to the others
    edm-heun                 fmnist-ilct with train.objective=edm for the whole budget (the first phase of
                             edm-then-ilct, continued), sampled with Heun at 18 steps = 35 NFE: the many-step
                             reference; seed 0

Pinned settings. Every training command carries, before the row's own changes, the settings that defined the
fmnist presets on 2026-11-30 (PINNED: ADM-T, s0 = 10, s1 = 160, batch 64, lr 1e-3, beta2 = 0.99, EMA 0.995, ...),
so that a command in docs/objectives.md trains the same model after a preset changes (`--no-pin` trains the
presets as they are). Each row of the results records its preset, the --set values and the resolved values of
the settings that matter (SETTING_KEYS, read back from the run's config.yaml).

Budgets. `--steps N` (default: the demo's, the fmnist-ilct preset's train.total_steps, 3,000): every row trains
N steps (edm-then-ilct: N//2 EDM steps, then N - N//2). `--multiples 1,4` adds rows at 4 N steps (the rows of
`--long-rows`, seeds `--long-seeds`, default seed 0). `--seconds S`: equal wall-clock from probe runs: each training
job first runs `--probe` steps (all jobs `--parallel` at a time, as in the real run), its seconds per step is read
from the probe's log.jsonl (elapsed_s between the first and last logged step, so start-up is left out), and it
then trains total_steps = S / (seconds per step) steps (edm-then-ilct: S/2 seconds for each phase, each by its own
rate).

Equal wall-clock in the same run (`--equal-wall-clock`, with --steps). A MeanFlow step costs more than a
consistency step (a JVP). Each run's seconds per step is read from its log.jsonl between the steps of `--window`
(while every job of the benchmark is running); the MeanFlow rows are then also scored at the checkpoint nearest
to M N x (the consistency rows' seconds per step) / (their own): the steps a MeanFlow run trains in the time the
consistency runs of the same latent space take for M N steps. MeanFlow has no schedule that depends on the run's
length (no curriculum, constant learning rate; alphaflow excepted), so its first k steps are what a k-step run
trains: its runs checkpoint every `--ckpt-grid` steps, and (with `--prefix`, the default) its M = 1 seed-0 row is
the step-N checkpoint of its longer run instead of a run of its own. A consistency run's curriculum is fitted to
its length, so it is never cut.

`--train-deadline S`: S seconds after the start, running trainings get SIGTERM (each saves a checkpoint and exits
0); a row then records the steps reached and `complete: false` (a consistency row: its curriculum was planned for
more steps). `--eval-deadline S`: no evaluation starts after S seconds; its row is listed under `missing`.

Evaluation: `ilct eval --split test` (`--split`) of each row's checkpoint, FID, precision and recall of `--n`
samples in the Fashion-MNIST classifier features (its fingerprint recorded in each row), at 1 and 2 NFE;
edm-heun at Heun 18 steps only, recorded under the key "35" (NFE). `--floor`: each latent space's autoencoder
floor, the same scores for the autoencoder's reconstructions of n random training images (as the runs see
them). Latent spaces as in ablation.py: `builtin` (the built-in KL autoencoder) or `taef2` (Fashion-MNIST rendered
as 64x64 RGB through TAEF2, weights in ../shared/weights/taef2).

    python benchmarks/quality/objectives.py --latents builtin --autoencoder runs/demo/autoencoder --n 5000
    python benchmarks/quality/objectives.py --latents builtin,taef2 --autoencoder runs/ae,../shared/weights/taef2 \\
        --rows ict,ilct,meanflow,meanflow+cauchy+ot --multiples 1,4 --equal-wall-clock --floor --parallel 20
    python benchmarks/quality/objectives.py --latents taef2 --autoencoder ../shared/weights/taef2 --seconds 1800 --parallel 9

Results: --out (default docs/results/objectives.json; rewritten after every evaluation, so a stopped benchmark
leaves what it measured; with `--merge` the rows already there of other latent spaces or other multiples stay, so
the 4x runs of the two best rows are a second invocation `--multiples 4 --long-rows A,B --merge`) and --figure (FID at 1 NFE against training seconds; skipped with a note when matplotlib
is missing). `--dry-run` prints the commands; `--tiny` is a seconds-long run for the tests (4 steps per row of
DiT-T/4 at batch 8 on the CPU, --n 10).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ilct.latents.directory import is_complete

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402


ROWS = ["ict", "ilct", "meanflow", "meanflow+cauchy+ot", "meanflow+cauchy+ot+nsln", "alphaflow", "edm-then-ilct",
        "edm-heun"]
SEEDS = {"ict": [0, 1], "ilct": [0, 1], "meanflow": [0, 1]}  # every other row: seed 0
MF_TECHNIQUES = ["meanflow.metric=cauchy", "method.ot_coupling=true"]
EDM = ("fmnist-ilct", ["train.objective=edm"])
HEUN_STEPS = 18  # 35 NFE
TINY_SETS = ["model.arch=DiT-T/4", "train.batch_size=8", "train.device=cpu"]
CONSISTENCY_ROWS = ("ict", "ilct")  # the reference of --equal-wall-clock: their seconds per step
# MeanFlow rows: no schedule depends on the run's length, so a run's first k steps are a k-step run
PREFIX_ROWS = ("meanflow", "meanflow+cauchy+ot", "meanflow+cauchy+ot+nsln")
# The fmnist presets' settings as of 2026-11-30 (the demo sweep's choice: docs/stability.md), on every command
PINNED = ["model.arch=ADM-T", "consistency.s0=10", "consistency.s1=160", "train.batch_size=64", "train.lr=0.001",
          "train.beta1=0.9", "train.beta2=0.99", "train.adam_eps=0.0001", "train.weight_decay=0.0001",
          "train.ema_decay=0.995", "train.warmup_steps=0", "train.lr_decay=none", "train.grad_clip=0.0",
          "train.precision=fp32"]
# recorded in each row, as the run's config.yaml resolved them
SETTING_KEYS = ["train.objective", "model.arch", "model.in_channels", "consistency.s0", "consistency.s1",
                "train.total_steps", "train.batch_size", "train.lr", "train.beta2", "train.ema_decay", "train.seed",
                "train.precision", "method.metric", "method.diffusion_loss", "method.ot_coupling", "method.adaptive_c",
                "method.nsln", "meanflow.metric", "meanflow.alpha_curriculum", "autoencoder.kind"]
TERMINATED: set[int] = set()  # the processes this script sent SIGTERM: their exit by that signal is no failure


@dataclass
class Phase:
    """One `ilct train` run: `share` of the row's budget, optionally warm-started from another phase's run."""
    run: str  # run folder name
    preset: str
    sets: list[str]
    share: float
    init_from: str = ""  # run folder name of the phase it starts from


def phases(row: str, seed: int, suffix: str = "") -> list[Phase]:
    """The training runs of a row, in order (`suffix` tells a longer budget's run folders apart: `_x4`)."""
    one = {"ict": ("fmnist-ict", []), "ilct": ("fmnist-ilct", []), "meanflow": ("fmnist-meanflow", []),
           "meanflow+cauchy+ot": ("fmnist-meanflow", MF_TECHNIQUES),
           "meanflow+cauchy+ot+nsln": ("fmnist-meanflow", MF_TECHNIQUES + ["method.nsln=true"]), "edm-heun": EDM,
           "alphaflow": ("fmnist-meanflow", ["meanflow.alpha_curriculum=true"])}  # one switch: the curriculum
    if row in one:
        preset, sets = one[row]
        return [Phase(f"{row}_s{seed}{suffix}", preset, list(sets), 1.0)]
    if row == "edm-then-ilct":
        first = Phase(f"{row}.edm_s{seed}{suffix}", EDM[0], list(EDM[1]), 0.5)
        return [first, Phase(f"{row}_s{seed}{suffix}", "fmnist-ilct", [], 0.5, init_from=first.run)]
    raise ValueError(f"unknown row {row!r}; rows: {', '.join(ROWS)}")


def suffix(multiple: int) -> str:
    return "" if multiple == 1 else f"_x{multiple}"


def jobs(rows: list[str], seeds: list[int] | None) -> list[tuple[str, int]]:
    """(row, seed) pairs: the given seeds for every row, or by default SEEDS (seed 0 where not listed)."""
    return [(r, s) for r in rows for s in (seeds if seeds is not None else SEEDS.get(r, [0]))]


def split_steps(total: int, n_phases: int) -> list[int]:
    """A row's step budget over its phases: all of it, or two halves that add up to the total."""
    return [total] if n_phases == 1 else [total // 2, total - total // 2]


@dataclass
class Train:
    """One `ilct train` job: a phase of a row in a latent space, its steps and checkpoint spacing."""
    space: str
    phase: Phase
    seed: int
    steps: int
    ckpt_every: int
    extra: bool = False  # a run of a longer budget (--multiples > 1)
    source: bool = False  # ... of a MeanFlow row whose --steps row is its step-N checkpoint (--prefix)

    @property
    def key(self) -> str:
        return f"{self.space}/{self.phase.run}"


@dataclass
class Row:
    """One row of the table: a row name, seed and budget, scored at one checkpoint of one run (its last phase)."""
    space: str
    row: str
    seed: int
    multiple: int
    kind: str  # "steps" (equal steps) or "wall-clock" (MeanFlow at the consistency rows' time)
    run: str  # run folder of the scored checkpoint
    planned: int  # the row's step budget (wall-clock rows: filled in from the measured rates)
    step: int | None = None  # the checkpoint's step; None: the run's last
    runs: list[str] = field(default_factory=list)  # the run folders whose training it counts (both phases)
    note: str = ""
    last: int = 0  # the steps of its last phase's run (a warm start's second half); 0: planned

    @property
    def key(self) -> str:
        return f"{self.row}_s{self.seed}{suffix(self.multiple)}{'_wc' if self.kind == 'wall-clock' else ''}"


def plan(args, todo: list[tuple[str, str, int, int]], steps: dict | None = None) -> tuple[list[Train], list[Row]]:
    """The training jobs and the table's rows of (space, row, seed, multiple) entries. `steps`: the step count of
    each (space, run folder) from --seconds probes; else the multiples of --steps."""
    trains, rows = {}, []
    longest = {}
    for space, row, seed, m in todo:
        longest[(space, row, seed)] = max(m, longest.get((space, row, seed), 1))
    for space, row, seed, m in todo:
        phs = phases(row, seed, suffix(m))
        budget = m * args.steps if args.steps else 0
        if steps is None and use_prefix(args, row, m, longest[(space, row, seed)]):
            src = phases(row, seed, suffix(longest[(space, row, seed)]))[-1].run
            rows.append(Row(space, row, seed, m, "steps", src, budget, step=budget, runs=[src],
                            note=f"the step-{budget} checkpoint of {src} (MeanFlow's first k steps are a k-step run)"))
            continue
        counts = [steps[(space, ph.run)] for ph in phs] if steps is not None else split_steps(budget, len(phs))
        for ph, k in zip(phs, counts):
            grid = ckpt_grid(args, row, m, k)
            trains[(space, ph.run)] = Train(space, ph, seed, k, grid, extra=m > 1,
                                            source=m > 1 and use_prefix(args, row, 1, m))
        rows.append(Row(space, row, seed, m, "steps", phs[-1].run, sum(counts), runs=[ph.run for ph in phs],
                        last=counts[-1]))
    return list(trains.values()), rows


def use_prefix(args, row: str, multiple: int, longest: int) -> bool:
    """Whether the row at this multiple is a checkpoint of its row's longer run (MeanFlow, --prefix)."""
    return bool(args.prefix and args.steps and row in PREFIX_ROWS and multiple < longest)


def ckpt_grid(args, row: str, multiple: int, steps: int) -> int:
    """A run's checkpoint spacing: --ckpt-grid for a MeanFlow run scored at earlier steps too (--equal-wall-clock,
    or a longer run whose step-N checkpoint is the N-step row), on a grid that holds --steps; else only its end."""
    if row in PREFIX_ROWS and args.steps and (args.equal_wall_clock or (args.prefix and multiple > 1)):
        return max(1, min(steps, math.gcd(args.ckpt_grid, args.steps)))
    return steps


def latent_space(space: str, ae: str, work: Path, data: str, ilct: list[str]) -> tuple[list[str], list[str]]:
    """The `ilct encode` command of a latent space and the flags its training runs take (as in ablation.py)."""
    lat = work / space / "latents"
    if space == "builtin":
        return (ilct + ["encode", "--data", data, "--autoencoder", f"builtin:{ae}", "--out", str(lat)],
                ["--autoencoder", ae])
    return (ilct + ["encode", "--data", data, "--resolution", "64", "--rgb", "--autoencoder", f"taesd:{ae}", "--out", str(lat)],
            ["--autoencoder", ae, "--set", "autoencoder.kind=taesd", "--set", "model.in_channels=32",
             "--set", "data.rgb=true", "--set", "data.resolution=64"])


def row_sets(args, ph: Phase) -> list[str]:
    """The --set values that define a phase: the pinned presets' settings, --set, the row's own changes."""
    return (PINNED if args.pin else []) + args.set + ph.sets + (TINY_SETS if args.tiny else [])


def train_cmd(args, ilct: list[str], flags: list[str], space: str, ph: Phase, seed: int, steps: int, root: str,
              ckpt_every: int = 0, nice: int = 0) -> list[str]:
    work = Path(args.work)
    out = work / space / root / ph.run
    ckpt_every = ckpt_every or steps
    sets = [f"data.latents={work / space / 'latents'}", f"train.total_steps={steps}", f"train.seed={seed}",
            "train.sample_every=0", f"train.ckpt_every={ckpt_every}", f"train.log_every={max(1, min(50, steps // 10))}"]
    if ckpt_every < steps:  # every checkpoint kept: the rows score earlier ones
        sets.append(f"train.keep_checkpoints={steps // ckpt_every + 2}")
    sets += row_sets(args, ph)
    if ph.init_from and root != "calibration":  # the probe of a warm-started phase times the same network from scratch
        sets.append(f"train.init_from={work / space / root / ph.init_from}")
    cmd = ilct + ["train", "--config", ph.preset, "--out", str(out), "--no-progress"] + flags
    if nice:
        cmd = ["nice", "-n", str(nice)] + cmd
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    cmd += common.set_flags(sets)
    if (out / "config.yaml").exists():
        cmd.append("--force" if root == "calibration" else "--resume")
    return cmd


def read_log(run: Path) -> list[dict]:
    """The logged steps of a run's log.jsonl ({step, elapsed_s}), elapsed_s summed over resumes (it restarts
    with each process)."""
    path = run / "log.jsonl"
    if not path.is_file():
        return []
    out, total, last = [], 0.0, 0.0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line being written
            continue
        if "elapsed_s" not in row or "step" not in row:
            continue
        if row["elapsed_s"] < last:
            total += last
        last = row["elapsed_s"]
        out.append({"step": row["step"], "elapsed_s": total + last})
    return out


def seconds_per_step(run: Path) -> float:
    """From a probe's log.jsonl: elapsed seconds between the first and the last logged step, per step."""
    log = read_log(run)
    if len(log) < 2 or log[-1]["step"] == log[0]["step"]:
        raise SystemExit(f"{run}: the probe logged fewer than two steps; raise --probe")
    return max(log[-1]["elapsed_s"] - log[0]["elapsed_s"], 1e-3) / (log[-1]["step"] - log[0]["step"])


def rate_between(log: list[dict], lo: int, hi: int) -> float | None:
    """Seconds per step between the first logged step >= lo and the last <= hi (None: fewer than two)."""
    pts = [x for x in log if lo <= x["step"] <= hi]
    if len(pts) < 2 or pts[-1]["step"] == pts[0]["step"]:
        return None
    return (pts[-1]["elapsed_s"] - pts[0]["elapsed_s"]) / (pts[-1]["step"] - pts[0]["step"])


def seconds_at(log: list[dict], step: int) -> float | None:
    """Training seconds up to `step` (interpolated between logged steps; extrapolated past the last one)."""
    if not log:
        return None
    if log[0]["step"] > step:  # before the first logged step: from the loop's start (step 0, 0 s)
        log = [{"step": 0, "elapsed_s": 0.0}] + log
    before = [x for x in log if x["step"] <= step]
    after = [x for x in log if x["step"] >= step]
    if before and after:
        a, b = before[-1], after[0]
        if b["step"] == a["step"]:
            return round(a["elapsed_s"], 1)
        return round(a["elapsed_s"] + (b["elapsed_s"] - a["elapsed_s"]) * (step - a["step"]) / (b["step"] - a["step"]), 1)
    ref = before or after
    rate = rate_between(log, 0, 10 ** 9) or 0.0
    return round(ref[-1]["elapsed_s"] + rate * (step - ref[-1]["step"]), 1) if before else None


def fixed_steps(args, todo) -> dict[tuple[str, str], int]:
    """--steps: steps per (latent space, run folder)."""
    return {(t.space, t.phase.run): t.steps for t in plan(args, todo)[0]}


def budget_steps(args, ilct, flags, todo) -> dict[tuple[str, str], int] | None:
    """--seconds: steps per (latent space, run folder) from the probes (None under --steps)."""
    if not args.seconds:
        return None
    work = Path(args.work)
    every = [(space, ph, seed) for space, row, seed, _ in todo for ph in phases(row, seed)]
    probes = [(f"probe {s}/{ph.run}", train_cmd(args, ilct, flags[s], s, ph, d, args.probe, "calibration"),
               work / "logs" / f"probe_{s}_{ph.run}.log") for s, ph, d in every]
    common.pool(probes, args.parallel, args.dry_run)
    if args.dry_run:
        print(f"then each run trains {args.seconds:g} s x its share / its probe's seconds per step "
              "(the train.total_steps=0 below stands for that)")
        return {(s, ph.run): 0 for s, ph, _ in every}
    out = {}
    for s, ph, _ in every:
        rate = seconds_per_step(work / s / "calibration" / ph.run)
        out[(s, ph.run)] = max(1, int(args.seconds * ph.share / rate))
        print(f"probe {s}/{ph.run}: {rate:.4f} s/step -> {out[(s, ph.run)]} steps", flush=True)
    return out


def budget_dir(args, base: str) -> str:
    """A budget's folder under --work/SPACE: `runs` (or `eval`) for --steps, `runs-300s` for --seconds 300."""
    return base if not args.seconds else f"{base}-{args.seconds:g}s"


def refuse_other_budgets(args, todo) -> None:
    """--steps: a run folder that already holds a run of another length is resumed, never retrained, so it would
    mix budgets in one table; refuse it (exit 2) before anything runs."""
    import yaml

    for (space, run), k in fixed_steps(args, todo).items():
        cfg = Path(args.work) / space / budget_dir(args, "runs") / run / "config.yaml"
        if not cfg.is_file():
            continue
        try:
            have = yaml.safe_load(cfg.read_text())["train"]["total_steps"]
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
            have = f"an unreadable config ({e})"
        if have != k:
            print(f"error: {cfg.parent} holds a run of {have} steps and --steps {args.steps} gives it {k}: "
                  "give another --work (a run folder is resumed, never retrained)", file=sys.stderr)
            raise SystemExit(2)


def eval_cmd(args, ilct: list[str], run: Path, row: str, out_json: Path, checkpoint: Path | None = None) -> list[str]:
    cmd = ilct + ["eval", "--run", str(run), "--steps", str(HEUN_STEPS) if row == "edm-heun" else "1,2",
                  "--n", str(args.n), "--seed", "0", "--split", args.split, "--json", str(out_json), "--no-progress"]
    cmd += ["--checkpoint", str(checkpoint)] if checkpoint is not None else []
    return cmd + common.fid_flags(args)


def checkpoints(run: Path) -> dict[int, Path]:
    """A run's checkpoint folders by step."""
    from ilct.runs.checkpoint import list_checkpoints, step_of

    return {step_of(p): p for p in list_checkpoints(run) if step_of(p) is not None}


def pool(cmds, parallel: int, deadline: float = 0.0, stop_running: bool = False, on_done=None, tick=None,
         every: float = 30.0) -> tuple[dict[str, float], list[str], list[str]]:
    """common.pool's job pool, but a failed job is recorded, not fatal (the others' rows still get measured);
    `on_done(key)` after each job that ends well, `tick({key: process})` of the running jobs every `every` seconds.
    Returns (seconds per key, the failed keys, the keys never started)."""
    pending, active, seconds, failed, skipped, stopped = list(cmds), [], {}, [], [], False
    last = time.time()
    while pending or active:
        late = bool(deadline) and time.time() > deadline
        while pending and len(active) < parallel and not late:
            key, cmd, log = pending.pop(0)
            active.append((common.run(cmd, log), key, log, time.time()))
        if late:
            if pending:
                print(f"deadline: {len(pending)} jobs not started", flush=True)
                skipped += [k for k, _, _ in pending]
                pending.clear()
            if stop_running and not stopped:
                for proc, *_ in active:
                    proc.send_signal(signal.SIGTERM)
                    TERMINATED.add(proc.pid)
                stopped = True
        for item in list(active):
            proc, key, log, started = item
            if proc.poll() is None:
                continue
            active.remove(item)
            seconds[key] = round(time.time() - started, 1)
            if proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM) and proc.pid in TERMINATED:
                print(f"{key} ended by SIGTERM (stopped by this script)", flush=True)  # its newest whole checkpoint counts
            elif proc.returncode != 0:
                failed.append(key)
                tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.is_file() else []
                print(f"FAILED {key} (exit {proc.returncode}; {log}): " + " | ".join(tail), flush=True)
            elif on_done:
                on_done(key)
        if tick and active and time.time() - last >= every:
            tick({key: proc for proc, key, _, _ in active})
            last = time.time()
        time.sleep(0.5)
    return seconds, failed, skipped


def measure_floor(args) -> None:
    """--floor-of RUN: the autoencoder floor of RUN's latent space, scored as `ilct eval` scores samples: its
    autoencoder's reconstructions of n random training images (numpy default_rng(0)), as the run's data renders them,
    against --split; written to --floor-json."""
    import numpy as np
    import torch

    from ilct.data import load_dataset
    from ilct.data.images import to_uint8
    from ilct.latents import default_cache_dir
    from ilct.metrics.evaluate import make_extractor, reference_features, reference_set, scores
    from ilct.runs.opened import open_run

    t0 = time.time()
    run = open_run(args.floor_of, device="cpu" if args.tiny else "auto")
    d = run.cfg.data
    extract = make_extractor(args.features, args.inception_weights or None)
    reference = reference_set(args.features, run.cfg, d.root, None, args.split)
    real = reference_features(extract, reference, Path(args.cache_dir) if args.cache_dir else default_cache_dir(),
                              progress=False)
    train = load_dataset(d.dataset, d.root, "train", d.resolution, d.rgb)
    n = min(args.n, len(train))
    idx = np.sort(np.random.default_rng(0).choice(len(train), n, replace=False))
    try:
        device = next(run.autoencoder.parameters()).device
    except (AttributeError, StopIteration):
        device = torch.device("cpu")
    feats = []
    with torch.inference_mode():
        for s in range(0, n, 500):
            x = train.batch_indices(idx[s : s + 500]).to(device)
            feats.append(extract(to_uint8(run.autoencoder.decode(run.autoencoder.encode(x)))))
    m = scores(real, np.concatenate(feats), n, 0)
    out = {"fid": m["fid"], "precision": m["precision"], "recall": m["recall"], "n": n, "split": args.split,
           "images": f"{n} random training images (default_rng(0)) encoded and decoded by "
                     f"{run.cfg.autoencoder.kind}:{run.cfg.autoencoder.path}",
           "reference": f"{reference.name} ({len(reference)} images)", "features": extract.name,
           "features_fingerprint": extract.fingerprint(), "seconds": round(time.time() - t0, 1)}
    common.write_json(Path(args.floor_json), out)
    print(f"floor of {args.floor_of}: FID {m['fid']:.2f}, recall {m['recall']:.3f}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", help="builtin, taef2, or both: builtin,taef2")
    p.add_argument("--autoencoder", help="per latent space (comma-separated): the built-in "
                   "autoencoder directory, or the TAEF2 weights folder")
    p.add_argument("--data-dir", default="", help="Fashion-MNIST IDX files (default: the preset's data.root)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="equal steps: training steps per row (default: the demo's, "
                        "fmnist-ilct's train.total_steps)")
    budget.add_argument("--seconds", type=float, help="equal wall-clock: training seconds per row, from probe runs")
    p.add_argument("--multiples", default="1", help="budgets as multiples of --steps, e.g. 1,4")
    p.add_argument("--long-rows", default="", help="the rows trained at the multiples > 1 (default: --rows)")
    p.add_argument("--long-seeds", default="0", help="their seeds")
    p.add_argument("--equal-wall-clock", action="store_true", help="MeanFlow rows also at the consistency rows' "
                   "wall-clock (from each run's seconds per step over --window)")
    p.add_argument("--window", default="100,600", help="steps between which each run's seconds per step is read")
    p.add_argument("--ckpt-grid", type=int, default=100, help="checkpoint spacing of the MeanFlow runs scored early")
    p.add_argument("--prefix", action=argparse.BooleanOptionalAction, default=True,
                   help="a MeanFlow row's shorter budget is the checkpoint of its longer run")
    p.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                   help="the fmnist presets' settings of 2026-11-30 on every command (PINNED)")
    p.add_argument("--probe", type=int, default=200, help="steps of each job's timing run under --seconds")
    p.add_argument("--n", type=int, default=5000, help="samples per FID")
    p.add_argument("--split", default="test", choices=["train", "test", "val"], help="the real images of the scores")
    p.add_argument("--floor", action="store_true", help="also each latent space's autoencoder floor")
    p.add_argument("--floor-of", default="", help=argparse.SUPPRESS)  # internal: one floor job
    p.add_argument("--floor-json", default="", help=argparse.SUPPRESS)
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="for every row, after the pinned settings and before the row's own changes (repeatable), "
                        "e.g. train.beta2=0.999 for the presets as they were before 2026-11-30")
    p.add_argument("--seeds", help="seeds for every row (default: 0,1 for ict, ilct, meanflow; 0 for the others)")
    p.add_argument("--parallel", type=int, default=1, help="training jobs at once (GPU: all of them)")
    p.add_argument("--interleave", action="store_true", help="train seed by seed, the rows in --rows order (on a CPU "
                   "with --parallel 2 and --rows ict,meanflow,...: a consistency run beside a MeanFlow run, so that "
                   "their seconds per step are read under the same load)")
    p.add_argument("--eval-parallel", type=int, default=0, help="evaluations at once (default --parallel)")
    p.add_argument("--train-deadline", type=float, default=0, help="seconds after the start: stop the trainings")
    p.add_argument("--eval-deadline", type=float, default=0, help="seconds after the start: start no evaluation")
    p.add_argument("--progress-every", type=float, default=30, help="seconds between progress lines (0: none)")
    p.add_argument("--extra-nice", type=int, default=0, help="the longer budgets' runs at this nice level (a GPU's "
                   "host CPU then serves the --steps runs first); 0: as the others")
    p.add_argument("--limit", type=int, help="encode only the first N training images (TAEF2 on a CPU is slow)")
    p.add_argument("--features", default="fmnist", choices=["fmnist", "inception"], help="FID features (the tests: "
                   "inception with a stand-in detector)")
    p.add_argument("--inception-weights", default="")
    p.add_argument("--cache-dir", default="", help="eval's classifier and reference-feature cache (default $ILCT_CACHE)")
    p.add_argument("--work", default="runs/objectives", help="latents, runs and logs")
    p.add_argument("--out", default="docs/results/objectives.json")
    p.add_argument("--figure", default="docs/figures/objectives_fid_vs_seconds.png", help="'' = no figure")
    p.add_argument("--tiny", action="store_true", help="4 steps per row (probe 4), DiT-T/4, batch 8, CPU, --n 10")
    p.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    p.add_argument("--merge", action="store_true", help="keep the rows already in --out of the other latent spaces and budget multiples")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--replot", action="store_true", help="only redraw --figure from the results already in --out")
    args = p.parse_args()
    if args.floor_of:
        return args
    if not args.replot and not (args.latents and args.autoencoder):
        p.error("--latents and --autoencoder are required (or --replot)")
    if args.tiny:
        args.steps = args.steps or (None if args.seconds else 4)
        args.probe, args.n, args.ckpt_grid = 4, 10, 1
        args.window = args.window if args.window != "100,600" else "1,3"
    if not args.seconds and not args.steps:
        from ilct.demo import preset_steps  # here: --replot and --dry-run of other budgets need no config

        args.steps = preset_steps()
    args.multiples_list = sorted({int(m) for m in args.multiples.split(",")})
    if args.seconds and (args.multiples_list != [1] or args.equal_wall_clock):
        p.error("--multiples and --equal-wall-clock go with --steps (equal steps), not --seconds")
    if min(args.multiples_list) < 1 or args.ckpt_grid < 1:
        p.error("--multiples and --ckpt-grid must be >= 1")
    lo, hi = (int(v) for v in args.window.split(","))
    args.window_steps = (lo, hi)
    args.eval_parallel = args.eval_parallel or args.parallel
    return args


def parse_todo(args) -> list[tuple[str, str, int, int]]:
    """(space, row, seed, multiple) of every row of the table."""
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in rows:
        phases(r, 0)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    long_rows = [r.strip() for r in args.long_rows.split(",") if r.strip()] or rows
    for r in long_rows:
        phases(r, 0)
    long_seeds = [int(s) for s in args.long_seeds.split(",")]
    todo = []
    for space in args.spaces:
        todo += [(space, row, seed, 1) for row, seed in jobs(rows, seeds)] if 1 in args.multiples_list else []
        todo += [(space, row, seed, m) for m in args.multiples_list if m > 1 for row in long_rows for seed in long_seeds]
    return todo


class Controller:
    """Called every few seconds while the runs train: every --progress-every seconds a line per latent space (each
    run's step and seconds per step). With --train-deadline it also ends the longer budgets' runs early, so that no
    device time goes to a row that cannot be measured: once every run of the --steps budget is done (and 20 s more, for
    the rates to settle), a consistency run of a longer budget that its recent rate cannot finish by the deadline is
    stopped (its curriculum is fitted to its length: a cut run is no row); a MeanFlow run whose step-N checkpoint is a
    row (--prefix) is reniced by --extra-nice once past step N, and stopped once no other run trains."""

    def __init__(self, args, trains: list[Train], root: str, t0: float, deadline: float):
        self.args, self.root, self.t0, self.deadline = args, root, t0, deadline
        self.trains, self.by_key = trains, {t.key: t for t in trains}
        self.last_print, self.base_done_at = 0.0, 0.0
        self.stopped: dict[str, str] = {}
        self.reniced: set[str] = set()

    def log(self, t: Train) -> list[dict]:
        return read_log(Path(self.args.work) / t.space / self.root / t.phase.run)

    def __call__(self, active: dict) -> None:
        now = time.time()
        if self.args.progress_every and now - self.last_print >= self.args.progress_every:
            self.last_print = now
            for space in self.args.spaces:
                parts = []
                for t in self.trains:
                    log = self.log(t) if t.space == space else []
                    if log:
                        rate = rate_between(log, 0, 10 ** 9)
                        parts.append(f"{t.phase.run} {log[-1]['step']}/{t.steps}" + (f" {rate * 1000:.1f}ms" if rate else ""))
                print(f"[{now - self.t0:5.0f} s] {space}: " + ", ".join(parts), flush=True)
        steps = {k: (self.log(self.by_key[k]) or [{"step": 0}])[-1]["step"] for k in active}
        for k, proc in active.items():
            t = self.by_key[k]
            if t.source and self.args.extra_nice and k not in self.reniced and steps[k] >= self.args.steps:
                try:
                    os.setpriority(os.PRIO_PROCESS, proc.pid, self.args.extra_nice)
                except OSError:
                    pass
                self.reniced.add(k)
        if not self.deadline:
            return
        running = [k for k in active if k not in self.stopped]
        if any(not self.by_key[k].extra for k in running):
            return
        self.base_done_at = self.base_done_at or now
        if now - self.base_done_at >= 20:
            for k in running:
                t = self.by_key[k]
                log = self.log(t)
                recent = [x for x in log if log and x["elapsed_s"] >= log[-1]["elapsed_s"] - 15]
                rate = rate_between(recent, 0, 10 ** 9)
                if t.source or not rate or steps[k] >= t.steps or now + (t.steps - steps[k]) * rate <= self.deadline:
                    continue
                self.stop(k, active[k], f"at step {steps[k]} of {t.steps} ({rate * 1000:.1f} ms/step lately): cannot "
                                        f"finish by the deadline")
        running = [k for k in active if k not in self.stopped]
        if all(self.by_key[k].source for k in running):
            for k in running:
                if self.args.steps <= steps[k] < self.by_key[k].steps:  # (at its end it is saving and exiting)
                    self.stop(k, active[k], f"at step {steps[k]}: past its step-{self.args.steps} row, and no other run "
                                            "trains")

    def stop(self, key: str, proc, why: str) -> None:
        print(f"stopping {key} {why}", flush=True)
        self.stopped[key] = why
        proc.send_signal(signal.SIGTERM)
        TERMINATED.add(proc.pid)



def main() -> None:
    args = parse_args()
    if args.floor_of:
        return measure_floor(args)
    if args.replot:
        return replot(Path(args.out), Path(args.figure or "docs/figures/objectives_fid_vs_seconds.png"))
    t0 = time.time()
    args.spaces = [x.strip() for x in args.latents.split(",")]
    aes = [x.strip() for x in args.autoencoder.split(",")]
    if len(args.spaces) != len(aes) or not set(args.spaces) <= {"builtin", "taef2"}:
        raise SystemExit("--latents is builtin, taef2 or builtin,taef2, with one --autoencoder per latent space")
    todo = parse_todo(args)
    work, ilct = Path(args.work), [sys.executable, "-m", "ilct"]
    data = f"fashion_mnist:{args.data_dir}" if args.data_dir else "fashion_mnist"
    if not args.seconds:
        refuse_other_budgets(args, todo)
    flags, encodes = {}, []
    for space, ae in zip(args.spaces, aes):
        encode, flags[space] = latent_space(space, ae, work, data, ilct)
        encode += ["--limit", str(args.limit)] if args.limit else []
        encode += ["--device", "cpu"] if args.tiny else []
        if args.dry_run:
            print(" ".join(encode))
        elif not is_complete(work / space / "latents"):
            encodes.append((f"encode {space}", encode + ["--no-progress"], work / "logs" / f"encode_{space}.log"))
    _, failed, _ = pool(encodes, len(encodes))  # the latent spaces at once
    if failed:
        raise SystemExit(f"encoding failed: {', '.join(failed)}")
    timings = {"encode": round(time.time() - t0, 1)}
    if encodes:
        print(f"encoded {', '.join(args.spaces)} after {timings['encode']:.0f} s", flush=True)
    trains, rows = plan(args, todo, budget_steps(args, ilct, flags, todo))
    root = budget_dir(args, "runs")

    # training: first every fresh run, then the warm-started ones (their source is in the first wave)
    if args.interleave:  # seed by seed, the rows in --rows order: jobs of different rows share the machine
        order = {row: i for i, row in enumerate(r.strip() for r in args.rows.split(","))}
        trains.sort(key=lambda t: (t.extra, t.seed, order.get(t.phase.run.split("_s")[0].split(".")[0], 99)))
    waves = [[], []]
    for t in trains:
        nice = args.extra_nice if t.extra and not t.source else 0
        waves[bool(t.phase.init_from)].append((t.key, train_cmd(args, ilct, flags[t.space], t.space, t.phase, t.seed,
                                                                t.steps, root, t.ckpt_every, nice),
                                               work / "logs" / f"{t.space}_{t.phase.run}.train.log"))
    if args.dry_run:
        for wave in waves:
            for _, cmd, _ in wave:
                print(" ".join(cmd))
        for r in rows:
            run = work / r.space / root / r.run
            ckpt = run / "checkpoints" / f"step_{r.step:09d}" if r.step is not None else None
            print(" ".join(eval_cmd(args, ilct, run, r.row, work / r.space / budget_dir(args, "eval") / f"{r.key}.json",
                                    ckpt)))
        if args.equal_wall_clock:
            print("then each MeanFlow row is also scored at the checkpoint of the consistency rows' wall-clock")
        return
    deadline = t0 + args.train_deadline if args.train_deadline else 0.0
    n_jobs = max(len(w) for w in waves)
    print(f"training {len(trains)} runs, {min(n_jobs, args.parallel)} at once"
          + (f", stopped at {args.train_deadline:g} s" if deadline else ""), flush=True)
    tick = Controller(args, trains, root, t0, deadline)
    seconds, failed = {}, []
    for wave in waves:
        s, f, _ = pool(wave, args.parallel, deadline, stop_running=True, tick=tick, every=5.0)
        seconds.update(s)
        failed += f
    timings["train"] = round(time.time() - t0 - timings["encode"], 1)
    print(f"training done after {time.time() - t0:.0f} s", flush=True)
    rates = measure_rates(args, trains, rows, root)
    wall, missing = wall_clock_rows(args, rows, rates, root) if args.equal_wall_clock else ([], {})
    rows += wall
    report = Report(args, trains, rows, rates, seconds, failed, timings, t0)
    report.stopped, report.missing = dict(tick.stopped), missing
    report.write()
    evaluate(args, ilct, rows, report, root, t0)
    timings["eval"] = round(time.time() - t0 - timings["encode"] - timings["train"], 1)
    report.write(figure=True)
    print(f"done after {time.time() - t0:.0f} s", flush=True)


def measure_rates(args, trains: list[Train], rows: list[Row], root: str) -> dict:
    """Per latent space: each run's seconds per step over --window (and over its whole run, and its last 60 s),
    the consistency runs' mean, and each MeanFlow row's ratio to it (the steps it trains in their time, per step)."""
    work, (lo, hi) = Path(args.work), args.window_steps
    out = {}
    for space in args.spaces:
        runs = {}
        for t in trains:
            if t.space != space:
                continue
            log = read_log(work / space / root / t.phase.run)
            if not log:
                continue
            end = log[-1]["elapsed_s"]
            late = [x for x in log if x["elapsed_s"] >= end - 60]
            runs[t.phase.run] = {"window": rate_between(log, lo, hi), "whole": rate_between(log, 0, 10 ** 9),
                                 "last_60s": rate_between(late, 0, 10 ** 9), "steps": log[-1]["step"]}
        by_row = {}
        for r in rows:
            if r.space == space and r.kind == "steps" and r.run in runs and runs[r.run]["window"]:
                by_row.setdefault(r.row, {})[r.run] = runs[r.run]["window"]
        mean = {row: sum(v.values()) / len(v) for row, v in by_row.items()}
        cons = [v for row, v in mean.items() if row in CONSISTENCY_ROWS]
        ref = sum(cons) / len(cons) if cons else None
        out[space] = {"window_steps": [lo, hi], "runs": runs, "s_per_step": mean, "consistency_s_per_step": ref,
                      "ratio": {row: ref / v for row, v in mean.items() if ref and row in PREFIX_ROWS}}
        if ref:
            print(f"{space}: consistency {ref * 1000:.1f} ms/step over steps {lo}-{hi}; "
                  + ", ".join(f"{row} {v * 1000:.1f} ms ({ref / v:.2f} of its steps per consistency step)"
                              for row, v in mean.items() if row not in CONSISTENCY_ROWS), flush=True)
    return out


def wall_clock_rows(args, rows: list[Row], rates: dict, root: str) -> tuple[list[Row], dict[str, str]]:
    """MeanFlow rows at the consistency rows' wall-clock: the checkpoint nearest to M N x ratio steps (and, as
    missing, those whose run stopped before it)."""
    out, missing = [], {}
    for r in rows:
        ratio = rates.get(r.space, {}).get("ratio", {}).get(r.row)
        if r.kind != "steps" or r.row not in PREFIX_ROWS or not ratio:
            continue
        want = r.multiple * args.steps * ratio
        have = checkpoints(Path(args.work) / r.space / root / r.run)
        if not have:
            continue
        step = min(have, key=lambda s: (abs(s - want), s))
        row = Row(r.space, r.row, r.seed, r.multiple, "wall-clock", r.run, round(want), step=step, runs=[r.run],
                  note=f"the checkpoint nearest to {r.multiple * args.steps} x {ratio:.3f} = {want:.0f} steps: the steps "
                       f"{r.row} trains in the time of {r.multiple * args.steps} consistency steps ({r.space} latents)")
        if step < want - args.ckpt_grid:
            missing[f"{row.key} ({r.space})"] = f"{r.run} stopped at step {max(have)}, before the {want:.0f} steps of " \
                                                f"the consistency rows' wall-clock"
            continue
        out.append(row)
    return out, missing


def evaluate(args, ilct, rows: list[Row], report, root: str, t0: float) -> None:
    """Each row's `ilct eval` (the first alone: it caches the reference features the others read), the floors, then
    the report after each one."""
    work, ev = Path(args.work), budget_dir(args, "eval")
    jobs_ = []
    order = sorted(rows, key=lambda r: (r.multiple, r.kind != "steps"))  # the demo's budget first
    for r in order:
        run = work / r.space / root / r.run
        have = checkpoints(run) if run.is_dir() else {}
        if not have:
            report.missing[r.key + f" ({r.space})"] = "no checkpoint (its training failed or never started)"
            continue
        if r.kind == "steps" and r.step is None and r.row not in PREFIX_ROWS and max(have) < (r.last or r.planned):
            report.missing[r.key + f" ({r.space})"] = f"stopped at step {max(have)} of {r.last or r.planned}: its curriculum " \
                                                      "is fitted to its length, so a cut run is no row"
            continue
        ckpt = None
        if r.step is not None:
            if r.step not in have:
                report.missing[r.key + f" ({r.space})"] = f"{r.run} has no checkpoint at step {r.step} (it stopped at " \
                                                          f"{max(have)})"
                continue
            ckpt = have[r.step]
        jobs_.append((f"{r.space}/{r.key}", eval_cmd(args, ilct, run, r.row, work / r.space / ev / f"{r.key}.json", ckpt),
                      work / "logs" / f"{r.space}_{r.key}.eval.log"))
    floors = []
    if args.floor:
        for space in args.spaces:
            src = next((r for r in rows if r.space == space and checkpoints(work / space / root / r.run)), None)
            if src is None:
                continue
            out = work / space / ev / "autoencoder_floor.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--floor-of", str(work / space / root / src.run),
                   "--floor-json", str(out), "--n", str(args.n), "--split", args.split, "--features", args.features]
            cmd += ["--inception-weights", args.inception_weights] if args.inception_weights else []
            cmd += ["--cache-dir", args.cache_dir] if args.cache_dir else []
            cmd += ["--tiny"] if args.tiny else []
            floors.append((f"{space}/floor", cmd, work / "logs" / f"{space}_floor.log"))
    deadline = t0 + args.eval_deadline if args.eval_deadline else 0.0
    on_done = lambda key: report.write()  # noqa: E731
    first, rest = jobs_[:1], jobs_[1:] + floors
    _, f1, s1 = pool(first, 1, deadline, on_done=on_done)
    _, f2, s2 = pool(rest, args.eval_parallel, deadline, on_done=on_done)
    for key in f1 + f2:
        report.missing[key] = "its evaluation failed (see its log)"
    for key in s1 + s2:
        report.missing[key] = "not evaluated: --eval-deadline passed"
    report.failed += f1 + f2


class Report:
    """The results file: written after every evaluation (the rows measured so far), and at the end with the figure."""

    def __init__(self, args, trains, rows, rates, seconds, failed, timings, t0):
        self.args, self.trains, self.rows, self.rates, self.seconds = args, trains, rows, rates, seconds
        self.failed, self.timings, self.t0 = list(failed), timings, t0
        self.missing: dict[str, str] = {}
        self.stopped: dict[str, str] = {}  # runs the Controller ended early, and why
        self.lock = threading.Lock()

    def row_dict(self, r: Row, root: str, ev: str) -> dict | None:
        import yaml

        work = Path(self.args.work)
        path = work / r.space / ev / f"{r.key}.json"
        if not path.is_file():
            return None
        m = json.loads(path.read_text())
        nfe = {str(HEUN_STEPS): str(2 * HEUN_STEPS - 1)} if r.row == "edm-heun" else {}
        step = m.get("step")
        secs = 0.0
        for run in r.runs:  # both phases of a warm start: the first's whole run, the last's up to the checkpoint
            log = read_log(work / r.space / root / run)
            secs += (seconds_at(log, step if run == r.runs[-1] else log[-1]["step"]) or 0.0) if log else 0.0
        rates = self.rates.get(r.space, {}).get("runs", {}).get(r.run, {})
        cfg = {}
        cfg_path = work / r.space / root / r.run / "config.yaml"
        if cfg_path.is_file():
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
        settings = {k: cfg.get(k.split(".")[0], {}).get(k.split(".")[1]) for k in SETTING_KEYS
                    if isinstance(cfg.get(k.split(".")[0]), dict) and k.split(".")[1] in cfg[k.split(".")[0]]}
        t = next((t for t in self.trains if t.space == r.space and t.phase.run == r.run), None)
        ph = phases(r.row, r.seed, suffix(r.multiple))[-1]
        budget = (f"seconds {self.args.seconds:g}" if self.args.seconds else
                  f"steps {r.planned}" if r.kind == "steps" else
                  f"wall-clock of {r.multiple * self.args.steps} consistency steps")
        row = {"name": r.row, "latents": r.space, "seed": r.seed, "multiple": r.multiple, "kind": r.kind,
               "budget": budget, "steps": step, "planned_steps": r.planned,
               "complete": bool(step is not None and (step >= r.planned if r.kind == "steps" else
                                                      abs(step - r.planned) <= self.args.ckpt_grid)),
               "phase_steps": ({x: (step if x == r.runs[-1] else next((t.steps for t in self.trains
                                                                       if t.space == r.space and t.phase.run == x), None))
                                for x in r.runs}),
               "seconds": round(secs, 1),
               "s_per_step": rates.get("whole"), "s_per_step_window": rates.get("window"),
               "s_per_step_last_60s": rates.get("last_60s"),
               "fid": {nfe.get(x["key"], x["key"]): x["fid"] for x in m["rows"]},
               "precision": {nfe.get(x["key"], x["key"]): x["precision"] for x in m["rows"]},
               "recall": {nfe.get(x["key"], x["key"]): x["recall"] for x in m["rows"]},
               "n": m.get("n"), "split": m.get("split"), "reference": m.get("reference"),
               "features": m["features"], "features_fingerprint": m.get("features_fingerprint"),
               "classifier_test_accuracy": m.get("classifier_test_accuracy"),
               "run": r.run, "checkpoint": Path(m.get("checkpoint", "")).name,
               "preset": ph.preset, "sets": row_sets(self.args, ph), "settings": settings}
        if t is None and r.kind == "steps":
            row["source_run"] = r.run
        if r.note:
            row["note"] = r.note
        if self.seconds:
            row["job_seconds"] = round(sum(self.seconds.get(f"{r.space}/{x}", 0.0) for x in r.runs), 1)
        return row

    def write(self, figure: bool = False) -> None:
        with self.lock:
            args = self.args
            root, ev = budget_dir(args, "runs"), budget_dir(args, "eval")
            rows = [d for d in (self.row_dict(r, root, ev) for r in self.rows) if d is not None]
            floors = {}
            for space in args.spaces:
                path = Path(args.work) / space / ev / "autoencoder_floor.json"
                if path.is_file():
                    floors[space] = json.loads(path.read_text())
            budget = (f"--seconds {args.seconds:g} per row (probe {args.probe} steps)" if args.seconds else
                      f"--steps {args.steps} per row, multiples {args.multiples}")
            command, machine = "python " + " ".join(sys.argv), common.machine()
            date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
            for row in rows:
                row.update(command=command, machine=machine, date=date)
            report = {"command": command, "machine": machine, "date": date, "budget": budget,
                      "split": args.split, "n": args.n, "pinned": PINNED if args.pin else [],
                      "jobs_at_once": min(args.parallel, len(self.trains)),
                      "wall_seconds": round(time.time() - self.t0, 1), "timings": self.timings,
                      "floors": floors, "rates": self.rates, "rows": rows,
                      "missing": dict(sorted(self.missing.items())), "failed": self.failed, "stopped_early": self.stopped,
                      "notes": args.note}
            if args.merge and Path(args.out).is_file():
                report = merged(Path(args.out), report, args.spaces, args.multiples_list)
            common.write_json(Path(args.out), report)
            if figure:
                print(f"written to {args.out}")
                if args.figure:
                    title = (report["command"] if len(report.get("commands", [])) < 2
                             else f"{args.out} ({len(report['commands'])} commands; each row's is in it)")
                    plot(report["rows"], Path(args.figure), title, report["floors"])


RUN_KEYS = ("command", "machine", "date", "budget", "wall_seconds", "timings", "missing", "failed", "stopped_early",
            "notes")


def merged(path: Path, new: dict, spaces: list[str], multiples: list[int] = (1,)) -> dict:
    """--merge: the results file at `path` with this invocation's (latent space, budget multiple) pairs replaced by
    `new`'s rows; the rows of the other pairs are kept (each with the command, machine and date that measured it),
    and what their invocation recorded goes under `earlier_runs`. A floor is replaced where `new` measured one; the
    rates of an invocation without the demo's budget go under "<space>_x<multiple>" (a 4x run's steps are timed
    beside other jobs than the 1x rows', so its ratio is its own)."""
    try:
        old = json.loads(path.read_text())
        old_rows = [r for r in old["rows"] if isinstance(r, dict)]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"note: --merge: {path} is not a results file of this benchmark ({e}); replacing it", file=sys.stderr)
        return new
    measured = {(s, m) for s in spaces for m in multiples}
    keep = [{**r, "command": r.get("command", old.get("command")), "machine": r.get("machine", old.get("machine")),
             "date": r.get("date", old.get("date"))} for r in old_rows
            if (r.get("latents"), r.get("multiple", 1)) not in measured]
    if not keep:
        return new
    out = dict(new)
    out["rows"] = keep + new["rows"]
    tag = "" if 1 in multiples else "".join(suffix(m) for m in multiples)
    out["floors"] = {**(old.get("floors") or {}), **new["floors"]}
    out["rates"] = {**{k: v for k, v in (old.get("rates") or {}).items() if k not in {s + tag for s in spaces}},
                    **{k + tag: v for k, v in new["rates"].items()}}
    earlier = [e for e in old.get("earlier_runs", []) if any(r["command"] == e.get("command") for r in keep)]
    if any(r["command"] == old.get("command") for r in keep):
        earlier.append({k: old[k] for k in RUN_KEYS if k in old})
    out["earlier_runs"] = earlier
    out["commands"] = list(dict.fromkeys(r["command"] for r in out["rows"]))
    return out


def plot(rows: list[dict], path: Path, command: str, floors: dict | None = None) -> None:
    """FID at 1 NFE (edm-heun: 35) against training seconds: one panel per latent space, one line per row through
    its seed-0 budgets of equal steps (filled: the demo's and longer budgets; open squares: the other seeds; stars:
    MeanFlow at the consistency rows' wall-clock), and the autoencoder's floor as a dashed line."""
    try:
        plt = common.pyplot()
    except ImportError:
        print("note: matplotlib is missing; no figure (the numbers are in the JSON)")
        return
    spaces = sorted({r["latents"] for r in rows})
    fig, axes = plt.subplots(1, max(1, len(spaces)), figsize=(7 * max(1, len(spaces)), 4.8), squeeze=False)

    def fid1(r):
        return r["fid"].get("1", r["fid"].get("35"))

    for ax, space in zip(axes[0], spaces):
        mine = [r for r in rows if r["latents"] == space and fid1(r) is not None]
        names = list(dict.fromkeys(r["name"] for r in mine))
        for i, name in enumerate(names):
            color, own = f"C{i % 10}", [r for r in mine if r["name"] == name]
            main = sorted((r["seconds"], fid1(r)) for r in own if r["seed"] == 0 and r.get("kind", "steps") == "steps")
            if main:
                ax.plot([x for x, _ in main], [y for _, y in main], marker="o^"[name == "edm-heun"], color=color,
                        label=name + (" (35 NFE)" if name == "edm-heun" else ""))
            other = [(r["seconds"], fid1(r)) for r in own if r["seed"] != 0 and r.get("kind", "steps") == "steps"]
            if other:
                ax.scatter([x for x, _ in other], [y for _, y in other], marker="s", facecolors="none", edgecolors=color)
            wall = [(r["seconds"], fid1(r)) for r in own if r.get("kind") == "wall-clock"]
            if wall:
                ax.scatter([x for x, _ in wall], [y for _, y in wall], marker="*", s=90, color=color,
                           label=f"{name} at the consistency rows' wall-clock")
        floor = (floors or {}).get(space)
        if floor:
            ax.axhline(floor["fid"], color="gray", linestyle="--", linewidth=1,
                       label=f"autoencoder floor ({floor['fid']:.0f})")
        ax.set_xlabel("training seconds (from each run's log)")
        ax.set_ylabel(f"FID at 1 NFE ({rows[0].get('features', 'fmnist').split(' (')[0] if rows else 'fmnist'} features)")
        ax.set_yscale("log")
        ax.set_title(f"{space} latents (filled: seed 0 at each budget; squares: seed 1)", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(command[-130:], fontsize=7)
    common.save_figure(fig, path, 120, bbox_inches="tight")
    print(f"figure: {path}")


def replot(out: Path, path: Path) -> None:
    """--replot: the figure of an existing results file (for example one that merges several budgets)."""
    try:
        report = json.loads(out.read_text())
        rows = [r for r in report["rows"] if {"latents", "name", "seed", "seconds", "fid"} <= set(r)]
        floors = report.get("floors") or {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        print(f"error: --replot: {out} is not a results file of this benchmark ({e})", file=sys.stderr)
        raise SystemExit(2) from None
    plot(rows, path, f"{out} (each row's command is in it)", floors if isinstance(floors, dict) else {})


if __name__ == "__main__":
    main()
