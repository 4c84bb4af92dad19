"""Caption tokens cross-attended against the pooled caption in adaLN, on the emoji retrieval, at an equal budget.

Trains `--config` (emoji-ilct-text: the pooled all-MiniLM-L6-v2 caption embedding in the adaLN vector)
twice from the same seed, so that every step draws the same batch, noise and levels, for the same steps
and batch size:

    pooled  the preset as it is
    xattn   the same with model.text_tokens = --tokens (the preset emoji-ilct-text-xattn): the caption's
            token embeddings cross-attended in every DiT block, the pooled vector still in adaLN

then scores each run with text_retrieval.py (the same prompts, sample seeds, guidance weights and step
counts; exact / near / cos, docs/conditional.md) and writes one report: per row the parameter count,
the training seconds, the logged losses and the retrieval rows.

    python benchmarks/quality/text_xattn.py --autoencoder ../shared/weights/taef2 --steps 10000 \\
        --work runs/text_xattn --out docs/results/text_xattn.json

The budget is equal in steps (and so in images seen), not in wall-clock time or parameters: the xattn
network is larger, and the report gives both counts and both times.

`--reuse pooled=RETRIEVAL_JSON` does not retrain the pooled row: it takes that row's retrieval from an earlier
text_retrieval.py report of a run made with the same preset, seed and steps (docs/results/text_emoji.json is
the 10,000-step one), after checking that it drew the same prompts with the same weights, step counts and
samples per prompt; the row records the file and has no training seconds or losses. `--resume` continues (or,
when finished, only checks) runs already in --work instead of replacing them: `ilct train --resume` refuses a
run made with other settings, and the training seconds are then the run's own (from its log).

`--dry-run` prints the commands and exits; `--tiny` is a run of seconds for the tests (4 steps at batch 8,
8 tokens, 2 prompts of each kind, 2 samples each, w in {0, 2}, 1 step).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

# run by path, a script sees only its own folder: the repository root, for `from benchmarks ...`
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import common  # noqa: E402

HERE = Path(__file__).resolve().parent
PRESET = "emoji-ilct-text"


def rows(tokens: int) -> dict[str, list[str]]:
    """Each row's settings beyond the shared ones: the only difference is model.text_tokens."""
    return {"pooled": [], "xattn": [f"model.text_tokens={tokens}"]}


def train_command(args: argparse.Namespace, name: str, settings: list[str]) -> list[str]:
    run = Path(args.work) / name
    sets = [f"train.total_steps={args.steps}", f"train.log_every={args.log_every}", "train.sample_every=0",
            f"train.ckpt_every={args.steps}", f"train.device={args.device}", f"train.seed={args.seed}",
            *([f"train.batch_size={args.batch_size}"] if args.batch_size else []), *args.set, *settings]
    keep = ["--resume"] if args.resume else ["--force"]
    return [sys.executable, "-m", "ilct", "train", "--config", args.config, "--autoencoder", args.autoencoder,
            "--out", str(run), *keep, "--no-progress", *common.set_flags(sets)]


def retrieval_command(args: argparse.Namespace, name: str) -> list[str]:
    run = Path(args.work) / name
    return [sys.executable, str(HERE / "text_retrieval.py"), "--run", str(run), "--weights", args.weights,
            "--steps", args.sample_steps, "--prompts", str(args.prompts), "--per-prompt", str(args.per_prompt),
            "--seed", str(args.seed), "--json", str(run / "retrieval.json")]


def parameters(run: Path) -> int:
    from ilct.config import config_from_yaml_file
    from ilct.models import build_model

    return sum(p.numel() for p in build_model(config_from_yaml_file(run / "config.yaml")).net.parameters())


def reused_row(args: argparse.Namespace, name: str, settings: list[str], path: str, trained: dict) -> dict:
    """Row `name` from an earlier text_retrieval.py report, refused unless it scored the same prompts the same way
    as the `trained` row; its parameters are counted on the trained run's latent shape."""
    from ilct.config import config_from_yaml_file, load_config
    from ilct.models import build_model

    old = json.loads(Path(path).read_text())
    want = {(k, s, w) for k in ("seen", "held-out") for s in map(int, args.sample_steps.split(","))
            for w in map(float, args.weights.split(","))}
    have = {(r["prompts"], r["steps"], float(r["w"])) for r in old["rows"] if r["w"] is not None}
    n = {r.get("n") for r in old["rows"] if r["w"] is not None}
    if old.get("prompts") != trained["prompts"] or have != want or n != {args.prompts * args.per_prompt}:
        raise SystemExit(f"--reuse {name}={path}: it did not score the same prompts, weights, step counts and "
                         f"samples per prompt as this comparison")
    shape = config_from_yaml_file(Path(trained["run"]) / "config.yaml").model
    cfg = load_config(args.config, [*args.set, *settings, f"model.in_channels={shape.in_channels}",
                                    f"model.input_size={shape.input_size}"])
    return {"name": name, "settings": settings, "parameters": sum(p.numel() for p in build_model(cfg).net.parameters()),
            "train_seconds": None, "run": old.get("run"), "reused_from": path, "losses": {}, "last5_mean_loss": None,
            "retrieval": old["rows"], "prompts": old["prompts"]}


