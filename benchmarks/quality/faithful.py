"""The choices where ilct could follow the authors' runs, measured (issue: faithful to the authors' runs).

Every row trains `fmnist-ilct` (all five techniques) for `--steps` steps from seed 0, changing one thing:

    mean             the default: latents are the posterior means of the built-in autoencoder
    sample           latents are one sample of its posterior per image (`ilct encode --posterior sample
                     --seed 0`), as the authors stored them
    cauchy-element   method.metric=cauchy_element: the authors' per-element Cauchy (`cauchy_new`)
    unet             model.arch=ADM-S: the ADM UNet at about DiT-T/2's parameter count (4.59M vs 4.17M)
    taef2-mean       the `mean` row in the TAEF2 latent space (Fashion-MNIST as 64x64 RGB, 8x8x32 latents),
                     for the tau sweep in a second latent space

Each run is scored by `ilct eval --split test` at 1 and 2 steps (FID and recall, Fashion-MNIST classifier
features, `--n` samples), and the `mean` and `taef2-mean` runs by 2-step sampling at each `--taus` value
(the tau sweep). `--mean-run DIR` reuses a finished `fmnist-ilct` run of the same autoencoder for the `mean`
row (for example `make demo`'s runs/demo/run: the same preset, seed and latents).

    python benchmarks/quality/faithful.py --autoencoder runs/demo/autoencoder --mean-run runs/demo/run \\
        --steps 2000 --n 2000 --out docs/results

Writes OUT/faithful.json ({"command", "machine", "rows": [{"name", "latents", "steps", "seconds", "fid",
"recall"}]}) and OUT/tau_sweep.json ({"command", "rows": [{"run", "latents", "tau", "nfe": 2, "fid",
"recall"}]}) after every evaluation. `--tiny` is a seconds-long run for the tests.
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


ROWS = {"mean": [], "sample": [], "cauchy-element": ["method.metric=cauchy_element"], "unet": ["model.arch=ADM-S"],
        "taef2-mean": []}
TAUS = "0.2,0.3,0.5,0.8,1.0,1.382,2.0,2.5"
TAEF2_SETS = ["autoencoder.kind=taesd", "model.in_channels=32", "data.rgb=true", "data.resolution=64"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--autoencoder", required=True, help="the built-in autoencoder's folder (runs/demo/autoencoder)")
    ap.add_argument("--taef2", default="../shared/weights/taef2", help="the TAEF2 weights folder")
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--mean-run", help="a finished fmnist-ilct run of this autoencoder to use as the `mean` row")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--n", type=int, default=2000, help="samples per FID")
    ap.add_argument("--taus", default=TAUS)
    ap.add_argument("--limit", type=int, default=20000, help="training images encoded through TAEF2 (slow on a CPU)")
    ap.add_argument("--features", default="fmnist", help="ilct eval --features (fmnist: the classifier; inception)")
    ap.add_argument("--inception-weights", help="ilct eval --inception-weights, with --features inception")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--work", default="runs/faithful")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--tiny", action="store_true", help="seconds-long: 4 steps of DiT-T/4 / ADM-T, batch 8, n 10")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise SystemExit(f"unknown rows {bad}; rows: {', '.join(ROWS)}")
    work, out = Path(args.work), Path(args.out)
    ilct = [sys.executable, "-m", "ilct"]
    tiny = ["model.arch=DiT-T/4", "train.batch_size=8", "train.device=cpu"] if args.tiny else []
    limit = ["--limit", "64"] if args.tiny else ["--limit", str(args.limit)]

    # 1. the latent sets that are not the training run's own cache
    encodes = {"sample": ["--data", f"fashion_mnist:{args.data_dir}", "--autoencoder", f"builtin:{args.autoencoder}",
                          "--posterior", "sample", "--seed", "0"],
               "taef2-mean": ["--data", f"fashion_mnist:{args.data_dir}", "--resolution", "64", "--rgb",
                              "--autoencoder", f"taesd:{args.taef2}", *limit]}
    for row in rows:
        lat = work / "latents" / row
        if row in encodes and not is_complete(lat):
            cmd = ilct + ["encode", *encodes[row], "--out", str(lat), "--no-progress"]
            common.pool([(f"encode {row}", cmd, work / "logs" / f"encode_{row}.log")], 1, args.dry_run)

    # 2. training
    def run_dir(row: str) -> Path:
        return Path(args.mean_run) if row == "mean" and args.mean_run else work / "runs" / row

    def train_cmd(row: str) -> list[str]:
        ae = args.taef2 if row.startswith("taef2") else args.autoencoder
        sets = [f"train.total_steps={args.steps}", "train.seed=0", "train.sample_every=0", f"data.root={args.data_dir}",
                f"data.cache_dir={work / 'cache'}", *ROWS[row], *(TAEF2_SETS if row.startswith("taef2") else []), *tiny]
        if args.tiny and row == "unet":
            sets = [s for s in sets if not s.startswith("model.arch")] + ["model.arch=ADM-T"]
        if row in encodes:
            sets.append(f"data.latents={work / 'latents' / row}")
        cmd = ilct + ["train", "--config", "fmnist-ilct", "--autoencoder", ae, "--out", str(run_dir(row)), "--no-progress"]
        return cmd + common.set_flags(sets) + (["--resume"] if (run_dir(row) / "config.yaml").exists() else [])

    todo = [r for r in rows if not (r == "mean" and args.mean_run)]
    seconds = common.pool([(r, train_cmd(r), work / "logs" / f"{r}.train.log") for r in todo], args.parallel,
                          args.dry_run)
    if args.dry_run:
        return

    # 3. evaluation
    machine = common.machine()
    command = "python " + " ".join(sys.argv)
    result = {"command": command, "machine": machine, "steps": args.steps, "n": args.n, "split": "test", "rows": []}
    sweep = {"command": command, "machine": machine, "n": args.n, "split": "test", "rows": []}
    out.mkdir(parents=True, exist_ok=True)
    n = "10" if args.tiny else str(args.n)

    def evaluate(row: str, extra: list[str], tag: str) -> dict:
        j = work / "eval" / f"{row}_{tag}.json"
        j.parent.mkdir(parents=True, exist_ok=True)
        cmd = ilct + ["eval", "--run", str(run_dir(row)), "--n", n, "--split", "test", "--seed", "0",
                      "--cache-dir", str(work / "cache"), "--json", str(j), "--no-progress", "--features", args.features,
                      *(["--inception-weights", args.inception_weights] if args.inception_weights else []), *extra]
        common.pool([(f"eval {row} {tag}", cmd, work / "logs" / f"{row}_{tag}.eval.log")], 1, False)
        return json.loads(j.read_text())

    for row in rows:
        t0 = time.time()
        e = evaluate(row, ["--steps", "1,2"], "nfe")
        result["rows"].append({"name": row, "latents": "taef2" if row.startswith("taef2") else "builtin",
                               "run": str(run_dir(row)), "steps": e["step"], "seconds": seconds.get(row),
                               "fid": e["fid"], "recall": e["recall"], "eval_seconds": round(time.time() - t0, 1)})
        (out / "faithful.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"{row}: FID {e['fid']}, recall {e['recall']}", flush=True)
        if row in ("mean", "taef2-mean"):
            e = evaluate(row, ["--steps", "2", "--tau", args.taus], "taus")
            for r in e["rows"]:
                sweep["rows"].append({"run": str(run_dir(row)), "latents": result["rows"][-1]["latents"],
                                      "tau": r["tau"], "nfe": 2, "fid": r["fid"], "recall": r["recall"]})
            (out / "tau_sweep.json").write_text(json.dumps(sweep, indent=2) + "\n")
            print(f"{row} taus: " + ", ".join(f"{r['tau']:g}: {r['fid']:.2f}" for r in e["rows"]), flush=True)


if __name__ == "__main__":
    main()