def logged_seconds(run: Path) -> float:
    """The training seconds in a run's log: elapsed_s restarts with each process, so the last one of each."""
    clock = [r["elapsed_s"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "elapsed_s" in r]
    return round(sum(a for a, b in zip(clock, clock[1:] + [0.0]) if b < a), 1)


def run_row(args: argparse.Namespace, name: str, settings: list[str]) -> dict:
    run = Path(args.work) / name
    t0 = time.perf_counter()
    common.call(name, train_command(args, name, settings))
    seconds = round(time.perf_counter() - t0, 1)
    if args.resume:  # the run trained earlier (or partly): its own clock, the last elapsed_s of its log
        seconds = logged_seconds(run)
    common.call(name, retrieval_command(args, name))
    logged = common.logged_losses(run)
    retrieval = json.loads((run / "retrieval.json").read_text())
    return {"name": name, "settings": settings, "parameters": parameters(run), "train_seconds": seconds,
            "run": str(run), "losses": logged, "last5_mean_loss": common.last5_mean(logged, sorted(logged), 4),
            "retrieval": retrieval["rows"], "prompts": retrieval["prompts"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=PRESET, help="the pooled row's preset or YAML (the xattn row adds the tokens)")
    p.add_argument("--autoencoder", required=True)
    p.add_argument("--tokens", type=int, default=24, help="model.text_tokens of the xattn row (emoji captions: <= 24)")
    p.add_argument("--steps", type=int, default=10000, help="the step budget of each run")
    p.add_argument("--batch-size", type=int, default=0, help="0 = the preset's (64)")
    p.add_argument("--seed", type=int, default=0, help="training seed of both runs, and the prompts' and samples' seed")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="for both runs (repeatable)")
    p.add_argument("--weights", default="0,1,2,3,4", help="guidance weights of the retrieval")
    p.add_argument("--sample-steps", default="1,2", help="sampling step counts of the retrieval")
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--per-prompt", type=int, default=8)
    p.add_argument("--work", default="runs/text_xattn", help="run directories (replaced)")
    p.add_argument("--out", default="", help="also write the JSON report to this file")
    p.add_argument("--resume", action="store_true", help="keep and continue the runs in --work (ilct train --resume)")
    p.add_argument("--reuse", action="append", default=[], metavar="NAME=RETRIEVAL_JSON",
                   help="take row NAME's retrieval from an earlier text_retrieval.py report instead of training it")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--tiny", action="store_true", help="4 steps at batch 8, 8 tokens, a small retrieval (the tests)")
    args = p.parse_args()
    if args.tiny:
        args.steps, args.batch_size, args.log_every, args.tokens = 4, 8, 2, 8
        args.weights, args.sample_steps, args.prompts, args.per_prompt = "0,2", "1", 2, 2
    reuse = dict(r.split("=", 1) for r in args.reuse if "=" in r)
    if len(reuse) < len(args.reuse) or set(reuse) - set(rows(args.tokens)) or len(reuse) == len(rows(args.tokens)):
        raise SystemExit(f"--reuse: one of {', '.join(rows(args.tokens))}, as NAME=RETRIEVAL_JSON, and not both")
    if args.dry_run:
        for name, settings in rows(args.tokens).items():
            if name not in reuse:
                print(shlex.join(train_command(args, name, settings)))
                print(shlex.join(retrieval_command(args, name)))
        return
    trained = [run_row(args, name, settings) for name, settings in rows(args.tokens).items() if name not in reuse]
    out = trained + [reused_row(args, name, settings, reuse[name], trained[0])
                     for name, settings in rows(args.tokens).items() if name in reuse]
    print(f"{'row':7s} {'parameters':>11s} {'train s':>8s} {'loss':>8s}  retrieval (near / cos at the best w per kind and NFE)")
    for r in out:
        best = {}
        for x in r["retrieval"]:
            if not x["w"]:  # w = 0 (unconditional) and the calibration row (real images, w None)
                continue
            key = (x["prompts"], x["steps"])
            if key not in best or x["near"] > best[key]["near"]:
                best[key] = x
        cells = "  ".join(f"{k}/{s}: {b['near']:.3f}/{b['cos']:.3f} (w {b['w']:g})" for (k, s), b in sorted(best.items()))
        secs = "reused" if r["train_seconds"] is None else f"{r['train_seconds']:.1f}"
        loss = "-" if r["last5_mean_loss"] is None else f"{r['last5_mean_loss']:.4f}"
        print(f"{r['name']:7s} {r['parameters']:11,d} {secs:>8s} {loss:>8s}  {cells}")
    common.write_training_report(f"{args.config}: pooled caption in adaLN against caption tokens cross-attended "
                                 f"(model.text_tokens={args.tokens}), {args.steps} steps each, seed {args.seed}",
                                 args.device, out, args.out)


if __name__ == "__main__":
    main()
